"""A thin, typed wrapper over one gRPC channel to a bloomz.v1.TextGeneration server.

Every call takes the client's deadline; gRPC failures are turned into `RpcFailure` so callers
(the CLI, the benchmarks) handle one exception type carrying the status code and details.
"""

from __future__ import annotations

from collections.abc import Iterator
from types import TracebackType

import grpc
from grpc_health.v1 import health_pb2, health_pb2_grpc

from bloomz_api.proto import generate_pb2, generate_pb2_grpc

SERVICE_NAME = "bloomz.v1.TextGeneration"
# Long prompts and token-id lists can exceed gRPC's default 4 MiB message limit.
_MAX_MESSAGE_BYTES = 64 * 1024 * 1024


class RpcFailure(Exception):
    """A call that the server (or the transport) answered with a non-OK status."""

    def __init__(self, code: grpc.StatusCode, details: str, method: str) -> None:
        super().__init__(f"{method}: {code.name}: {details}")
        self.code = code
        self.details = details
        self.method = method


def _as_failure(error: grpc.RpcError, method: str) -> RpcFailure:
    # RpcError raised by a call is also a grpc.Call carrying code() and details().
    code = error.code() if isinstance(error, grpc.Call) else grpc.StatusCode.UNKNOWN
    details = error.details() if isinstance(error, grpc.Call) else str(error)
    return RpcFailure(code, details or "", method)


class TextGenerationClient:
    """Synchronous client for Generate, GenerateStream, Info, Benchmark and the health service."""

    def __init__(
        self,
        target: str,
        timeout: float | None = None,
        *,
        api_key: str | None = None,
        tls: bool = False,
        ca_cert: bytes | None = None,
    ) -> None:
        """``api_key``: sent as ``authorization: Bearer <key>``; ``tls``: verify the server with
        ``ca_cert`` (PEM) or, without it, the system's roots."""
        self.target = target
        self.timeout = timeout
        self._metadata = (("authorization", f"Bearer {api_key}"),) if api_key else None
        options = [
            ("grpc.max_receive_message_length", _MAX_MESSAGE_BYTES),
            ("grpc.max_send_message_length", _MAX_MESSAGE_BYTES),
        ]
        if tls or ca_cert is not None:
            credentials = grpc.ssl_channel_credentials(root_certificates=ca_cert)
            self._channel = grpc.secure_channel(target, credentials, options=options)
        else:
            self._channel = grpc.insecure_channel(target, options=options)
        self._stub = generate_pb2_grpc.TextGenerationStub(self._channel)
        self._health = health_pb2_grpc.HealthStub(self._channel)

    def __enter__(self) -> TextGenerationClient:
        return self

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.close()

    def close(self) -> None:
        self._channel.close()

    def generate(self, request: generate_pb2.GenerateRequest) -> generate_pb2.GenerateResponse:
        try:
            response: generate_pb2.GenerateResponse = self._stub.Generate(
                request, timeout=self.timeout, metadata=self._metadata
            )
        except grpc.RpcError as error:
            raise _as_failure(error, "Generate") from None
        return response

    def generate_many(
        self, requests: list[generate_pb2.GenerateRequest]
    ) -> list[generate_pb2.GenerateResponse]:
        """Sends all requests at once (the server batches them) and returns the answers in order."""
        futures = [
            self._stub.Generate.future(request, timeout=self.timeout, metadata=self._metadata)
            for request in requests
        ]
        responses: list[generate_pb2.GenerateResponse] = []
        try:
            for future in futures:
                responses.append(future.result())
        except grpc.RpcError as error:
            for future in futures:
                future.cancel()
            raise _as_failure(error, "Generate") from None
        return responses

    def generate_stream(
        self, request: generate_pb2.GenerateRequest
    ) -> Iterator[generate_pb2.GenerateStreamResponse]:
        """Yields the streamed pieces; closing the iterator early cancels the call on the server."""
        call = self._stub.GenerateStream(request, timeout=self.timeout, metadata=self._metadata)
        try:
            yield from call
        except grpc.RpcError as error:
            raise _as_failure(error, "GenerateStream") from None
        finally:
            call.cancel()

    def info(self) -> generate_pb2.InfoResponse:
        try:
            response: generate_pb2.InfoResponse = self._stub.Info(
                generate_pb2.InfoRequest(), timeout=self.timeout, metadata=self._metadata
            )
        except grpc.RpcError as error:
            raise _as_failure(error, "Info") from None
        return response

    def benchmark(self, request: generate_pb2.BenchmarkRequest) -> generate_pb2.BenchmarkResponse:
        try:
            response: generate_pb2.BenchmarkResponse = self._stub.Benchmark(
                request, timeout=self.timeout, metadata=self._metadata
            )
        except grpc.RpcError as error:
            raise _as_failure(error, "Benchmark") from None
        return response

    def health(self, service: str = "") -> str:
        """The health status name (SERVING, NOT_SERVING, ...) of `service` ("" = the whole server)."""
        try:
            response = self._health.Check(
                health_pb2.HealthCheckRequest(service=service), timeout=self.timeout
            )
        except grpc.RpcError as error:
            raise _as_failure(error, "Health/Check") from None
        return str(health_pb2.HealthCheckResponse.ServingStatus.Name(response.status))
