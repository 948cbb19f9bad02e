"""Rank 0's waiting room: a bounded queue and the rules for when requests join the batch.

The rules are pure functions (unit-tested); ``RequestQueue`` adds only locking.
"""

from __future__ import annotations

import threading
import time
from collections import deque
from collections.abc import Callable, Sequence
from typing import Protocol

from bloomz_runtime.errors import QueueFull, Unavailable


class Waiting(Protocol):
    cancelled: bool
    shut_down: bool  # cancelled because the server stopped (answered UNAVAILABLE, not CANCELLED)
    urgent: bool
    deadline: float | None

    def expired(self, now: float) -> bool: ...


def free_slots(running: int, max_batch_size: int) -> int:
    return max(0, max_batch_size - running)


def should_gather(
    running: int, waiting: Sequence[Waiting], max_batch_size: int, oldest_wait_s: float, batch_wait_s: float
) -> bool:
    """Whether an idle engine should wait a little longer for more requests before prefilling.

    Only an idle engine waits (a running batch takes newcomers at the next step anyway), only once
    a burst has begun (two or more waiting: a lone request starts at once, so batch-1 latency
    never pays for batching), never for urgent requests, never beyond batch_wait_s, and not once
    the batch would be full.
    """
    if running > 0 or len(waiting) < 2 or batch_wait_s <= 0:
        return False
    if any(w.urgent for w in waiting):
        return False
    if len(waiting) >= max_batch_size:
        return False
    return oldest_wait_s < batch_wait_s


def prompt_length(w: Waiting) -> int:
    return len(getattr(w, "prompt_ids", ()))


def fits_prefill_budget(lengths: Sequence[int], budget: int | None) -> bool:
    """Whether prompts of these lengths fit one prefill step: they are left-padded to the longest,
    so the step costs rows x longest tokens. A lone prompt always fits (else it would never run)."""
    if budget is None or len(lengths) <= 1:
        return True
    return len(lengths) * max(lengths) <= budget


def largest_prefill(max_batch_size: int, max_input_tokens: int, prefill_budget: int) -> tuple[int, int]:
    """(rows, tokens per row) of the largest prefill step the limits allow: full-length prompts, as
    many as both the batch and the prefill budget take (at least one)."""
    return max(1, min(max_batch_size, prefill_budget // max_input_tokens)), max_input_tokens


# A forward pass reads every weight once whatever its rows; on CPU that read costs about as much as
# computing this many tokens (560m on 2 cores: a batch-1 decode step ~ 30 prefill tokens).
FUSE_PAD_TOKENS = 32


def fuses_prefill(running: int, longest: int, pad_tokens: int = FUSE_PAD_TOKENS) -> bool:
    """Whether newcomers' prefill should share one forward pass with the running rows' decode.

    Fused, each running row feeds its one token left-padded to the newcomers' longest prompt, so
    the pass computes ``running * (longest - 1)`` padding tokens more; apart, the step reads the
    weights twice. Fuse while that padding costs less than a second weight read.
    """
    return running > 0 and running * (longest - 1) <= pad_tokens


def split_admissible(
    waiting: Sequence[Waiting],
    slots: int,
    now: float,
    prefill_budget: int | None = None,
    length: Callable[[Waiting], int] = prompt_length,
) -> tuple[list[Waiting], list[Waiting], list[Waiting]]:
    """(admit, still waiting, gone): cancelled or expired requests never reach the model. First come,
    first served: once the next request does not fit the slots or the prefill budget, the rest wait."""
    admit: list[Waiting] = []
    keep: list[Waiting] = []
    gone: list[Waiting] = []
    full = False
    for w in waiting:
        if w.cancelled or w.expired(now):
            gone.append(w)
        elif (
            not full
            and len(admit) < slots
            and fits_prefill_budget([*(length(a) for a in admit), length(w)], prefill_budget)
        ):
            admit.append(w)
        else:
            full = True
            keep.append(w)
    return admit, keep, gone


class RequestQueue:
    def __init__(self, max_size: int, prefill_budget: int | None = None) -> None:
        self.max_size = max_size
        self.prefill_budget = prefill_budget
        self._items: deque[Waiting] = deque()
        self._arrived: deque[float] = deque()
        self._cond = threading.Condition()
        self._closed = False

    def put(self, item: Waiting) -> None:
        with self._cond:
            if self._closed:
                raise Unavailable("server is shutting down")
            self._check_room()
            self._items.append(item)
            self._arrived.append(time.monotonic())
            self._cond.notify_all()

    def _check_room(self) -> None:
        if len(self._items) >= self.max_size:
            raise QueueFull(f"queue is full ({self.max_size} waiting requests)")

    def check_room(self) -> None:
        """Raise what put() would for a full or closed queue: checked before the costly work of a
        request (tokenizing), and again by put()."""
        with self._cond:
            if self._closed:
                raise Unavailable("server is shutting down")
            self._check_room()

    def close(self) -> None:
        with self._cond:
            self._closed = True
            self._cond.notify_all()

    def cancel_all(self, shut_down: bool = False) -> None:
        """Mark every waiting request cancelled; the engine answers them CANCELLED when it takes them,
        or UNAVAILABLE with `shut_down` (the server stopped before them: clients retry)."""
        with self._cond:
            for item in self._items:
                item.cancelled = True
                if shut_down:
                    item.shut_down = True
            self._cond.notify_all()

    def take_all(self) -> list[Waiting]:
        """Empty the queue and close it (the watchdog answers these itself)."""
        with self._cond:
            items = list(self._items)
            self._items.clear()
            self._arrived.clear()
            self._closed = True
            self._cond.notify_all()
            return items

    def __len__(self) -> int:
        with self._cond:
            return len(self._items)

    def wait_for_items(self, timeout: float) -> bool:
        """Block until something is waiting (True) or the timeout passes (False). No polling."""
        with self._cond:
            return self._cond.wait_for(lambda: bool(self._items) or self._closed, timeout) and bool(
                self._items
            )

    def gather(self, running: int, max_batch_size: int, batch_wait_s: float) -> None:
        """Let an idle engine collect a batch: wait while ``should_gather`` says so."""
        with self._cond:
            while True:
                oldest = time.monotonic() - self._arrived[0] if self._arrived else 0.0
                if not should_gather(running, list(self._items), max_batch_size, oldest, batch_wait_s):
                    return
                self._cond.wait(batch_wait_s - oldest)

    def take(self, slots: int) -> tuple[list[Waiting], list[Waiting]]:
        """(requests to admit now, requests that left while waiting)."""
        with self._cond:
            if not self._items:  # the usual case while a batch decodes: nothing to sort out
                return [], []
            admit, keep, gone = split_admissible(
                list(self._items), slots, time.monotonic(), self.prefill_budget
            )
            arrived = dict(zip(map(id, self._items), self._arrived, strict=True))
            self._items = deque(keep)
            self._arrived = deque(arrived[id(k)] for k in keep)
            return admit, gone
