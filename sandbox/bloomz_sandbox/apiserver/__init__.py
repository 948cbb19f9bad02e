"""The sandbox's Kubernetes API emulator: a real HTTP API server on 127.0.0.1 (see ``server``).

- ``server``: ``SandboxAPIServer`` (start/stop, kubeconfig, client), ``python -m bloomz_sandbox.apiserver``;
- ``routes``: URL routing, discovery, verbs; ``streams``: watches and followed logs;
- ``store``: API semantics without HTTP; ``defaults``, ``validation``: what create sets and checks;
- ``patches``, ``selectors``, ``tables``, ``openapi``, ``protobuf``: pure encodings of the API;
- ``resources``: the kinds served; ``errors``: ``meta/v1`` Status bodies; ``faults``: injected errors and
  stalls for fault tests.
"""

from .server import SandboxAPIServer, load_crds

__all__ = ["SandboxAPIServer", "load_crds"]
