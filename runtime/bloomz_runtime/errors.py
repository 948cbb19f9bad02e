"""Domain errors of the runtime, free of any transport.

Each protocol turns them into its own status codes in one place: gRPC in
``interceptors.py``, HTTP in ``http/errors.py``.
"""

from __future__ import annotations


class RuntimeServiceError(Exception):
    """An error a caller should see with a specific status and a readable reason."""

    def __init__(self, reason: str) -> None:
        super().__init__(reason)
        self.reason = reason


class InvalidArgument(RuntimeServiceError):
    """Bad input: the caller can fix the request."""


class Unauthenticated(RuntimeServiceError):
    """No API key, or not one of the accepted keys."""


class ModelNotFound(RuntimeServiceError):
    """The request names a model this runtime does not serve."""


class QueueFull(RuntimeServiceError):
    """Back-pressure: the request queue is full; try again later."""


class Unavailable(RuntimeServiceError):
    """Still loading, or draining before shutdown."""


class DeadlineExceeded(RuntimeServiceError):
    """The caller's deadline passed; the generation was stopped."""


class Cancelled(RuntimeServiceError):
    """The caller went away; the generation was stopped."""
