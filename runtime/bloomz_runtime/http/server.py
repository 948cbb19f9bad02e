"""uvicorn on rank 0's event loop: binds the socket itself (a busy port fails start-up, like gRPC)
and leaves SIGTERM to rank 0, which drains both protocols before stopping this server."""

from __future__ import annotations

import asyncio
import contextlib
import socket
from collections.abc import Iterator
from dataclasses import dataclass

import uvicorn
from fastapi import FastAPI


class _Server(uvicorn.Server):
    @contextlib.contextmanager
    def capture_signals(self) -> Iterator[None]:
        # Rank 0 owns SIGTERM/SIGINT (drain first); uvicorn must not take them over.
        yield


def bind_socket(host: str, port: int) -> socket.socket:
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    sock = socket.socket(family, socket.SOCK_STREAM)
    try:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        sock.bind((host, port))
        sock.listen(2048)
    except OSError:
        sock.close()
        raise
    return sock


@dataclass
class HttpServer:
    server: _Server
    task: asyncio.Task[None]
    port: int

    async def stop(self, grace_s: float = 1.0) -> None:
        """Close the listener, give open requests ``grace_s``, then cancel what is left."""
        self.server.should_exit = True
        try:
            await asyncio.wait_for(asyncio.shield(self.task), grace_s + 5.0)
        except asyncio.TimeoutError:
            self.server.force_exit = True
            self.task.cancel()
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await self.task


async def start_http_server(
    app: FastAPI, host: str, port: int, tls_cert_file: str | None = None, tls_key_file: str | None = None
) -> HttpServer:
    sock = bind_socket(host, port)
    config = uvicorn.Config(
        app,
        lifespan="off",
        log_config=None,
        log_level="warning",
        access_log=False,
        ssl_certfile=tls_cert_file,
        ssl_keyfile=tls_key_file,
        timeout_graceful_shutdown=1,
    )
    server = _Server(config)
    task = asyncio.create_task(server.serve(sockets=[sock]))
    while not server.started:
        if task.done():
            sock.close()
            task.result()
            raise RuntimeError("HTTP server stopped during start-up")
        await asyncio.sleep(0.01)
    return HttpServer(server, task, int(sock.getsockname()[1]))
