"""The SSE stream's order, without a model: a choice's head chunk (chat's role delta, the echo) goes
out with its first token, not before it (load generators take the first chunk as the first token)."""

from __future__ import annotations

import asyncio
import json
from types import SimpleNamespace
from typing import Any

from bloomz_runtime.http.app import Choice, OpenAIRoutes
from bloomz_runtime.http.chat import ChatTemplate
from bloomz_runtime.requests import FailedEvent, FinishedEvent, TokenEvent


def _choice(index: int) -> Choice:
    row: Any = SimpleNamespace(done=False, cancelled=False, generated=[1, 2])
    return Choice(index, [5, 6, 7], row, asyncio.Queue())


def _chunk(index: int, text: str | None, finish: str | None) -> dict[str, Any]:
    return {"index": index, "text": text, "finish": finish}


def _head(c: Choice) -> dict[str, Any]:
    return {"head": c.index}


def _payloads(lines: list[str]) -> list[Any]:
    return [json.loads(line.removeprefix("data: ")) for line in lines if line != "data: [DONE]\n\n"]


def test_the_head_chunk_waits_for_the_first_token() -> None:
    async def scenario() -> tuple[bool, list[str]]:
        routes = OpenAIRoutes(service=None, model_name="m", chat=ChatTemplate())  # type: ignore[arg-type]
        choices = [_choice(0)]
        stream = routes.stream(choices, _chunk, _head, include_usage=True)
        first = asyncio.ensure_future(stream.__anext__())
        await asyncio.sleep(0.05)
        waited = not first.done()  # nothing generated yet: nothing sent
        choices[0].events.put_nowait(TokenEvent("a", 1))
        choices[0].events.put_nowait(FinishedEvent("length", "b"))
        lines = [await first] + [line async for line in stream]
        return waited, lines

    waited, lines = asyncio.run(scenario())
    assert waited
    payloads = _payloads(lines)
    assert payloads[:3] == [{"head": 0}, _chunk(0, "a", None), _chunk(0, "b", "length")]
    assert payloads[3]["usage"] == {"prompt_tokens": 3, "completion_tokens": 2, "total_tokens": 5}
    assert lines[-1] == "data: [DONE]\n\n"


def test_a_choice_that_fails_first_sends_no_head() -> None:
    from bloomz_runtime.errors import Unavailable

    async def scenario() -> list[str]:
        routes = OpenAIRoutes(service=None, model_name="m", chat=ChatTemplate())  # type: ignore[arg-type]
        choices = [_choice(0)]
        choices[0].events.put_nowait(FailedEvent(Unavailable("draining")))
        return [line async for line in routes.stream(choices, _chunk, _head, include_usage=False)]

    payloads = _payloads(asyncio.run(scenario()))
    assert payloads == [{"error": {"message": "draining", "type": "service_unavailable", "param": None,
                                   "code": None}}]  # fmt: skip
