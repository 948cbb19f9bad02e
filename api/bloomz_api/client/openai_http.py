"""A small client of the runtime's OpenAI-compatible HTTP API, for `client bench` and `client dataset`.

Standard library only (http.client + ssl), so the client keeps needing nothing but grpcio. It speaks
/v1/models and /v1/completions (JSON and Server-Sent Events); an error answer becomes `HttpFailure`
with the status and the OpenAI error's message. Parsing is pure and unit-tested without a server.
"""

from __future__ import annotations

import http.client
import json
import ssl
import time
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass, replace
from types import TracebackType
from typing import Any
from urllib.parse import urlsplit

from bloomz_api.client.bench import BenchRow, StreamTiming, summarize_client_runs

STALE_CONNECTION = (http.client.RemoteDisconnected, ConnectionResetError, BrokenPipeError)


class HttpFailure(Exception):
    """The server answered a non-2xx status (or the connection failed: status 0)."""

    def __init__(self, status: int, message: str, method: str) -> None:
        super().__init__(f"{method}: HTTP {status}: {message}")
        self.status = status
        self.message = message
        self.method = method


@dataclass(frozen=True)
class Endpoint:
    host: str
    port: int
    tls: bool


def parse_target(target: str, tls: bool, default_port: int) -> Endpoint:
    """HOST:PORT, HOST, or an http(s):// URL; an https URL turns TLS on."""
    if "://" not in target:
        target = f"{'https' if tls else 'http'}://{target}"
    parts = urlsplit(target)
    if parts.scheme not in ("http", "https") or not parts.hostname:
        raise ValueError(f"not an HTTP address: {target!r}")
    return Endpoint(parts.hostname, parts.port or default_port, tls or parts.scheme == "https")


def error_message(status: int, body: bytes) -> str:
    """The OpenAI error body's message, else the raw body (a proxy's page, say)."""
    text = body.decode("utf-8", "replace").strip()
    try:
        error = json.loads(text).get("error")
    except (ValueError, AttributeError):
        return text or http.client.responses.get(status, "")
    if isinstance(error, dict) and error.get("message"):
        return str(error["message"])
    return text


def sse_payloads(lines: Iterable[bytes]) -> Iterator[dict[str, Any]]:
    """The JSON objects of a Server-Sent Events stream, up to ``data: [DONE]``."""
    for raw in lines:
        line = raw.decode("utf-8").rstrip("\r\n")
        if not line.startswith("data:"):
            continue  # blank separators, comments, event names
        data = line[len("data:") :].strip()
        if data == "[DONE]":
            return
        yield json.loads(data)


def stream_error(payload: dict[str, Any]) -> str | None:
    """A mid-stream error chunk's message (the server sends the OpenAI error body as a chunk)."""
    error = payload.get("error")
    if isinstance(error, dict):
        return str(error.get("message") or error)
    return None


def time_sse(
    payloads: Iterable[dict[str, Any]], start: float, clock: Callable[[], float] = time.perf_counter
) -> StreamTiming:
    """One streamed completion timed like the gRPC path: the first chunk carrying text is the first
    token; the counts come from the usage chunk (``stream_options.include_usage``)."""
    first: float | None = None
    text: list[str] = []
    prompt_tokens = generated_tokens = 0
    for payload in payloads:
        problem = stream_error(payload)
        if problem is not None:
            raise HttpFailure(200, problem, "POST /v1/completions (stream)")
        for choice in payload.get("choices") or ():
            if choice.get("text"):
                if first is None:
                    first = clock() - start
                text.append(choice["text"])
        usage = payload.get("usage")
        if usage:
            prompt_tokens = int(usage["prompt_tokens"])
            generated_tokens = int(usage["completion_tokens"])
    seconds = clock() - start
    return StreamTiming(
        seconds, first if first is not None else seconds, prompt_tokens, generated_tokens, text="".join(text)
    )


class OpenAIHttpClient:
    """One keep-alive connection to the OpenAI-compatible API; `timeout` bounds each socket wait."""

    def __init__(
        self,
        target: str,
        timeout: float | None = None,
        *,
        api_key: str | None = None,
        tls: bool = False,
        ca_cert: bytes | None = None,
        default_port: int = 8000,
    ) -> None:
        self.endpoint = parse_target(target, tls or ca_cert is not None, default_port)
        self.timeout = timeout
        self._headers = {"Content-Type": "application/json", "Accept": "application/json"}
        if api_key:
            self._headers["Authorization"] = f"Bearer {api_key}"
        self._conn: http.client.HTTPConnection
        if self.endpoint.tls:
            context = ssl.create_default_context(cadata=ca_cert.decode("ascii") if ca_cert else None)
            self._conn = http.client.HTTPSConnection(
                self.endpoint.host, self.endpoint.port, timeout=timeout, context=context
            )
        else:
            self._conn = http.client.HTTPConnection(self.endpoint.host, self.endpoint.port, timeout=timeout)

    def __enter__(self) -> OpenAIHttpClient:
        return self

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.close()

    def close(self) -> None:
        self._conn.close()

    def _send(self, method: str, path: str, body: dict[str, Any] | None) -> http.client.HTTPResponse:
        what = f"{method} {path}"
        data = json.dumps(body).encode() if body is not None else None
        # A kept-alive connection the server has since closed (uvicorn drops idle ones after 5 s)
        # fails before the request reaches it: one retry on a new connection, as urllib3 does.
        reused = self._conn.sock is not None
        while True:
            try:
                self._conn.request(method, path, body=data, headers=self._headers)
                response = self._conn.getresponse()
                break
            except (OSError, http.client.HTTPException) as problem:
                self._conn.close()  # the next attempt or call reconnects
                if reused and isinstance(problem, STALE_CONNECTION):
                    reused = False
                    continue
                where = f"{self.endpoint.host}:{self.endpoint.port}"
                raise HttpFailure(0, f"cannot reach {where}: {problem}", what) from None
        if response.status >= 300:
            message = error_message(response.status, response.read())
            raise HttpFailure(response.status, message, what)
        return response

    def _json(self, method: str, path: str, body: dict[str, Any] | None = None) -> dict[str, Any]:
        response = self._send(method, path, body)
        result: dict[str, Any] = json.loads(response.read())
        return result

    def model(self) -> str:
        """The served model's id (the first of /v1/models)."""
        data = self._json("GET", "/v1/models").get("data") or []
        if not data:
            raise HttpFailure(200, "the server lists no model", "GET /v1/models")
        return str(data[0]["id"])

    def completions(self, body: dict[str, Any]) -> dict[str, Any]:
        return self._json("POST", "/v1/completions", {**body, "stream": False})

    def stream_completion(self, body: dict[str, Any]) -> Iterator[dict[str, Any]]:
        """The chunks of one streamed completion, with a final usage chunk."""
        body = {**body, "stream": True, "stream_options": {"include_usage": True}}
        response = self._send("POST", "/v1/completions", body)
        finished = False
        try:
            yield from sse_payloads(response)
            response.read()  # the chunked body's end, so the connection can carry the next request
            finished = True
        finally:
            if not finished:  # stopped early: dropping the connection cancels the generation
                self._conn.close()

    def time_completion(self, body: dict[str, Any]) -> StreamTiming:
        start = time.perf_counter()
        return time_sse(self.stream_completion(body), start)


def greedy_body(model: str, prompt: str | list[str], max_tokens: int, **extra: Any) -> dict[str, Any]:
    """The /v1/completions body of a greedy request (temperature 0), as the gRPC greedy_request."""
    return {"model": model, "prompt": prompt, "max_tokens": max_tokens, "temperature": 0, **extra}


def run_http_client_bench(
    client: OpenAIHttpClient, prompt: str, max_new_tokens: int, warmup: int, iterations: int
) -> BenchRow:
    """The client mode of `bench` over HTTP: streamed greedy completions, eos ignored, the same
    medians as over gRPC. The world size is not part of the OpenAI API: cards is 0 (unknown)."""
    model = client.model()
    body = greedy_body(model, prompt, max_new_tokens, ignore_eos=True)
    for _ in range(warmup):
        client.time_completion(body)
    runs = [client.time_completion(body) for _ in range(max(iterations, 1))]
    return replace(summarize_client_runs(model, 0, runs), mode="client-http")
