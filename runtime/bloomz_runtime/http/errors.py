"""The one place where domain errors become HTTP status codes and OpenAI-shaped error bodies."""

from __future__ import annotations

from typing import Any

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

# status, OpenAI error type, code
HTTP_STATUS: dict[type[RuntimeServiceError], tuple[int, str, str | None]] = {
    InvalidArgument: (400, "invalid_request_error", None),
    Unauthenticated: (401, "authentication_error", "invalid_api_key"),
    ModelNotFound: (404, "invalid_request_error", "model_not_found"),
    QueueFull: (429, "rate_limit_error", "queue_full"),
    Unavailable: (503, "service_unavailable", None),
    DeadlineExceeded: (504, "timeout", None),
    # A cancelled request has no client left to read this; nginx's 499 names the case in logs.
    Cancelled: (499, "cancelled", None),
}


def error_body(message: str, kind: str, code: str | None = None, param: str | None = None) -> dict[str, Any]:
    return {"error": {"message": message, "type": kind, "param": param, "code": code}}


def http_error(exc: BaseException) -> tuple[int, dict[str, Any]]:
    """(status, body) for any exception a route lets out; unknown ones are 500."""
    if isinstance(exc, RuntimeServiceError):
        for cls in type(exc).__mro__:
            if cls in HTTP_STATUS:
                status, kind, code = HTTP_STATUS[cls]
                return status, error_body(exc.reason, kind, code)
    return 500, error_body(f"internal error: {type(exc).__name__}: {exc}", "internal_error")


def validation_message(errors: list[dict[str, Any]]) -> tuple[str, str | None]:
    """A readable reason from pydantic's errors of a request body, and the field it names."""
    parts, param = [], None
    if any(err.get("type") == "json_invalid" for err in errors):
        return "request body is not valid JSON", None
    for err in errors[:3]:
        loc = [str(x) for x in err.get("loc", ()) if x != "body"]
        where = ".".join(loc)
        param = param or (where or None)
        parts.append(f"{where}: {err.get('msg', 'invalid')}" if where else str(err.get("msg", "invalid")))
    return "; ".join(parts) or "invalid request body", param
