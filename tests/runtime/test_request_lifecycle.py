"""A request's state and events from creation to its end, and the waiting room it sits in first."""

from __future__ import annotations

import threading
from typing import Any

import pytest
import torch
from bloomz_runtime.errors import QueueFull, Unavailable
from bloomz_runtime.requests import FailedEvent, FinishedEvent, GenerationRequest, TokenEvent
from bloomz_runtime.scheduler import RequestQueue, free_slots, should_gather, split_admissible
from bloomz_runtime.validation import SamplingParams, ValidatedParams

PROMPT = (5, 6, 7)


def request(
    tokenizer: Any,
    *,
    n: int = 5,
    stop: tuple[str, ...] = (),
    sampling: SamplingParams | None = None,
    **kwargs: Any,
) -> tuple[GenerationRequest, list[object]]:
    events: list[object] = []
    params = ValidatedParams(max_new_tokens=n, sampling=sampling or SamplingParams(), stop=stop)
    return GenerationRequest(
        PROMPT, params, tokenizer, tokenizer.eos_token_id, events.append, **kwargs
    ), events


def test_a_new_request_waits_unmarked(tokenizer: Any) -> None:
    first, events = request(tokenizer)
    second, _ = request(tokenizer)
    assert first.id.startswith("r") and first.id != second.id
    assert first.prompt_ids == PROMPT and first.generated == [] and events == []
    assert (
        first.label == "" and first.urgent is False and first.cancelled is False and first.shut_down is False
    )
    assert first.deadline is None and not first.expired(1e12)
    assert first.finish_reason is None and not first.done
    labelled, _ = request(tokenizer, label="bench", urgent=True, deadline=5.0)
    assert (labelled.label, labelled.urgent, labelled.deadline) == ("bench", True, 5.0)


@pytest.mark.parametrize(("now", "expired"), [(4.999, False), (5.0, True), (5.001, True)])
def test_a_deadline_expires_at_its_instant(tokenizer: Any, now: float, expired: bool) -> None:
    req, _ = request(tokenizer, deadline=5.0)
    assert req.expired(now) is expired


def test_the_penalty_sees_the_prompt_and_every_generated_token(tokenizer: Any) -> None:
    req, _ = request(tokenizer, sampling=SamplingParams(repetition_penalty=1.3))
    req.add_token(9, 0.0)
    req.add_token(5, 1.0)
    assert req.sampler.seen is not None
    assert req.sampler.seen.tolist() == [*PROMPT, 9, 5]
    assert torch.equal(req.sampler.seen, torch.tensor([5, 6, 7, 9, 5]))


def test_eos_emits_no_text_and_ends_with_its_time(tokenizer: Any) -> None:
    req, events = request(tokenizer)
    req.add_token(300, 1.0)
    req.add_token(tokenizer.eos_token_id, 2.5)
    token_events = [e for e in events if isinstance(e, TokenEvent)]
    assert [e.token_id for e in token_events] == [300, tokenizer.eos_token_id]
    assert token_events[-1].text == ""
    assert events[-1] == FinishedEvent("eos", "")
    assert (req.times.first_token, req.times.finished) == (1.0, 2.5)


def test_length_finish_reports_its_reason_and_time(tokenizer: Any) -> None:
    req, events = request(tokenizer, n=2)
    req.add_token(300, 1.0)
    assert not req.done
    req.add_token(301, 3.0)
    assert req.finish_reason == "length" and req.times.finished == 3.0
    assert isinstance(events[-1], FinishedEvent) and events[-1].reason == "length"


def test_held_back_text_comes_out_at_the_end(tokenizer: Any) -> None:
    """A possible stop-string start and an incomplete character are both released when the request
    ends for another reason, in order."""
    ids = (
        tokenizer(" aS", add_special_tokens=False).input_ids
        + tokenizer("€", add_special_tokens=False).input_ids[:1]
    )
    req, events = request(tokenizer, n=len(ids) + 1, stop=("ST",))
    for i, token in enumerate(ids):
        req.add_token(token, float(i))
    req.add_token(tokenizer.eos_token_id, 9.0)
    emitted = "".join(e.text for e in events if isinstance(e, TokenEvent))
    finished = events[-1]
    assert isinstance(finished, FinishedEvent) and finished.reason == "eos"
    assert emitted == " a"  # "S" might start "ST"; the partial "€" is not a character yet
    assert emitted + finished.text == tokenizer.decode(ids)


def test_a_failure_ends_the_request_with_its_error(tokenizer: Any) -> None:
    req, events = request(tokenizer)
    error = RuntimeError("boom")
    req.fail(error, 4.0)
    assert req.finish_reason == "error" and req.done and req.times.finished == 4.0
    assert events == [FailedEvent(error)]


# --- the waiting room -------------------------------------------------------------------------------------


def test_free_slots_never_negative() -> None:
    assert [free_slots(r, 4) for r in (0, 3, 4, 9)] == [4, 1, 0, 0]


def test_should_gather_at_its_bounds(tokenizer: Any) -> None:
    two = [request(tokenizer)[0] for _ in range(2)]
    assert should_gather(0, two, 4, 0.0, 0.5)
    assert should_gather(0, two, 4, 0.499, 0.5)
    assert not should_gather(0, two, 4, 0.5, 0.5)  # waited long enough
    assert not should_gather(1, two, 4, 0.0, 0.5)  # a running batch takes newcomers anyway
    assert not should_gather(0, two[:1], 4, 0.0, 0.5)  # a lone request starts at once
    assert not should_gather(0, two, 2, 0.0, 0.5)  # the batch is full
    assert should_gather(0, two, 3, 0.0, 0.5)
    assert not should_gather(0, two, 4, 0.0, 0.0)  # batching off


def test_split_admissible_drops_the_cancelled_and_expired_first(tokenizer: Any) -> None:
    reqs = [request(tokenizer, deadline=10.0)[0] for _ in range(4)]
    reqs[1].cancelled = True
    admit, keep, gone = split_admissible(reqs, 2, now=5.0)
    assert (admit, keep, gone) == ([reqs[0], reqs[2]], [reqs[3]], [reqs[1]])
    admit, keep, gone = split_admissible(reqs, 5, now=10.0)
    assert (admit, keep, gone) == ([], [], reqs)


def test_the_queue_refuses_with_a_reason(tokenizer: Any) -> None:
    q = RequestQueue(max_size=1)
    q.put(request(tokenizer)[0])
    with pytest.raises(QueueFull, match=r"queue is full \(1 waiting requests\)"):
        q.put(request(tokenizer)[0])
    q.close()
    with pytest.raises(Unavailable) as error:
        q.put(request(tokenizer)[0])
    assert str(error.value) == "server is shutting down"
    assert q.wait_for_items(timeout=0.0)  # closed, but one still waits
    q.take(1)
    assert not q.wait_for_items(timeout=0.0)  # closed and empty: nothing will come


def test_cancel_all_sends_every_waiting_request_out_as_gone(tokenizer: Any) -> None:
    q = RequestQueue(max_size=4)
    reqs = [request(tokenizer)[0] for _ in range(3)]
    for r in reqs:
        q.put(r)
    q.cancel_all()
    assert all(r.cancelled is True for r in reqs)
    assert q.take(4) == ([], reqs) and len(q) == 0


def test_take_keeps_the_arrival_order_and_times_of_those_left(tokenizer: Any) -> None:
    q = RequestQueue(max_size=8)
    reqs = [request(tokenizer, deadline=1e12)[0] for _ in range(4)]
    for r in reqs:
        q.put(r)
    assert q.take(1) == ([reqs[0]], [])
    q.put(request(tokenizer)[0])  # the queue still works after a take
    assert q.take(2) == ([reqs[1], reqs[2]], [])
    expired = request(tokenizer, deadline=0.0)[0]
    q.put(expired)
    admit, gone = q.take(8)
    assert admit[0] is reqs[3] and len(admit) == 2 and gone == [expired]


def gather_in_thread(
    q: RequestQueue, max_batch_size: int, batch_wait_s: float
) -> tuple[threading.Thread, list]:
    outcome: list[object] = []

    def run() -> None:
        try:
            q.gather(running=0, max_batch_size=max_batch_size, batch_wait_s=batch_wait_s)
            outcome.append("returned")
        except BaseException as error:  # the test reads it
            outcome.append(error)

    thread = threading.Thread(target=run, daemon=True)
    thread.start()
    return thread, outcome


def test_gather_waits_for_a_burst_until_the_batch_is_full(tokenizer: Any) -> None:
    q = RequestQueue(max_size=8)
    q.put(request(tokenizer)[0])
    q.put(request(tokenizer)[0])
    thread, outcome = gather_in_thread(q, max_batch_size=3, batch_wait_s=600.0)
    thread.join(0.3)
    assert thread.is_alive() and outcome == []  # two of three, and 600 s to wait: still gathering
    q.put(request(tokenizer)[0])
    thread.join(60)
    assert outcome == ["returned"]


def test_gather_stops_waiting_once_the_oldest_has_waited_batch_wait(tokenizer: Any) -> None:
    q = RequestQueue(max_size=8)
    q.put(request(tokenizer)[0])
    q.put(request(tokenizer)[0])
    thread, outcome = gather_in_thread(q, max_batch_size=8, batch_wait_s=0.2)
    thread.join(60)  # bounded by batch_wait_s; nothing else wakes it
    assert outcome == ["returned"]


def test_gather_on_an_empty_queue_returns(tokenizer: Any) -> None:
    thread, outcome = gather_in_thread(RequestQueue(max_size=2), max_batch_size=8, batch_wait_s=600.0)
    thread.join(60)
    assert outcome == ["returned"]
