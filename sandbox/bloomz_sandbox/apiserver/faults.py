"""Fault injection for the sandbox API server: answer matching requests with an error, or stall them.

Tests (and the fault suite) switch faults on and off from any thread while the server runs::

    api.faults.fail(500, methods={"POST"}, path_contains="/pods", user_agent="bloomz-operator")
    api.faults.stall(path_contains="/pods")     # requests hang until the fault is cleared (or the client
    api.faults.clear()                          # gives up): a dead connection, as far as a client can tell

A fault applies to requests whose method is in `methods` (None: any), whose path contains `path_contains`
and whose User-Agent starts with `user_agent`; watch requests are spared unless `watches=True`. `hits`
counts the requests a fault answered.
"""

from __future__ import annotations

import asyncio
import threading
from collections.abc import Collection
from dataclasses import dataclass, field

from aiohttp import web

from .errors import ApiError

STALL_POLL_S = 0.1


@dataclass
class Fault:
    status: int | None  # None: stall instead of answering
    message: str
    methods: frozenset[str] | None = None
    path_contains: str = ""
    user_agent: str = ""
    watches: bool = False
    hits: int = field(default=0)

    def matches(self, request: web.BaseRequest) -> bool:
        if self.methods is not None and request.method not in self.methods:
            return False
        if self.path_contains not in request.path:
            return False
        if not request.headers.get("User-Agent", "").startswith(self.user_agent):
            return False
        watch = request.query.get("watch", "false") in ("true", "1")
        return self.watches or not watch


class Faults:
    """The active faults of one server (thread-safe: set from tests, read in the server's event loop)."""

    def __init__(self) -> None:
        self._faults: list[Fault] = []
        self._lock = threading.Lock()

    def fail(
        self,
        status: int,
        message: str = "injected fault",
        *,
        methods: Collection[str] | None = None,
        path_contains: str = "",
        user_agent: str = "",
        watches: bool = False,
    ) -> Fault:
        """Answer matching requests with a Status error of this HTTP code and message."""
        return self._add(Fault(status, message, _methods(methods), path_contains, user_agent, watches))

    def stall(
        self,
        *,
        methods: Collection[str] | None = None,
        path_contains: str = "",
        user_agent: str = "",
        watches: bool = False,
    ) -> Fault:
        """Hold matching requests without an answer until the fault is removed."""
        return self._add(Fault(None, "stalled", _methods(methods), path_contains, user_agent, watches))

    def remove(self, fault: Fault) -> None:
        with self._lock:
            if fault in self._faults:
                self._faults.remove(fault)

    def clear(self) -> None:
        with self._lock:
            self._faults.clear()

    def _add(self, fault: Fault) -> Fault:
        with self._lock:
            self._faults.append(fault)
        return fault

    def _match(self, request: web.BaseRequest) -> Fault | None:
        with self._lock:
            for fault in self._faults:
                if fault.matches(request):
                    fault.hits += 1
                    return fault
        return None

    def _active(self, fault: Fault) -> bool:
        with self._lock:
            return fault in self._faults

    async def intercept(self, request: web.BaseRequest) -> None:
        """Raise the injected error, or wait while a stall lasts; return at once when nothing matches."""
        fault = self._match(request)
        if fault is None:
            return
        if fault.status is not None:
            raise ApiError(fault.status, _reason(fault.status), fault.message)
        while self._active(fault):
            await asyncio.sleep(STALL_POLL_S)
        raise ApiError(503, "ServiceUnavailable", "the request stalled (injected fault)")


def _methods(methods: Collection[str] | None) -> frozenset[str] | None:
    return None if methods is None else frozenset(m.upper() for m in methods)


def _reason(status: int) -> str:
    return {
        403: "Forbidden",
        404: "NotFound",
        409: "Conflict",
        429: "TooManyRequests",
        500: "InternalError",
        503: "ServiceUnavailable",
        504: "Timeout",
    }.get(status, "InternalError")
