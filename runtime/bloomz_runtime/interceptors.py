"""The gRPC edge of rank 0: API keys, domain errors -> status codes, and the request counter.

One server interceptor wraps every TextGeneration method; health and reflection stay open and
uncounted (probes and grpcurl need no key). The only place domain errors meet gRPC codes.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any

import grpc

from bloomz_runtime.auth import ApiKeys
from bloomz_runtime.errors import (
    Cancelled,
    DeadlineExceeded,
    InvalidArgument,
    ModelNotFound,
    QueueFull,
    RuntimeServiceError,
    Unauthenticated,
    Unavailable,
)
from bloomz_runtime.metrics import RuntimeMetrics

GRPC_CODES: dict[type[RuntimeServiceError], grpc.StatusCode] = {
    InvalidArgument: grpc.StatusCode.INVALID_ARGUMENT,
    Unauthenticated: grpc.StatusCode.UNAUTHENTICATED,
    ModelNotFound: grpc.StatusCode.NOT_FOUND,
    QueueFull: grpc.StatusCode.RESOURCE_EXHAUSTED,
    Unavailable: grpc.StatusCode.UNAVAILABLE,
    DeadlineExceeded: grpc.StatusCode.DEADLINE_EXCEEDED,
    Cancelled: grpc.StatusCode.CANCELLED,
}


def grpc_status(exc: BaseException) -> tuple[grpc.StatusCode, str]:
    """(code, details) for any exception a handler lets out; unknown ones are INTERNAL."""
    if isinstance(exc, RuntimeServiceError):
        for cls in type(exc).__mro__:
            if cls in GRPC_CODES:
                return GRPC_CODES[cls], exc.reason
        return grpc.StatusCode.INTERNAL, exc.reason
    return grpc.StatusCode.INTERNAL, f"internal error: {type(exc).__name__}: {exc}"


def _authorization(context: grpc.aio.ServicerContext) -> str | None:
    for key, value in context.invocation_metadata() or ():
        if key.lower() == "authorization":
            return value if isinstance(value, str) else value.decode()
    return None


class ServiceInterceptor(grpc.aio.ServerInterceptor):
    """Wraps the methods of ``service`` (a full name, e.g. bloomz.v1.TextGeneration)."""

    def __init__(self, service: str, metrics: RuntimeMetrics, api_keys: ApiKeys | None = None) -> None:
        self.prefix = f"/{service}/"
        self.metrics = metrics
        self.api_keys = api_keys

    def _check_key(self, context: grpc.aio.ServicerContext) -> None:
        if self.api_keys is not None:
            self.api_keys.check(_authorization(context))

    def _count(self, method: str, code: grpc.StatusCode) -> None:
        self.metrics.requests.labels(method, code.name).inc()

    async def _fail(self, method: str, exc: Exception, context: grpc.aio.ServicerContext) -> None:
        code, details = grpc_status(exc)
        self._count(method, code)
        await context.abort(code, details)

    async def intercept_service(
        self,
        continuation: Callable[[grpc.HandlerCallDetails], Awaitable[grpc.RpcMethodHandler]],
        handler_call_details: grpc.HandlerCallDetails,
    ) -> grpc.RpcMethodHandler:
        handler = await continuation(handler_call_details)
        full = handler_call_details.method
        if handler is None or not full.startswith(self.prefix):
            return handler
        method = full[len(self.prefix) :]
        if handler.unary_unary is not None:
            return grpc.unary_unary_rpc_method_handler(
                self._wrap_unary(method, handler.unary_unary),
                request_deserializer=handler.request_deserializer,
                response_serializer=handler.response_serializer,
            )
        if handler.unary_stream is not None:
            return grpc.unary_stream_rpc_method_handler(
                self._wrap_stream(method, handler.unary_stream),
                request_deserializer=handler.request_deserializer,
                response_serializer=handler.response_serializer,
            )
        return handler

    @contextlib.asynccontextmanager
    async def _call(self, method: str, context: grpc.aio.ServicerContext) -> AsyncIterator[None]:
        """Around one call, unary or streaming: the key checked first, the result counted, a domain error
        turned into its status code."""
        try:
            self._check_key(context)
            yield
        except asyncio.CancelledError:
            self._count(method, grpc.StatusCode.CANCELLED)
            raise
        except grpc.aio.AbortError:
            raise
        except Exception as exc:
            await self._fail(method, exc, context)
        self._count(method, grpc.StatusCode.OK)

    def _wrap_unary(self, method: str, inner: Any) -> Callable[..., Awaitable[Any]]:
        async def unary(request: Any, context: grpc.aio.ServicerContext) -> Any:
            async with self._call(method, context):
                return await inner(request, context)

        return unary

    def _wrap_stream(self, method: str, inner: Any) -> Callable[..., AsyncIterator[Any]]:
        async def stream(request: Any, context: grpc.aio.ServicerContext) -> AsyncIterator[Any]:
            async with self._call(method, context):
                async for message in inner(request, context):
                    yield message

        return stream
