"""The contract between the BLOOMZ runtime, the operator and clients: the ``bloomz.v1`` gRPC service
(``proto/generate.proto`` and its generated stubs), the facts both sides share (``constants``), and the
client (``python -m bloomz_api.client``, also reachable as ``python -m bloomz_runtime.client``).

Needs only grpcio and protobuf: the operator image installs it without torch.
"""

__version__ = "0.1.0"
