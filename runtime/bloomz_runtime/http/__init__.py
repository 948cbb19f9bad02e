"""The OpenAI-compatible HTTP API of rank 0 (FastAPI on uvicorn, on the gRPC server's event loop)."""

from bloomz_runtime.http.app import create_app
from bloomz_runtime.http.chat import DEFAULT_CHAT_TEMPLATE, ChatTemplate, load_chat_template
from bloomz_runtime.http.server import HttpServer, start_http_server

__all__ = [
    "DEFAULT_CHAT_TEMPLATE",
    "ChatTemplate",
    "HttpServer",
    "create_app",
    "load_chat_template",
    "start_http_server",
]
