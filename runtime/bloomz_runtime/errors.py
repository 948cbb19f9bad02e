"""Domain errors and the one place where they become gRPC status codes."""

from __future__ import annotations

import grpc


class RuntimeServiceError(Exception):
    """An error a caller should see with a specific status code and a readable reason."""

    code = grpc.StatusCode.INTERNAL

    def __init__(self, reason: str) -> None:
        super().__init__(reason)
        self.reason = reason


class InvalidArgument(RuntimeServiceError):
    code = grpc.StatusCode.INVALID_ARGUMENT


class QueueFull(RuntimeServiceError):
    code = grpc.StatusCode.RESOURCE_EXHAUSTED


class Unavailable(RuntimeServiceError):
    code = grpc.StatusCode.UNAVAILABLE


class DeadlineExceeded(RuntimeServiceError):
    code = grpc.StatusCode.DEADLINE_EXCEEDED


class Cancelled(RuntimeServiceError):
    code = grpc.StatusCode.CANCELLED


def grpc_status(exc: BaseException) -> tuple[grpc.StatusCode, str]:
    """(code, details) for any exception a handler lets out; unknown ones are INTERNAL."""
    if isinstance(exc, RuntimeServiceError):
        return exc.code, exc.reason
    return grpc.StatusCode.INTERNAL, f"internal error: {type(exc).__name__}: {exc}"
