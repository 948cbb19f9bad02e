"""Local sandbox: the whole system on one machine, without a Kubernetes cluster (a development tool).

- ``apiserver``: ``SandboxAPIServer``, a Kubernetes API emulator over real HTTP on 127.0.0.1 that the real
  Kopf operator, the ``kubernetes`` client and ``kubectl`` talk to.
- ``node``: the simulated nodes and the local pod runner (schedules pods, runs CPU pods as processes).
- ``python -m bloomz_sandbox [--once]``: the main job that wires them together.

Nothing here is imported eagerly: importing the package costs nothing.
"""
