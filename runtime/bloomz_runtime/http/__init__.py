"""The OpenAI-compatible HTTP API of rank 0 (FastAPI on uvicorn, on the gRPC server's event loop).

Names are imported on first use: FastAPI and uvicorn take a few tenths of a second to import,
which a runtime started without HTTP (--http-port 0) should not spend before it serves.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from bloomz_runtime.http.app import create_app
    from bloomz_runtime.http.chat import DEFAULT_CHAT_TEMPLATE, ChatTemplate, load_chat_template
    from bloomz_runtime.http.server import HttpServer, start_http_server

_HOMES = {
    "create_app": "app",
    "DEFAULT_CHAT_TEMPLATE": "chat",
    "ChatTemplate": "chat",
    "load_chat_template": "chat",
    "HttpServer": "server",
    "start_http_server": "server",
}

__all__ = [
    "DEFAULT_CHAT_TEMPLATE",
    "ChatTemplate",
    "HttpServer",
    "create_app",
    "load_chat_template",
    "start_http_server",
]


def __getattr__(name: str) -> Any:
    home = _HOMES.get(name)
    if home is None:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    return getattr(importlib.import_module(f"{__name__}.{home}"), name)
