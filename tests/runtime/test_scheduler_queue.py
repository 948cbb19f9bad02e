"""The request queue: how long an idle engine gathers a burst (from the oldest waiting request's
arrival, up to ``batch_wait_s`` and no longer), the prefill budget of a take, and cancelling all.

The queue's clock is shifted forward (the scheduler reads ``time.monotonic``), so a request can be
made to have waited almost ``batch_wait_s`` (100 s) while the test itself takes milliseconds; a
``gather`` that counted from the wrong arrival or waited the wrong amount would block for about
100 s more, and the test fails long before that (no assertion on how fast anything runs).
"""

from __future__ import annotations

import threading
import time
import types

import pytest
from bloomz_runtime import scheduler
from bloomz_runtime.errors import Unavailable
from bloomz_runtime.scheduler import RequestQueue

BATCH_WAIT_S = 100.0
# Far beyond the few milliseconds a correct gather waits here, far below the ~100 s a wrong one would.
HANG_S = 30.0


class Item:
    def __init__(self, prompt_tokens: int = 1) -> None:
        self.prompt_ids = list(range(prompt_tokens))
        self.cancelled = False
        self.shut_down = False
        self.urgent = False
        self.deadline: float | None = None

    def expired(self, now: float) -> bool:
        return False


class ShiftedClock:
    """``time.monotonic`` plus an offset the test moves forward."""

    def __init__(self) -> None:
        self.offset = 0.0

    def monotonic(self) -> float:
        return time.monotonic() + self.offset


@pytest.fixture
def clock(monkeypatch: pytest.MonkeyPatch) -> ShiftedClock:
    shifted = ShiftedClock()
    monkeypatch.setattr(scheduler, "time", types.SimpleNamespace(monotonic=shifted.monotonic))
    return shifted


def gather_returns(q: RequestQueue) -> bool:
    """Run an idle engine's gather (batch of 8) in a thread: whether it returned within HANG_S."""
    done = threading.Event()

    def run() -> None:
        q.gather(running=0, max_batch_size=8, batch_wait_s=BATCH_WAIT_S)
        done.set()

    thread = threading.Thread(target=run, daemon=True)
    thread.start()
    try:
        return done.wait(HANG_S)
    finally:
        q.take_all()  # a gather still waiting sees an empty queue at its next look and returns
        thread.join(HANG_S)


def test_gather_ends_once_the_oldest_request_has_waited_batch_wait_s(clock: ShiftedClock) -> None:
    q = RequestQueue(max_size=8)
    q.put(Item())
    clock.offset = BATCH_WAIT_S - 0.05  # the first request has waited all but 50 ms of the budget
    q.put(Item())  # a second one just arrived: a burst, so the engine gathers the remaining 50 ms
    assert gather_returns(q), "gather waited past batch_wait_s counted from the oldest arrival"


def test_gather_does_not_wait_when_the_oldest_request_has_waited_long_enough(clock: ShiftedClock) -> None:
    q = RequestQueue(max_size=8)
    q.put(Item())
    clock.offset = BATCH_WAIT_S  # the first request has waited the whole budget already
    q.put(Item())
    assert gather_returns(q), "gather counted from the newest arrival instead of the oldest"


def test_after_a_take_gather_counts_from_the_oldest_request_left(clock: ShiftedClock) -> None:
    q = RequestQueue(max_size=16)
    first = Item()
    q.put(first)
    clock.offset = BATCH_WAIT_S  # the first has waited the whole budget; two more arrive now
    q.put(Item())
    q.put(Item())
    assert q.take(1) == ([first], [])
    # The two left have just arrived: the engine gathers (their ~100 s), not at once for the first's time.
    done = threading.Event()

    def gather() -> None:
        q.gather(running=0, max_batch_size=8, batch_wait_s=BATCH_WAIT_S)
        done.set()

    thread = threading.Thread(target=gather, daemon=True)
    thread.start()
    try:
        assert not done.wait(0.5), "gather counted from a request that had already left the queue"
        for _ in range(6):  # a full batch ends the gathering at once
            q.put(Item())
        assert done.wait(HANG_S), "a full batch did not end the gathering"
    finally:
        q.take_all()
        thread.join(HANG_S)


def test_a_take_keeps_to_the_queues_prefill_budget() -> None:
    """Prompts are left-padded to the longest, so a prefill costs rows x longest prompt tokens."""
    q = RequestQueue(max_size=8, prefill_budget=100)
    first, second, third, fourth = Item(60), Item(60), Item(30), Item(50)
    for item in (first, second, third, fourth):
        q.put(item)
    assert q.take(8) == ([first], [])  # with the second: 2 x 60 = 120 > 100
    assert q.take(8) == ([second], [])  # with the third: 2 x 60 > 100 as well
    assert q.take(8) == ([third, fourth], [])  # 2 x 50 = 100 fits


@pytest.mark.parametrize("shut_down", [False, True], ids=["cancelled", "server-stopped"])
def test_cancel_all_marks_every_waiting_request_and_says_whether_the_server_stopped(shut_down: bool) -> None:
    q = RequestQueue(max_size=8)
    items = [Item(), Item()]
    for item in items:
        q.put(item)
    if shut_down:
        q.cancel_all(shut_down=True)
    else:
        q.cancel_all()
    assert [(i.cancelled, i.shut_down) for i in items] == [(True, shut_down)] * 2
    assert q.take(8) == ([], items)


def test_the_largest_prefill_takes_whole_prompts_only() -> None:
    # 8192 // 3000: two full-length prompts fit the budget, not 2.7 of them.
    rows, tokens = scheduler.largest_prefill(max_batch_size=8, max_input_tokens=3000, prefill_budget=8192)
    assert (rows, tokens) == (2, 3000) and isinstance(rows, int)


def test_a_closed_queue_refuses_with_the_same_reason_before_and_on_put() -> None:
    q = RequestQueue(max_size=8)
    q.check_room()  # open and empty: no error
    q.close()
    for attempt in (q.check_room, lambda: q.put(Item())):
        with pytest.raises(Unavailable) as refused:
            attempt()
        assert str(refused.value) == "server is shutting down"


def test_take_all_empties_and_closes_the_queue() -> None:
    q = RequestQueue(max_size=8)
    items = [Item(), Item()]
    for item in items:
        q.put(item)
    assert q.take_all() == items
    assert len(q) == 0 and not q.wait_for_items(timeout=0.0)
    with pytest.raises(Unavailable):
        q.put(Item())


@pytest.mark.parametrize(
    ("running", "longest", "fused"),
    [
        (0, 16, False),  # nothing runs: a plain prefill
        (1, 16, True),  # 15 padding tokens
        (2, 17, True),  # exactly the 32 a weight read is worth
        (2, 18, False),  # 34
        (15, 16, False),  # 225: decode apart, then prefill
        (32, 1, True),  # one-token prompts add no padding
        (33, 2, False),
    ],
)
def test_newcomers_share_the_decode_pass_while_padding_costs_less_than_a_weight_read(
    running: int, longest: int, fused: bool
) -> None:
    assert scheduler.FUSE_PAD_TOKENS == 32
    assert scheduler.fuses_prefill(running, longest) is fused
    assert scheduler.fuses_prefill(running, longest, pad_tokens=running * (longest - 1)) is (running > 0)
