"""Kubernetes API errors of the sandbox API server, rendered as ``meta/v1`` Status bodies."""

from __future__ import annotations

from typing import Any


class ApiError(Exception):
    """An error that the HTTP layer turns into a Status body with this code and reason."""

    def __init__(self, code: int, reason: str, message: str, details: dict[str, Any] | None = None) -> None:
        super().__init__(message)
        self.code = code
        self.reason = reason
        self.message = message
        self.details = details or {}

    def status_body(self) -> dict[str, Any]:
        body: dict[str, Any] = {
            "kind": "Status",
            "apiVersion": "v1",
            "metadata": {},
            "status": "Failure",
            "message": self.message,
            "reason": self.reason,
            "code": self.code,
        }
        if self.details:
            body["details"] = self.details
        return body


def _details(name: str | None, group: str, kind: str) -> dict[str, Any]:
    details: dict[str, Any] = {"group": group, "kind": kind}
    if name is not None:
        details["name"] = name
    return details


def not_found(qualified_plural: str, name: str, group: str = "", kind: str = "") -> ApiError:
    return ApiError(
        404,
        "NotFound",
        f'{qualified_plural} "{name}" not found',
        _details(name, group, kind or qualified_plural.split(".")[0]),
    )


def unknown_resource(path: str = "") -> ApiError:
    return ApiError(404, "NotFound", "the server could not find the requested resource", {"path": path})


def already_exists(qualified_plural: str, name: str, group: str = "", kind: str = "") -> ApiError:
    return ApiError(
        409,
        "AlreadyExists",
        f'{qualified_plural} "{name}" already exists',
        _details(name, group, kind or qualified_plural.split(".")[0]),
    )


def conflict(qualified_plural: str, name: str, why: str, group: str = "", kind: str = "") -> ApiError:
    return ApiError(
        409,
        "Conflict",
        f'Operation cannot be fulfilled on {qualified_plural} "{name}": {why}',
        _details(name, group, kind or qualified_plural.split(".")[0]),
    )


def invalid(kind: str, name: str, why: str, group: str = "") -> ApiError:
    return ApiError(422, "Invalid", f'{kind} "{name}" is invalid: {why}', _details(name, group, kind))


def bad_request(message: str) -> ApiError:
    return ApiError(400, "BadRequest", message)


def method_not_allowed(
    message: str = "the server does not allow this method on the requested resource",
) -> ApiError:
    return ApiError(405, "MethodNotAllowed", message)


def unsupported_media_type(content_type: str) -> ApiError:
    return ApiError(
        415, "UnsupportedMediaType", f"the body of the request was in an unknown format: {content_type}"
    )


def gone(message: str) -> ApiError:
    return ApiError(410, "Expired", message)
