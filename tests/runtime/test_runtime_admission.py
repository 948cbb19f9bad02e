"""Admission and failure rules of rank 0: the prefill budget, cheap checks before tokenizing, the step
watchdog's test, one bad row failing alone, a drain's leftovers answered UNAVAILABLE, and children
that die with their parent."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import threading
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest
import torch
from bloomz_api.options import parse_options, to_argv
from bloomz_runtime.backends.base import StepScores
from bloomz_runtime.commands import ControlChannel, Step
from bloomz_runtime.coordinator import Coordinator, ended_error
from bloomz_runtime.dist import DistContext
from bloomz_runtime.errors import Cancelled, DeadlineExceeded, InvalidArgument, QueueFull, Unavailable
from bloomz_runtime.metrics import RuntimeMetrics
from bloomz_runtime.requests import Event, FailedEvent, FinishedEvent, GenerationRequest, TokenEvent
from bloomz_runtime.scheduler import RequestQueue, fits_prefill_budget, largest_prefill, split_admissible
from bloomz_runtime.validation import (
    Limits,
    SamplingParams,
    ValidatedParams,
    longest_token_bytes,
    validate_prompt_size,
    validate_total_tokens,
)
from bloomz_runtime.watchdog import fail_all, overdue
from helpers import wait_for


@dataclass
class W:
    prompt_ids: tuple[int, ...] = (1,)
    cancelled: bool = False
    shut_down: bool = False
    urgent: bool = False
    deadline: float | None = None

    def expired(self, now: float) -> bool:
        return self.deadline is not None and now >= self.deadline


def test_prefill_budget_counts_padded_rows_and_never_blocks_a_lone_prompt() -> None:
    assert fits_prefill_budget([3000], budget=1000)  # alone it runs, whatever its length
    assert fits_prefill_budget([10, 500], budget=1000)  # 2 x 500
    assert not fits_prefill_budget([10, 501], budget=1000)
    assert fits_prefill_budget([600, 600, 600], budget=None)


def test_split_admissible_stops_at_the_first_request_over_the_budget() -> None:
    short, long_, later = W((1,) * 100), W((1,) * 900), W((1,) * 10)
    admit, keep, _ = split_admissible([short, long_, later], slots=8, now=0.0, prefill_budget=1000)
    assert admit == [short] and keep == [long_, later]  # first come, first served: no overtaking
    admit, keep, _ = split_admissible([long_, later], slots=8, now=0.0, prefill_budget=1000)
    assert admit == [long_] and keep == [later]
    admit, _, _ = split_admissible([short, later], slots=8, now=0.0, prefill_budget=1000)
    assert admit == [short, later]


def test_largest_prefill_shape_fills_the_budget_with_full_length_prompts() -> None:
    assert largest_prefill(max_batch_size=8, max_input_tokens=2048, prefill_budget=8192) == (4, 2048)
    assert largest_prefill(max_batch_size=8, max_input_tokens=64, prefill_budget=8192) == (8, 64)
    assert largest_prefill(max_batch_size=8, max_input_tokens=4096, prefill_budget=1024) == (1, 4096)


def test_queue_room_is_checked_before_any_work_and_again_on_put() -> None:
    queue = RequestQueue(max_size=1)
    queue.check_room()
    queue.put(W())
    with pytest.raises(QueueFull):
        queue.check_room()
    with pytest.raises(QueueFull):
        queue.put(W())
    queue.close()
    with pytest.raises(Unavailable):
        queue.check_room()


def test_prompt_bytes_are_refused_before_tokenizing_only_when_no_tokenization_fits() -> None:
    limits = Limits(max_input_tokens=10, max_new_tokens=5, max_total_tokens=12)
    token_bytes = longest_token_bytes(["a", "Ġhello", "▁x"])
    assert token_bytes == 2 * len("Ġhello".encode())
    validate_prompt_size("z" * (10 * token_bytes), limits, token_bytes, truncated=False)
    with pytest.raises(InvalidArgument, match="bytes"):
        validate_prompt_size("z" * (10 * token_bytes + 1), limits, token_bytes, truncated=False)
    validate_prompt_size("z" * 10_000, limits, token_bytes, truncated=True)  # cut to size anyway
    params = ValidatedParams(max_new_tokens=5, sampling=SamplingParams())
    validate_total_tokens(7, params, limits)
    with pytest.raises(InvalidArgument, match="12 tokens per request"):
        validate_total_tokens(8, params, limits)


def test_the_new_flags_survive_the_launcher_round_trip() -> None:
    opts = parse_options(
        ["--model", "m", "--device", "cpu", "--step-timeout-s", "7.5", "--max-prefill-tokens", "512",
         "--max-total-tokens", "900"]
    )  # fmt: skip
    assert parse_options(to_argv(opts)) == opts
    assert (opts.step_timeout_s, opts.max_prefill_tokens, opts.total_tokens_limit) == (7.5, 512, 900)
    default = parse_options(["--model", "m", "--device", "cpu"])
    assert default.total_tokens_limit == default.max_input_tokens + default.max_new_tokens


def test_overdue_only_past_the_limit_of_a_running_step() -> None:
    assert not overdue(None, 100.0, 5.0)
    assert not overdue(90.0, 95.0, 5.0)
    assert overdue(90.0, 95.1, 5.0)
    assert not overdue(0.0, 1e9, 0.0)  # 0: no watchdog


def test_why_a_request_left_early() -> None:
    gone = W(cancelled=True)
    assert isinstance(ended_error(gone), Cancelled)  # type: ignore[arg-type]
    assert isinstance(ended_error(W()), DeadlineExceeded)  # type: ignore[arg-type]
    gone.shut_down = True
    assert isinstance(ended_error(gone), Unavailable)  # type: ignore[arg-type]


# -- a real coordinator over a scripted engine ------------------------------------------------------


@dataclass
class ScriptedEngine:
    """Always picks token 7; blocks in apply() while `hold` is clear (a hung collective), and clears it
    itself once `pause_after` steps have run (so a test can stop the engine at a known step)."""

    hold: threading.Event = field(default_factory=threading.Event)
    rows: int = 0
    steps: list[Step] = field(default_factory=list)
    pause_after: int | None = None

    def __post_init__(self) -> None:
        self.hold.set()

    def apply(self, step: Step) -> StepScores | None:
        if self.pause_after is not None and len(self.steps) >= self.pause_after:
            self.hold.clear()
        self.hold.wait()
        self.steps.append(step)
        self.rows += len(step.admit) - len(step.drop)
        return StepScores(greedy=torch.full((self.rows,), 7)) if self.rows else None


@pytest.fixture(scope="module")
def tokenizer(tiny_checkpoint: Path) -> Any:
    from transformers import AutoTokenizer

    return AutoTokenizer.from_pretrained(tiny_checkpoint)


def coordinator_with(engine: ScriptedEngine, queue: RequestQueue) -> Coordinator:
    channel = ControlChannel(DistContext(rank=0, world_size=1, local_rank=0))
    coordinator = Coordinator(engine, channel, queue, RuntimeMetrics(), 4, 0.0)  # type: ignore[arg-type]
    coordinator.start()
    return coordinator


def request(tokenizer: Any, sink: Any, new_tokens: int = 3) -> GenerationRequest:
    params = ValidatedParams(max_new_tokens=new_tokens, sampling=SamplingParams(), ignore_eos=True)
    return GenerationRequest([5, 6], params, tokenizer, None, sink)


def test_warm_up_at_the_largest_shape_prefills_decodes_and_leaves_an_empty_batch() -> None:
    engine = ScriptedEngine()
    channel = ControlChannel(DistContext(rank=0, world_size=1, local_rank=0))
    coordinator = Coordinator(engine, channel, RequestQueue(8), RuntimeMetrics(), 4, 0.0)  # type: ignore[arg-type]
    coordinator.warm_up_largest(3, (5,) * 40)
    prefill, decode, drop = engine.steps
    assert [len(ids) for _, ids in prefill.admit] == [40, 40, 40] and prefill.logits
    assert decode.decode == (7, 7, 7) and len(drop.drop) == 3 and engine.rows == 0


def test_an_error_in_one_rows_token_handling_fails_that_request_alone(tokenizer: Any) -> None:
    good: list[Event] = []
    bad: list[Event] = []

    def broken_sink(event: Event) -> None:
        if isinstance(event, TokenEvent):
            raise RuntimeError("the caller's stream broke")
        bad.append(event)

    queue = RequestQueue(8)
    coordinator = coordinator_with(ScriptedEngine(), queue)
    try:
        queue.put(request(tokenizer, broken_sink))
        queue.put(request(tokenizer, good.append))
        wait_for("both requests to end", lambda: bad and good and isinstance(good[-1], FinishedEvent), 30)
        assert isinstance(bad[0], FailedEvent) and "stream broke" in str(bad[0].error)
        later: list[Event] = []
        queue.put(request(tokenizer, later.append))  # the engine still serves
        wait_for("a later request to finish", lambda: later and isinstance(later[-1], FinishedEvent), 30)
        assert coordinator.failure is None
    finally:
        coordinator.stop()
        coordinator.thread.join(10)


def test_a_stuck_step_is_seen_and_its_requests_answered_unavailable(tokenizer: Any) -> None:
    engine = ScriptedEngine()
    engine.hold.clear()
    events: list[Event] = []
    waiting: list[Event] = []
    queue = RequestQueue(8)
    coordinator = coordinator_with(engine, queue)
    try:
        queue.put(request(tokenizer, events.append))
        wait_for("the step to start", lambda: coordinator.step_started is not None, 30)
        queue.put(request(tokenizer, waiting.append))
        started = coordinator.step_started
        assert started is not None and overdue(started, started + 6.0, 5.0)
        assert fail_all(coordinator.unanswered(), Unavailable("stuck")) == 2
        assert isinstance(events[-1], FailedEvent) and isinstance(events[-1].error, Unavailable)
        assert isinstance(waiting[-1], FailedEvent)
    finally:
        coordinator.stop()
        engine.hold.set()
        coordinator.thread.join(10)


def test_requests_left_when_a_drain_ends_get_unavailable(tokenizer: Any) -> None:
    # The engine stops in its second step (a busy machine could otherwise finish every token before
    # the test holds it), so the second request stays queued.
    engine = ScriptedEngine(pause_after=1)
    running: list[Event] = []
    waiting: list[Event] = []
    queue = RequestQueue(8)
    coordinator = coordinator_with(engine, queue)
    try:
        queue.put(request(tokenizer, running.append, new_tokens=10_000))
        wait_for("the first token", lambda: running, 30)
        wait_for("the next step to start", lambda: coordinator.step_started is not None, 30)
        queue.put(request(tokenizer, waiting.append))
        coordinator.shut_down_all()
        engine.pause_after = None
        engine.hold.set()
        for events in (running, waiting):
            wait_for("an answer", lambda e=events: isinstance(e[-1], FailedEvent) if e else False, 30)
            error = events[-1].error  # type: ignore[union-attr]
            assert isinstance(error, Unavailable) and "retry" in str(error)
    finally:
        coordinator.stop()
        engine.hold.set()
        coordinator.thread.join(10)


def test_a_child_started_with_preexec_die_with_parent_dies_with_it(tmp_path: Path) -> None:
    """A middle process starts a sleeper with the preexec function, then is SIGKILLed: the kernel
    kills the sleeper too (no handler of the middle process runs)."""
    pid_file = tmp_path / "child.pid"
    middle = (
        "import subprocess, sys, time\n"
        "from bloomz_runtime.lifetime import preexec_die_with_parent\n"
        "child = subprocess.Popen([sys.executable, '-c', 'import time; time.sleep(300)'],"
        " preexec_fn=preexec_die_with_parent())\n"
        f"open({str(pid_file)!r}, 'w').write(str(child.pid))\n"
        "time.sleep(300)\n"
    )
    process = subprocess.Popen([sys.executable, "-c", middle], env=os.environ.copy())
    try:
        wait_for("the sleeper to start", lambda: pid_file.is_file() and pid_file.read_text(), 60)
        child = int(pid_file.read_text())
        process.send_signal(signal.SIGKILL)
        process.wait(30)

        def gone() -> bool:
            try:
                state = Path(f"/proc/{child}/stat").read_text().rsplit(")", 1)[1].split()[0]
            except OSError:
                return True
            return state == "Z"

        wait_for("the sleeper to die with its parent", gone, 30)
    finally:
        if process.poll() is None:
            process.kill()
            process.wait(10)
