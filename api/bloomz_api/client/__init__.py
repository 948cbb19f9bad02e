"""Client of the bloomz.v1.TextGeneration service: `python -m bloomz_runtime.client` and a Python API.

Needs only grpcio and protobuf (the base install); the dataset subcommand also uses `datasets`.
"""

from bloomz_api.client.cli import main
from bloomz_api.client.connection import RpcFailure, TextGenerationClient

__all__ = ["RpcFailure", "TextGenerationClient", "main"]
