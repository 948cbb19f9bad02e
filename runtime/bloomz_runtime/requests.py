"""A generation request as rank 0 tracks it: tokens so far, text so far, why and when it ended."""

from __future__ import annotations

import itertools
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

from bloomz_runtime.sampling import RowSampler
from bloomz_runtime.text import IncrementalDetokenizer, StopMatcher
from bloomz_runtime.validation import ValidatedParams

FINISH_LENGTH = "length"
FINISH_EOS = "eos"
FINISH_STOP = "stop"

_ids = itertools.count()


@dataclass(frozen=True)
class TokenEvent:
    text: str
    token_id: int


@dataclass(frozen=True)
class FinishedEvent:
    reason: str
    # Streaming: any text held back until the end (stop-string prefix, incomplete character);
    # otherwise the whole continuation.
    text: str


@dataclass(frozen=True)
class FailedEvent:
    error: BaseException


Event = TokenEvent | FinishedEvent | FailedEvent


@dataclass
class Timestamps:
    accepted: float = field(default_factory=time.monotonic)
    scheduled: float | None = None
    first_token: float | None = None
    finished: float | None = None


class GenerationRequest:
    """Created on the event loop, advanced by the engine thread; ``sink`` must be thread-safe."""

    def __init__(
        self,
        prompt_ids: Sequence[int],
        params: ValidatedParams,
        tokenizer: Any,
        eos_id: int | None,
        sink: Callable[[Event], None],
        deadline: float | None = None,
        urgent: bool = False,
        label: str = "",
        stream: bool = True,
    ) -> None:
        self.id = f"r{next(_ids)}"
        self.label = label
        self.prompt_ids = tuple(prompt_ids)
        self.params = params
        self.eos_id = eos_id
        self.sink = sink
        self.deadline = deadline
        # Skip the idle engine's batch-gathering wait (benchmarks measure batch-1 latency).
        self.urgent = urgent
        # Without a stream the caller only wants the end: the text is kept here and goes out with the
        # FinishedEvent, so a step costs the event loop one wake-up per finished row, not one per token.
        self.stream = stream
        self.pieces: list[str] = []
        self.sampler = RowSampler(params.sampling, prompt_ids)
        self.detokenizer = IncrementalDetokenizer(tokenizer)
        self.stop_matcher = StopMatcher(params.stop)
        self.generated: list[int] = []
        self.times = Timestamps()
        self.finish_reason: str | None = None
        # Set from the event loop when the caller goes away; read by the engine thread.
        self.cancelled = False
        # Set with `cancelled` when a drain ends before the request did: answered UNAVAILABLE.
        self.shut_down = False

    @property
    def done(self) -> bool:
        return self.finish_reason is not None

    def expired(self, now: float) -> bool:
        return self.deadline is not None and now >= self.deadline

    def add_token(self, token: int, now: float) -> None:
        """Record one new token, emit its text, and finish the request if a stop rule says so."""
        if self.times.first_token is None:
            self.times.first_token = now
        self.generated.append(token)
        self.sampler.observe(token)
        reason = None
        if self.eos_id is not None and token == self.eos_id and not self.params.ignore_eos:
            reason = FINISH_EOS
            piece = ""
        else:
            piece = self.detokenizer.add(token)
        emit, matched = self.stop_matcher.feed(piece)
        if matched:
            reason = FINISH_STOP
        if self.stream:
            self.sink(TokenEvent(emit, token))
        else:
            self.pieces.append(emit)
        if reason is None and len(self.generated) >= self.params.max_new_tokens:
            reason = FINISH_LENGTH
        if reason is not None:
            self.finish(reason, now)

    def finish(self, reason: str, now: float) -> None:
        self.finish_reason = reason
        self.times.finished = now
        tail = ""
        if reason != FINISH_STOP:
            tail, _ = self.stop_matcher.feed(self.detokenizer.flush())
            tail += self.stop_matcher.flush()
        if not self.stream:
            tail = "".join(self.pieces) + tail
        self.sink(FinishedEvent(reason, tail))

    def fail(self, error: BaseException, now: float) -> None:
        self.finish_reason = "error"
        self.times.finished = now
        self.sink(FailedEvent(error))
