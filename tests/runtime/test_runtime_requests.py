"""A request's life on rank 0 (finish rules, emitted text) and the bounded queue."""

from __future__ import annotations

import threading
from typing import Any

import pytest
from bloomz_runtime.errors import QueueFull, Unavailable
from bloomz_runtime.requests import FailedEvent, FinishedEvent, GenerationRequest, TokenEvent
from bloomz_runtime.scheduler import RequestQueue
from bloomz_runtime.validation import SamplingParams, ValidatedParams


def make(
    tokenizer: Any, n: int = 5, stop: tuple[str, ...] = (), ignore_eos: bool = False, stream: bool = True
):
    events: list[object] = []
    params = ValidatedParams(max_new_tokens=n, sampling=SamplingParams(), stop=stop, ignore_eos=ignore_eos)
    req = GenerationRequest([5, 6], params, tokenizer, tokenizer.eos_token_id, events.append, stream=stream)
    return req, events


def text_of(events: list[object]) -> str:
    return "".join(e.text for e in events if isinstance(e, TokenEvent | FinishedEvent))


def test_length_finish(tokenizer: Any) -> None:
    ids = tokenizer("the model server token cache", add_special_tokens=False).input_ids
    req, events = make(tokenizer, n=len(ids))
    for i, t in enumerate(ids):
        assert not req.done
        req.add_token(t, now=float(i))
    assert req.finish_reason == "length" and req.generated == ids
    assert text_of(events) == tokenizer.decode(ids)
    assert isinstance(events[-1], FinishedEvent) and req.times.first_token == 0.0


def test_eos_finishes_unless_ignored(tokenizer: Any) -> None:
    eos = tokenizer.eos_token_id
    req, events = make(tokenizer)
    req.add_token(300, 0.0)
    req.add_token(eos, 1.0)
    assert req.finish_reason == "eos" and req.generated == [300, eos]
    assert "</s>" not in text_of(events)
    req, _ = make(tokenizer, ignore_eos=True)
    req.add_token(eos, 0.0)
    assert not req.done


def test_stop_string_finishes_and_cuts_the_text(tokenizer: Any) -> None:
    ids = tokenizer(" one two three four", add_special_tokens=False).input_ids
    req, events = make(tokenizer, n=50, stop=("three",))
    for t in ids:
        if req.done:
            break
        req.add_token(t, 0.0)
    assert req.finish_reason == "stop"
    assert text_of(events) == " one two "


@pytest.mark.parametrize("stop", [(), ("three",), ("fou",)])
def test_without_a_stream_only_the_end_is_sent_with_the_same_text(
    tokenizer: Any, stop: tuple[str, ...]
) -> None:
    ids = tokenizer(" one two three four \u00e9t\u00e9", add_special_tokens=False).input_ids
    texts = []
    for stream in (True, False):
        req, events = make(tokenizer, n=len(ids), stop=stop, stream=stream)
        for t in ids:
            if req.done:
                break
            req.add_token(t, 0.0)
        assert req.done
        texts.append(text_of(events))
        if not stream:
            assert len(events) == 1 and isinstance(events[0], FinishedEvent)
    assert texts[0] == texts[1] and texts[0]


def test_failure_is_reported(tokenizer: Any) -> None:
    req, events = make(tokenizer)
    req.fail(RuntimeError("x"), 1.0)
    assert req.done and isinstance(events[-1], FailedEvent)


class Item:
    def __init__(self, urgent: bool = False) -> None:
        self.cancelled = False
        self.urgent = urgent
        self.deadline: float | None = None

    def expired(self, now: float) -> bool:
        return False


def test_queue_is_bounded_and_closes() -> None:
    q = RequestQueue(max_size=2)
    q.put(Item())
    q.put(Item())
    with pytest.raises(QueueFull):
        q.put(Item())
    admit, gone = q.take(1)
    assert len(admit) == 1 and gone == [] and len(q) == 1
    q.close()
    with pytest.raises(Unavailable):
        q.put(Item())


def test_queue_wakes_a_waiting_engine_without_polling() -> None:
    q = RequestQueue(max_size=4)
    assert not q.wait_for_items(timeout=0.05)
    threading.Timer(0.1, q.put, args=(Item(),)).start()
    assert q.wait_for_items(timeout=30)


def test_gather_returns_at_once_for_urgent_requests() -> None:
    q = RequestQueue(max_size=4)
    q.put(Item())
    q.put(Item(urgent=True))

    def no_waiting(timeout: float | None = None) -> bool:
        raise AssertionError(f"gather waited ({timeout} s) with an urgent request in the queue")

    q._cond.wait = no_waiting  # type: ignore[method-assign]  # a normal pair waits here, up to 30 s
    q.gather(running=0, max_batch_size=8, batch_wait_s=30.0)
