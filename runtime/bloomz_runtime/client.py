"""``python -m bloomz_runtime.client``: the client's entry point in runtime images and checkouts.

The client itself is ``bloomz_api.client`` (grpcio and protobuf only, no torch), shared with the operator.
"""

from bloomz_api.client import RpcFailure, TextGenerationClient, main

__all__ = ["RpcFailure", "TextGenerationClient", "main"]

if __name__ == "__main__":
    raise SystemExit(main())
