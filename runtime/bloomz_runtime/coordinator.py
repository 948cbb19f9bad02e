"""Rank 0's engine loop: admit requests, broadcast each step, run it, pick tokens, answer callers.

It runs in its own thread (torch releases the GIL during forward passes) so the gRPC event loop
stays responsive. The other ranks mirror every step through ``worker_loop``.
"""

from __future__ import annotations

import logging
import threading
import time

from bloomz_runtime.backends.base import StepScores
from bloomz_runtime.commands import ControlChannel, Heartbeat, Shutdown, Step
from bloomz_runtime.engine import BatchEngine
from bloomz_runtime.errors import Cancelled, DeadlineExceeded
from bloomz_runtime.metrics import RuntimeMetrics
from bloomz_runtime.requests import GenerationRequest
from bloomz_runtime.sampling import choose_tokens, needs_logits
from bloomz_runtime.scheduler import RequestQueue, free_slots

log = logging.getLogger(__name__)

HEARTBEAT_S = 2.0


class Coordinator:
    def __init__(
        self,
        engine: BatchEngine,
        channel: ControlChannel,
        queue: RequestQueue,
        metrics: RuntimeMetrics,
        max_batch_size: int,
        batch_wait_s: float,
    ) -> None:
        self.engine = engine
        self.channel = channel
        self.queue = queue
        self.metrics = metrics
        self.max_batch_size = max_batch_size
        self.batch_wait_s = batch_wait_s
        self.active: list[GenerationRequest] = []
        self._drop: list[str] = []
        self._stop = threading.Event()
        self.failure: BaseException | None = None
        self.thread = threading.Thread(target=self._run, name="engine", daemon=True)

    def start(self) -> None:
        self.thread.start()

    def stop(self) -> None:
        """Finish what is running and queued, then shut every rank down."""
        self._stop.set()
        self.queue.close()

    @property
    def busy(self) -> int:
        return len(self.active) + len(self.queue)

    def _run(self) -> None:
        try:
            self._loop()
        except BaseException as exc:  # a failed collective or forward: the job must end
            log.exception("engine failed")
            self.failure = exc
            now = time.monotonic()
            for req in self.active:
                if not req.done:
                    req.fail(exc, now)

    def _loop(self) -> None:
        last_sent = time.monotonic()
        while True:
            if not self.active:
                if self._stop.is_set() and len(self.queue) == 0:
                    self.channel.send(Shutdown())
                    return
                if not self.queue.wait_for_items(timeout=HEARTBEAT_S / 2):
                    if time.monotonic() - last_sent >= HEARTBEAT_S:
                        self.channel.send(Heartbeat())
                        last_sent = time.monotonic()
                    continue
                self.queue.gather(0, self.max_batch_size, self.batch_wait_s)
            step, admitted = self._plan()
            if not step.decode and not step.admit:
                if step.drop:
                    self.channel.send(step)
                    self.engine.apply(step)
                    last_sent = time.monotonic()
                continue
            self.channel.send(step)
            last_sent = time.monotonic()
            scores = self.engine.apply(step)
            assert scores is not None
            self._advance(scores, admitted)

    def _plan(self) -> tuple[Step, list[GenerationRequest]]:
        """Drop rows that ended (or whose caller left), feed the rest, admit newcomers."""
        now = time.monotonic()
        keep: list[GenerationRequest] = []
        for req in self.active:
            if req.done:
                self._drop.append(req.id)
            elif req.cancelled or req.expired(now):
                self._drop.append(req.id)
                req.fail(
                    Cancelled("cancelled") if req.cancelled else DeadlineExceeded("deadline exceeded"), now
                )
            else:
                keep.append(req)
        self.active = keep
        admitted_any, gone = self.queue.take(free_slots(len(keep), self.max_batch_size))
        for w in gone:
            assert isinstance(w, GenerationRequest)
            w.fail(Cancelled("cancelled") if w.cancelled else DeadlineExceeded("deadline exceeded"), now)
        admitted = [w for w in admitted_any if isinstance(w, GenerationRequest)]
        for req in admitted:
            req.times.scheduled = now
            self.metrics.prompt_tokens.inc(len(req.prompt_ids))
        step = Step(
            drop=tuple(self._drop),
            decode=tuple(req.generated[-1] for req in keep),
            admit=tuple((req.id, req.prompt_ids) for req in admitted),
            logits=needs_logits([req.sampler for req in keep + admitted]),
        )
        self._drop = []
        self.metrics.queue_depth.set(len(self.queue))
        self.metrics.running.set(len(keep) + len(admitted))
        self.metrics.kv_cache_slots_used.set(
            sum(len(r.prompt_ids) + len(r.generated) for r in keep + admitted)
        )
        return step, admitted

    def _advance(self, scores: StepScores, admitted: list[GenerationRequest]) -> None:
        rows = self.active + admitted
        tokens = choose_tokens(scores, [r.sampler for r in rows])
        now = time.monotonic()
        self.metrics.batch_size.observe(len(rows))
        if scores.rescored is not None:
            self.metrics.greedy_rescored.observe(scores.rescored)
        self.metrics.tokens_generated.inc(len(rows))
        for req, token in zip(rows, tokens, strict=True):
            if isinstance(token, BaseException):
                log.warning("sampling failed for %s: %s", req.id, token)
                req.fail(token, now)
                continue
            first = req.times.first_token is None
            req.add_token(token, now)
            if first:
                self.metrics.time_to_first_token.observe(now - req.times.accepted)
            if req.done and len(req.generated) > 1 and req.times.first_token is not None:
                self.metrics.time_per_output_token.observe(
                    (now - req.times.first_token) / (len(req.generated) - 1)
                )
        self.active = rows


def worker_loop(engine: BatchEngine, channel: ControlChannel) -> None:
    """Ranks other than 0: apply each command as it comes until told to shut down."""
    while True:
        command = channel.receive()
        if isinstance(command, Shutdown):
            return
        if isinstance(command, Heartbeat):
            continue
        engine.apply(command)
