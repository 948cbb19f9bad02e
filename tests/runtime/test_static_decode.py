"""Static-shape decode (backends/static.py) on CPU: the same greedy tokens as plain transformers
while rows join and leave fixed slots, and a decode step that ``torch.compile(fullgraph=True,
dynamic=False)`` compiles once per (batch bucket, length bucket) across 100 positions: the
property HPU graphs and CUDA graphs need, checked where it can run."""

from __future__ import annotations

from collections import Counter
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
import torch
from bloomz_api.options import ServeOptions, parse_options, to_argv
from bloomz_runtime.backends.bloom import BloomRunner
from bloomz_runtime.backends.capture import compiled
from bloomz_runtime.backends.cpu import CpuBackend
from bloomz_runtime.backends.static import SlotBatch, batch_bucket, bucket_length
from bloomz_runtime.commands import Step
from bloomz_runtime.dist import DistContext
from bloomz_runtime.engine import BatchEngine
from runtime_reference import PROMPTS, Reference

PROMPTS5 = [*PROMPTS, "one two"]


@pytest.fixture(scope="module")
def runner(tiny_checkpoint: Path) -> BloomRunner:
    torch.set_num_threads(1)
    opts = ServeOptions(
        model=str(tiny_checkpoint),
        device="cpu",
        screened_greedy=True,
        static_decode=True,
        max_batch_size=8,
        max_input_tokens=64,
        max_new_tokens=100,
    )
    runner = CpuBackend().load(opts, DistContext(0, 1, 0))
    assert isinstance(runner, BloomRunner) and runner.static_decode
    # Small length buckets so a generation crosses several of them.
    runner.cache_chunk = 16
    return runner


def prompt_ids(runner: BloomRunner, prompt: str) -> tuple[int, ...]:
    return tuple(runner.tokenizer(prompt).input_ids)


def run_staggered(
    engine: BatchEngine, runner: BloomRunner, lengths: list[int], logits: bool
) -> dict[str, list[int]]:
    """Admit one prompt per step (two at once for the last two), each row leaving after its own count."""
    out: dict[str, list[int]] = {}
    pending = list(range(len(lengths)))
    drop: tuple[str, ...] = ()
    while pending or engine.rows:
        joining = pending[:2] if len(pending) == 2 else pending[:1]
        pending = pending[len(joining) :]
        admit = tuple((str(i), prompt_ids(runner, PROMPTS5[i % len(PROMPTS5)])) for i in joining)
        for i in joining:
            out[str(i)] = []
        live = [r for r in engine.rows if r not in drop]
        scores = engine.apply(
            Step(drop=drop, decode=tuple(out[r][-1] for r in live), admit=admit, logits=logits)
        )
        assert scores is not None
        assert engine.rows == live + [r for r, _ in admit]
        for row, token in zip(engine.rows, scores.greedy.tolist(), strict=True):
            out[row].append(token)
        drop = tuple(r for r in engine.rows if len(out[r]) >= lengths[int(r)])
        if drop and set(drop) == set(engine.rows) and not pending:
            engine.apply(Step(drop=drop))
            break
    assert engine.rows == []
    return out


@pytest.mark.parametrize("logits", [True, False], ids=["float32-head", "screened-greedy"])
def test_rows_joining_and_leaving_slots_match_transformers(
    runner: BloomRunner, hf_greedy: Reference, logits: bool
) -> None:
    engine = BatchEngine(runner)
    assert isinstance(engine.slots, SlotBatch)
    lengths = [40, 3, 24, 7, 30, 12]
    out = run_staggered(engine, runner, lengths, logits)
    for i, n in enumerate(lengths):
        assert out[str(i)] == hf_greedy(PROMPTS5[i % len(PROMPTS5)], n), i
    # Every slot is free again and rows were compacted into the lowest ones on the way.
    assert engine.slots.slot_of == {} and set(engine.slots.lengths) == {0}


class CountingBackend:
    """A torch.compile backend that records each compilation (one per FX graph Dynamo hands it)."""

    def __init__(self) -> None:
        self.compiles: Counter[tuple[int, int]] = Counter()
        self.key: tuple[int, int] = (0, 0)

    def factory(self) -> Callable[[Any, tuple[int, int]], Any]:
        make = compiled(backend=self.backend)

        def wrap(step: Any, key: tuple[int, int]) -> Any:
            fn = make(step, key)

            def call(*args: torch.Tensor) -> Any:
                self.key = key
                return fn(*args)

            return call

        return wrap

    def backend(self, gm: torch.fx.GraphModule, example_inputs: list[torch.Tensor]) -> Any:
        self.compiles[self.key] += 1
        return gm.forward


def test_compiled_step_compiles_once_per_bucket_over_100_positions(
    runner: BloomRunner, hf_greedy: Reference, monkeypatch: pytest.MonkeyPatch
) -> None:
    torch._dynamo.reset()
    # Every bucket pair's step is the same code object, so Dynamo counts each pair as a
    # recompilation of it; the default limit (8) is below the number of pairs visited here.
    monkeypatch.setattr(torch._dynamo.config, "recompile_limit", 64)
    counter = CountingBackend()
    engine = BatchEngine(runner)
    assert engine.slots is not None
    engine.slots.graphs = counter.factory()
    # Row 0 runs 100 positions; others join and leave around it (batch buckets 1 to 8).
    lengths = [100, 5, 60, 9, 20, 33]
    out = run_staggered(engine, runner, lengths, logits=True)
    for i, n in enumerate(lengths):
        assert out[str(i)] == hf_greedy(PROMPTS5[i % len(PROMPTS5)], n), i
    used = set(engine.slots.steps)
    assert {1, 2, 4} <= {batch for batch, _ in used}
    assert len({length for _, length in used}) >= 5
    # The property graphs need: one compilation per bucket pair, never a second one.
    assert counter.compiles == Counter(dict.fromkeys(used, 1))


def test_plan_pads_the_batch_and_buckets_the_length(runner: BloomRunner) -> None:
    batch = SlotBatch(runner, slots=4, max_length=100, length_bucket=16)
    assert batch.shape.slots == 4 and batch.shape.length == 112
    batch.slot_of = {"a": 0, "b": 2}
    batch.lengths = [20, 0, 5, 0]
    ids, pos, order, length = batch.plan(["b", "a"], [7, 8])
    assert order == [2, 0] and length == 32
    assert ids == [8, runner.pad_id, 7, runner.pad_id] and pos == [20, 0, 5, 0]
    with pytest.raises(RuntimeError, match="2 rows"):
        batch.plan(["b", "a"], [7])
    batch.lengths[0] = 112
    with pytest.raises(RuntimeError, match="full"):
        batch.plan(["a"], [1])


def test_a_prompt_that_leaves_no_room_is_refused(runner: BloomRunner) -> None:
    batch = SlotBatch(runner, slots=1, max_length=16, length_bucket=16)
    with pytest.raises(ValueError, match="no room"):
        batch.admit([("a", tuple(range(5, 21)))], logits=False)
    assert batch.slot_of == {}


@pytest.mark.parametrize(
    ("rows", "limit", "expected"),
    [(1, None, 1), (2, None, 2), (3, None, 4), (5, 8, 8), (9, None, 16), (5, 6, 6)],
)
def test_batch_bucket(rows: int, limit: int | None, expected: int) -> None:
    assert batch_bucket(rows, limit) == expected


def test_bucket_length_reaches_the_cache_end() -> None:
    assert bucket_length(17, 16) == 32 and bucket_length(105, 16, 112) == 112 and bucket_length(0, 16) == 16


def test_static_decode_flag_round_trips() -> None:
    for flag, value in (("--static-decode", True), ("--no-static-decode", False)):
        opts = parse_options(["--model", "m", "--device", "cpu", flag])
        assert opts.static_decode is value and opts.uses_static_decode is value
        assert parse_options(to_argv(opts)) == opts
    default = parse_options(["--model", "m", "--device", "cpu"])
    assert default.static_decode is None and "static-decode" not in " ".join(to_argv(default))
    assert not default.uses_static_decode
    assert ServeOptions(model="m", device="cuda").uses_static_decode
    assert ServeOptions(model="m", device="hpu").uses_static_decode


def test_inverse_cdf_draw_follows_the_distribution_and_the_seed() -> None:
    """The draw used where logits live off the CPU (checked here on CPU tensors)."""
    from bloomz_runtime.sampling import draw_on_device

    probs = torch.tensor([0.0, 0.5, 0.0, 0.25, 0.25])
    draws = Counter(draw_on_device(probs, torch.Generator().manual_seed(i)) for i in range(4000))
    assert set(draws) == {1, 3, 4}  # zero-probability tokens never come out
    assert abs(draws[1] / 4000 - 0.5) < 0.05 and abs(draws[3] / 4000 - 0.25) < 0.05
    seeded = [draw_on_device(probs, torch.Generator().manual_seed(11)) for _ in range(3)]
    assert len(set(seeded)) == 1
    assert draw_on_device(torch.tensor([0.0, 0.0, 1.0]), torch.Generator().manual_seed(0)) == 2
