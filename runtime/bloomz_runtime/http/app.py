"""The OpenAI-compatible routes over the same engine front as gRPC (server.TextGenerationService).

/v1/completions, /v1/chat/completions (JSON, or Server-Sent Events when ``stream``), /v1/models,
/health. Every request is validated by the shared validator and submitted to the same queue,
so HTTP and gRPC requests are batched together. A client that goes away cancels its rows.
"""

from __future__ import annotations

import asyncio
import json
import time
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass
from typing import Any, TypeVar

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse, StreamingResponse
from starlette.exceptions import HTTPException as StarletteHTTPException
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from bloomz_runtime.auth import ApiKeys
from bloomz_runtime.errors import Cancelled, ModelNotFound, RuntimeServiceError, Unauthenticated, Unavailable
from bloomz_runtime.http.chat import ChatTemplate
from bloomz_runtime.http.errors import error_body, http_error, validation_message
from bloomz_runtime.http.schemas import ChatCompletionRequest, CompletionRequest, _Sampling
from bloomz_runtime.metrics import RuntimeMetrics
from bloomz_runtime.requests import FINISH_EOS, FINISH_LENGTH, FINISH_STOP, Event, FinishedEvent, TokenEvent
from bloomz_runtime.requests import GenerationRequest as Row
from bloomz_runtime.server import TextGenerationService

OPEN_PATHS = frozenset({"/health"})
FINISH_REASONS = {FINISH_LENGTH: "length", FINISH_EOS: "stop", FINISH_STOP: "stop"}
T = TypeVar("T")


class ApiEdge:
    """Pure ASGI middleware: API keys on everything but /health, and the per-route counter.

    (Not Starlette's BaseHTTPMiddleware: it would sit between the app and the client's
    disconnect, which the routes listen for to cancel generations.)"""

    def __init__(self, app: ASGIApp, api_keys: ApiKeys | None, metrics: RuntimeMetrics) -> None:
        self.app = app
        self.api_keys = api_keys
        self.metrics = metrics

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        path = scope["path"]
        status = [0]

        async def counting_send(message: Message) -> None:
            if message["type"] == "http.response.start":
                status[0] = message["status"]
            await send(message)

        try:
            if self.api_keys is not None and path not in OPEN_PATHS:
                header = dict(scope.get("headers") or ()).get(b"authorization")
                try:
                    self.api_keys.check(header.decode("latin-1") if header is not None else None)
                except Unauthenticated as exc:
                    code, body = http_error(exc)
                    headers = {"WWW-Authenticate": "Bearer"}
                    await JSONResponse(body, code, headers)(scope, receive, counting_send)
                    return
            await self.app(_as_json(scope), receive, counting_send)
        finally:
            route = path if path.startswith("/v1/") or path in OPEN_PATHS else "other"
            answered = str(status[0] or 499)
            self.metrics.http_requests.labels(route, answered).inc()
            self.metrics.requests.labels(route, answered, "http").inc()


def _as_json(scope: Scope) -> Scope:
    """The API's bodies are JSON whatever the client says: ``curl -d`` sends form encoding by default."""
    if scope.get("method") != "POST":
        return scope
    headers = [(k, v) for k, v in scope.get("headers") or () if k != b"content-type"]
    return {**scope, "headers": [*headers, (b"content-type", b"application/json")]}


async def _disconnected(request: Request) -> None:
    while (await request.receive())["type"] != "http.disconnect":
        pass


async def until_disconnect(request: Request, work: Awaitable[T]) -> T:
    """``work``'s result, or Cancelled (and ``work`` cancelled) if the client goes away first."""
    task = asyncio.ensure_future(work)
    watch = asyncio.ensure_future(_disconnected(request))
    try:
        await asyncio.wait({task, watch}, return_when=asyncio.FIRST_COMPLETED)
        if task.done():
            return task.result()
        raise Cancelled("client disconnected")
    finally:
        task.cancel()
        watch.cancel()


@dataclass
class Choice:
    index: int
    prompt_ids: list[int]
    row: Row
    events: asyncio.Queue[Event]


def _sse(payload: dict[str, Any] | str) -> str:
    data = payload if isinstance(payload, str) else json.dumps(payload, ensure_ascii=False)
    return f"data: {data}\n\n"


def _usage(choices: list[Choice]) -> dict[str, int]:
    prompt = sum(len(c.prompt_ids) for c in choices)
    completion = sum(len(c.row.generated) for c in choices)
    return {"prompt_tokens": prompt, "completion_tokens": completion, "total_tokens": prompt + completion}


class OpenAIRoutes:
    """What the routes do, kept out of the decorators so each step reads top to bottom."""

    def __init__(self, service: TextGenerationService, model_name: str, chat: ChatTemplate) -> None:
        self.service = service
        self.model_name = model_name
        self.chat = chat
        self.created = int(time.time())

    def check_model(self, body: _Sampling) -> None:
        if body.model and body.model != self.model_name:
            raise ModelNotFound(
                f"model '{body.model}' does not exist; this server serves '{self.model_name}'"
            )

    async def start(self, prompts: list[str], fields: dict[str, Any], label: str) -> list[Choice]:
        """Validate every prompt first, then submit them all (so they join the same batch)."""
        prepared = [await self.service.prepare(p, fields) for p in prompts]
        choices: list[Choice] = []
        try:
            for i, (ids, params) in enumerate(prepared):
                row, events = self.service.submit(ids, params, label=label, protocol="http")
                choices.append(Choice(i, ids, row, events))
        except BaseException:
            self.cancel(choices)
            raise
        return choices

    @staticmethod
    def cancel(choices: list[Choice]) -> None:
        for c in choices:
            if not c.row.done:
                c.row.cancelled = True

    async def collect(self, request: Request, choices: list[Choice]) -> list[tuple[str, str]]:
        """(text, OpenAI finish reason) per choice; the client leaving cancels all of them."""

        async def one(c: Choice) -> tuple[str, str]:
            text, reason = await self.service.run_to_end(c.row, c.events)
            return text, FINISH_REASONS[reason]

        try:
            return await until_disconnect(request, asyncio.gather(*(one(c) for c in choices)))
        finally:
            self.cancel(choices)

    async def stream(
        self,
        choices: list[Choice],
        chunk: Callable[[int, str | None, str | None], dict[str, Any]],
        head: Callable[[Choice], dict[str, Any] | None],
        include_usage: bool,
    ) -> AsyncIterator[str]:
        """SSE as OpenAI sends it: a chunk per new piece of text, each choice's last chunk with
        its finish_reason, then (``stream_options.include_usage``) a usage chunk, then [DONE].
        Starlette cancels this generator when the client disconnects; ``finally`` frees the rows."""
        merged: asyncio.Queue[tuple[int, Event]] = asyncio.Queue()

        async def pump(c: Choice) -> None:
            while True:
                event = await c.events.get()
                merged.put_nowait((c.index, event))
                if not isinstance(event, TokenEvent):
                    return

        pumps = [asyncio.create_task(pump(c)) for c in choices]
        started: set[int] = set()
        try:
            remaining = len(choices)
            while remaining:
                index, event = await merged.get()
                if index not in started:
                    # A choice's head (chat's role delta, completions' echo) comes with its first
                    # token, as OpenAI and vLLM send it: load generators time the first chunk.
                    started.add(index)
                    generated = isinstance(event, (TokenEvent, FinishedEvent))
                    first = head(choices[index]) if generated else None
                    if first is not None:
                        yield _sse(first)
                if isinstance(event, TokenEvent):
                    if event.text:
                        yield _sse(chunk(index, event.text, None))
                elif isinstance(event, FinishedEvent):
                    yield _sse(chunk(index, event.text, FINISH_REASONS[event.reason]))
                    remaining -= 1
                else:
                    _, body = http_error(event.error)
                    yield _sse(body)
                    break
            if include_usage:
                last = chunk(0, None, None)
                last.update(choices=[], usage=_usage(choices))
                yield _sse(last)
            yield _sse("[DONE]")
        finally:
            for task in pumps:
                task.cancel()
            self.cancel(choices)

    # -- the two generation routes -----------------------------------------------------------
    async def completions(self, body: CompletionRequest, request: Request) -> Any:
        self.check_model(body)
        prompts = body.prompts()
        fields = body.fields(body.max_tokens)
        rid = f"cmpl-{uuid.uuid4().hex}"
        created = int(time.time())
        choices = await self.start(prompts, fields, rid)
        base = {"id": rid, "object": "text_completion", "created": created, "model": self.model_name}
        if body.stream:

            def chunk(index: int, text: str | None, finish: str | None) -> dict[str, Any]:
                piece = {"index": index, "text": text or "", "logprobs": None, "finish_reason": finish}
                out = {**base, "choices": [piece]}
                if body.include_usage:
                    out["usage"] = None
                return out

            def head(c: Choice) -> dict[str, Any] | None:
                if not body.echo:
                    return None
                cut = body.truncate_prompt_tokens is not None
                return chunk(c.index, self.service.decode(c.prompt_ids) if cut else prompts[c.index], None)

            return _event_stream(self.stream(choices, chunk, head, body.include_usage))
        results = await self.collect(request, choices)
        out: list[dict[str, Any]] = []
        for c, (text, finish) in zip(choices, results, strict=True):
            choice = {"index": c.index, "text": text, "logprobs": None, "finish_reason": finish}
            if body.truncate_prompt_tokens is not None:
                # Extension: the prompt as the model saw it, after the cut (as gRPC's `prompt`).
                choice["prompt"] = self.service.decode(c.prompt_ids)
            if body.echo:
                choice["text"] = str(choice.get("prompt", prompts[c.index])) + text
            out.append(choice)
        return {**base, "choices": out, "usage": _usage(choices)}

    async def chat_completions(self, body: ChatCompletionRequest, request: Request) -> Any:
        self.check_model(body)
        messages = [{"role": m.role, "content": m.text()} for m in body.messages]
        prompt = self.chat.render(messages, body.add_generation_prompt)
        fields = body.fields(body.token_limit)
        rid = f"chatcmpl-{uuid.uuid4().hex}"
        created = int(time.time())
        choices = await self.start([prompt], fields, rid)
        base = {"id": rid, "created": created, "model": self.model_name}
        if body.stream:

            def chunk(index: int, text: str | None, finish: str | None) -> dict[str, Any]:
                delta = {"content": text} if text else {}
                piece = {"index": index, "delta": delta, "logprobs": None, "finish_reason": finish}
                out = {**base, "object": "chat.completion.chunk", "choices": [piece]}
                if body.include_usage:
                    out["usage"] = None
                return out

            def head(c: Choice) -> dict[str, Any]:
                first = chunk(c.index, None, None)
                first["choices"][0]["delta"] = {"role": "assistant", "content": ""}
                return first

            return _event_stream(self.stream(choices, chunk, head, body.include_usage))
        results = await self.collect(request, choices)
        return {
            **base,
            "object": "chat.completion",
            "choices": [
                {
                    "index": c.index,
                    "message": {"role": "assistant", "content": text},
                    "logprobs": None,
                    "finish_reason": finish,
                }
                for c, (text, finish) in zip(choices, results, strict=True)
            ],
            "usage": _usage(choices),
        }

    def models(self) -> dict[str, Any]:
        model = {"id": self.model_name, "object": "model", "created": self.created, "owned_by": "bloomz"}
        return {"object": "list", "data": [model]}


def _event_stream(chunks: AsyncIterator[str]) -> StreamingResponse:
    headers = {"Cache-Control": "no-cache", "X-Accel-Buffering": "no"}
    return StreamingResponse(chunks, media_type="text/event-stream", headers=headers)


def _json_error(exc: BaseException) -> JSONResponse:
    status, body = http_error(exc)
    return JSONResponse(body, status)


def create_app(
    service: TextGenerationService,
    model_name: str,
    chat: ChatTemplate,
    metrics: RuntimeMetrics,
    api_keys: ApiKeys | None = None,
) -> FastAPI:
    app = FastAPI(title="bloomz-runtime", docs_url=None, redoc_url=None, openapi_url=None)
    routes = OpenAIRoutes(service, model_name, chat)

    @app.exception_handler(RuntimeServiceError)
    async def domain_error(request: Request, exc: RuntimeServiceError) -> JSONResponse:
        return _json_error(exc)

    @app.exception_handler(RequestValidationError)
    async def bad_body(request: Request, exc: RequestValidationError) -> JSONResponse:
        message, param = validation_message(list(exc.errors()))
        return JSONResponse(error_body(message, "invalid_request_error", None, param), 400)

    @app.exception_handler(StarletteHTTPException)
    async def http_exception(request: Request, exc: StarletteHTTPException) -> JSONResponse:
        kind = "not_found_error" if exc.status_code == 404 else "invalid_request_error"
        return JSONResponse(error_body(str(exc.detail), kind), exc.status_code)

    @app.get("/health")
    async def health() -> JSONResponse:
        if not service.serving:
            return _json_error(Unavailable("not serving (loading, warming up or draining)"))
        return JSONResponse({"status": "serving"})

    @app.get("/v1/models")
    async def models() -> dict[str, Any]:
        return routes.models()

    @app.post("/v1/completions")
    async def completions(body: CompletionRequest, request: Request) -> Any:
        return await routes.completions(body, request)

    @app.post("/v1/chat/completions")
    async def chat_completions(body: ChatCompletionRequest, request: Request) -> Any:
        return await routes.chat_completions(body, request)

    app.add_middleware(ApiEdge, api_keys=api_keys, metrics=metrics)
    return app
