"""The screened greedy head over a lm_head split by input features (DeepSpeed AutoTP's lm_head):
two ranks, simulated by two threads and a summing all-reduce, give the float32 argmax of the whole
matrix, also for near-ties, flat logits (fallback) and batches of several rows."""

from __future__ import annotations

import threading
from collections.abc import Callable

import pytest
import torch
import torch.nn.functional as F
from bloomz_runtime.backends.greedy_head import can_screen
from bloomz_runtime.backends.sharded_head import ShardedScreenedGreedyHead, deepspeed_lm_head_shard

pytestmark = pytest.mark.skipif(not can_screen(), reason="needs oneDNN's int8 ops")


class ThreadAllReduce:
    """An in-place sum over ``ranks`` threads (each calls it with its own tensor)."""

    def __init__(self, ranks: int) -> None:
        self.barrier = threading.Barrier(ranks)
        self.parts: dict[int, torch.Tensor] = {}
        self.lock = threading.Lock()

    def for_rank(self, rank: int) -> Callable[[torch.Tensor], None]:
        def all_reduce(tensor: torch.Tensor) -> None:
            with self.lock:
                self.parts[rank] = tensor.clone()
            self.barrier.wait(timeout=60)
            total = sum(self.parts[r] for r in sorted(self.parts))
            self.barrier.wait(timeout=60)
            tensor.copy_(total)

        return all_reduce


def column_splits(hidden_size: int, ranks: int) -> list[tuple[int, int]]:
    """(start, width) per rank, the first ranks one column wider when it does not divide evenly."""
    widths = [hidden_size // ranks + (r < hidden_size % ranks) for r in range(ranks)]
    return [(sum(widths[:r]), widths[r]) for r in range(ranks)]


def sharded_argmax(
    weight: torch.Tensor, hiddens: list[torch.Tensor], ranks: int = 2
) -> list[list[torch.Tensor]]:
    reduce = ThreadAllReduce(ranks)
    heads = [
        ShardedScreenedGreedyHead(weight[:, start : start + width], start, ranks, reduce.for_rank(r))
        for r, (start, width) in enumerate(column_splits(weight.shape[1], ranks))
    ]
    results: list[list[torch.Tensor]] = [[] for _ in range(ranks)]

    def run(rank: int) -> None:
        for hidden in hiddens:
            results[rank].append(heads[rank].argmax(hidden))

    threads = [threading.Thread(target=run, args=(r,)) for r in range(ranks)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=120)
    return results


def reference(weight: torch.Tensor, hidden: torch.Tensor, ranks: int = 2) -> torch.Tensor:
    """DeepSpeed's arithmetic: per-rank partial float32 logits, summed."""
    parts = [
        F.linear(hidden[:, start : start + width], weight[:, start : start + width])
        for start, width in column_splits(weight.shape[1], ranks)
    ]
    return torch.argmax(sum(parts), dim=1)


@pytest.mark.parametrize("rows", [1, 3, 16])
def test_two_shards_give_the_float32_argmax(rows: int) -> None:
    g = torch.Generator().manual_seed(rows)
    weight = torch.randn(4000, 128, generator=g) * 0.05
    hiddens = [torch.randn(rows, 128, generator=g) for _ in range(6)]
    hiddens[1][:, :3] *= 40  # outlier dimensions
    results = sharded_argmax(weight, hiddens)
    for step, hidden in enumerate(hiddens):
        expected = reference(weight, hidden)
        assert torch.equal(results[0][step], expected) and torch.equal(results[1][step], expected)


def test_three_uneven_shards() -> None:
    g = torch.Generator().manual_seed(3)
    weight = torch.randn(2500, 100, generator=g) * 0.05  # 34 + 33 + 33 columns
    hiddens = [torch.randn(rows, 100, generator=g) for rows in (1, 2, 5)]
    results = sharded_argmax(weight, hiddens, ranks=3)
    for step, hidden in enumerate(hiddens):
        expected = reference(weight, hidden, ranks=3)
        assert all(torch.equal(results[r][step], expected) for r in range(3))


def test_near_ties_and_flat_logits() -> None:
    g = torch.Generator().manual_seed(7)
    weight = torch.randn(3000, 64, generator=g) * 0.001
    weight[17] = weight[2900] + 1e-7  # two tokens the screen cannot tell apart
    near_tie = weight[2900:2901].clone() * 100
    flat = torch.zeros(1, 64)  # every logit 0: the bound admits the whole vocabulary
    results = sharded_argmax(weight, [near_tie, flat])
    assert torch.equal(results[0][0], reference(weight, near_tie))
    assert torch.equal(results[1][1], torch.tensor([0]))


class LmHeadLinearAllreduce(torch.nn.Module):
    """The attributes of DeepSpeed's class of that name that the shard is read from."""

    def __init__(self, weight: torch.Tensor, sizes: list[int], index: int, bias: bool = False) -> None:
        super().__init__()
        self.weight = torch.nn.Parameter(weight)
        self.bias = torch.nn.Parameter(torch.zeros(weight.shape[0])) if bias else None
        self._partition_sizes, self.tp_index, self.mp_group = sizes, index, None


def test_the_shard_starts_after_the_lower_ranks_columns() -> None:
    weight = torch.randn(8, 33)
    found = deepspeed_lm_head_shard(LmHeadLinearAllreduce(weight, [34, 33, 33], 1))
    assert found is not None
    shard, start, _ = found
    assert start == 34 and torch.equal(shard, weight)


def test_only_deepspeeds_bias_free_float32_lm_head_is_recognised() -> None:
    assert deepspeed_lm_head_shard(torch.nn.Linear(4, 8, bias=False)) is None
    assert deepspeed_lm_head_shard(LmHeadLinearAllreduce(torch.randn(8, 4), [4, 4], 0, bias=True)) is None
    half = LmHeadLinearAllreduce(torch.randn(8, 4).bfloat16(), [4, 4], 0)
    assert deepspeed_lm_head_shard(half) is None
