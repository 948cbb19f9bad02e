"""Rank 0's engine loop: admit requests, broadcast each step, run it, pick tokens, answer callers.

It runs in its own thread (torch releases the GIL during forward passes) so the gRPC event loop
stays responsive. The other ranks mirror every step through ``worker_loop``.
"""

from __future__ import annotations

import contextlib
import logging
import threading
import time

from bloomz_runtime.backends.base import StepScores
from bloomz_runtime.commands import ControlChannel, Heartbeat, Shutdown, Step
from bloomz_runtime.engine import BatchEngine
from bloomz_runtime.errors import Cancelled, DeadlineExceeded, RuntimeServiceError, Unavailable
from bloomz_runtime.metrics import RuntimeMetrics
from bloomz_runtime.requests import GenerationRequest
from bloomz_runtime.sampling import choose_tokens, needs_logits
from bloomz_runtime.scheduler import RequestQueue, free_slots

log = logging.getLogger(__name__)

HEARTBEAT_S = 2.0


def ended_error(req: GenerationRequest) -> RuntimeServiceError:
    """Why a request left before finishing: the server stopped (clients retry), the caller left, or
    its deadline passed."""
    if req.shut_down:
        return Unavailable("the server shut down before this request finished; retry it")
    if req.cancelled:
        return Cancelled("cancelled")
    return DeadlineExceeded("deadline exceeded")


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
        # Admitted into the step now running (they join `active` once it returns).
        self.admitting: list[GenerationRequest] = []
        # When the step (or command) now being sent and run began; None between steps. The watchdog
        # reads it from the event loop.
        self.step_started: float | None = None
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

    def shut_down_all(self) -> None:
        """A drain ended: everything still running or waiting is answered UNAVAILABLE (retry)."""
        self.queue.cancel_all(shut_down=True)
        for req in [*self.active, *self.admitting]:
            req.shut_down = True
            req.cancelled = True

    def unanswered(self) -> list[GenerationRequest]:
        """Running, admitted and waiting requests, the queue emptied and closed: for the watchdog,
        which answers them itself while the engine thread is stuck."""
        waiting = [w for w in self.queue.take_all() if isinstance(w, GenerationRequest)]
        return [*self.active, *self.admitting, *waiting]

    def warm_up_largest(self, rows: int, prompt: tuple[int, ...]) -> None:
        """Before start(): one prefill of `rows` copies of `prompt` and one decode step over them, then
        drop them; every rank runs the same steps. Running out of memory here fails the start-up."""
        names = tuple(f"warmup-largest-{i}" for i in range(rows))
        scores = self._run_step(Step(admit=tuple((name, prompt) for name in names), logits=True))
        assert scores is not None
        self._run_step(Step(decode=tuple(int(t) for t in scores.greedy.tolist()), logits=True))
        self._run_step(Step(drop=names))

    def _send(self, command: Step | Heartbeat | Shutdown) -> None:
        self.step_started = time.monotonic()
        try:
            self.channel.send(command)
        finally:
            self.step_started = None

    def _run_step(self, step: Step) -> StepScores | None:
        self.step_started = time.monotonic()
        try:
            self.channel.send(step)
            return self.engine.apply(step)
        finally:
            self.step_started = None

    def _run(self) -> None:
        try:
            self._loop()
        except BaseException as exc:  # a failed collective or forward: the job must end
            log.exception("engine failed")
            self.failure = exc
            now = time.monotonic()
            # The replica is going down (a rank died or a step failed): UNAVAILABLE, which clients retry
            # on another replica, not INTERNAL.
            gone = Unavailable(f"the engine stopped ({type(exc).__name__}: {exc}); retry the request")
            for req in [*self.active, *self.admitting]:
                if not req.done:
                    req.fail(gone, now)

    def _loop(self) -> None:
        last_sent = time.monotonic()
        while True:
            if not self.active:
                if self._stop.is_set() and len(self.queue) == 0:
                    self._send(Shutdown())
                    return
                if not self.queue.wait_for_items(timeout=HEARTBEAT_S / 2):
                    if time.monotonic() - last_sent >= HEARTBEAT_S:
                        self._send(Heartbeat())
                        last_sent = time.monotonic()
                    continue
                self.queue.gather(0, self.max_batch_size, self.batch_wait_s)
            step, admitted = self._plan()
            if not step.decode and not step.admit:
                if step.drop:
                    self._run_step(step)
                    last_sent = time.monotonic()
                continue
            self.admitting = admitted
            scores = self._run_step(step)
            last_sent = time.monotonic()
            assert scores is not None
            self._advance(scores, admitted)
            self.admitting = []

    def _plan(self) -> tuple[Step, list[GenerationRequest]]:
        """Drop rows that ended (or whose caller left), feed the rest, admit newcomers."""
        now = time.monotonic()
        keep: list[GenerationRequest] = []
        for req in self.active:
            if req.done:
                self._drop.append(req.id)
            elif req.cancelled or req.expired(now):
                self._drop.append(req.id)
                req.fail(ended_error(req), now)
            else:
                keep.append(req)
        self.active = keep
        admitted_any, gone = self.queue.take(free_slots(len(keep), self.max_batch_size))
        for w in gone:
            assert isinstance(w, GenerationRequest)
            w.fail(ended_error(w), now)
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
            if req.done:  # answered meanwhile (the watchdog): nothing more goes to its caller
                continue
            if isinstance(token, BaseException):
                log.warning("sampling failed for %s: %s", req.id, token)
                req.fail(token, now)
                continue
            first = req.times.first_token is None
            try:
                req.add_token(token, now)
            except Exception as exc:  # one row's text handling must not end the batch
                log.exception("request %s failed on token %s", req.id, token)
                with contextlib.suppress(Exception):  # fail() marks it done before it tells the caller
                    req.fail(exc, now)
                continue
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
