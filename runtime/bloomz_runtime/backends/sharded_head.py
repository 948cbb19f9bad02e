"""The int8-screened greedy head over DeepSpeed's tensor-parallel lm_head (several CPU ranks).

DeepSpeed's AutoTP splits BLOOM's lm_head by input features: rank r holds ``W_r = W[:, cols_r]``,
computes ``h[cols_r] @ W_r.T`` and an all-reduce sums the partial logits. The screen of
greedy_head.py splits the same way, its three moves joined by all-reduces:

1. every rank screens its slice: partial screened logits ``s_r`` [B, V] (its int8 shard) and the
   bound ``b_r`` [B] of ``|s_r - exact_r|``;
2. one all-reduce sums the ``s_r`` (as many bytes as the float32 head's own all-reduce) and a small
   one the ``b_r``: ``|sum s_r - sum exact_r| <= sum b_r`` plus float32 rounding of the sums;
3. the candidates (the same on every rank: they depend on all-reduced values only) are rescored:
   each rank's float32 partials of those tokens, summed by an all-reduce of [B, candidates], argmax.

Every rank reads a quarter of its float32 shard's bytes; the result is the float32 argmax, as with
one rank. Every branch depends on all-reduced values only, so the ranks run the same collectives.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import torch
import torch.nn.functional as F

from bloomz_runtime.backends.greedy_head import (
    MAX_RESCORE_SHARE,
    MIN_ROWS,
    SAFETY,
    SINGLE_LEVEL_MAX_CANDIDATES,
    ScreenedGreedyHead,
    candidate_thresholds,
    screening_bound,
)

AllReduce = Callable[[torch.Tensor], None]  # in place, summing over the ranks


class ShardedScreenedGreedyHead:
    """argmax(hidden @ W.T) where this rank holds ``shard`` = W[:, start:start + shard.shape[1]]."""

    def __init__(self, shard: torch.Tensor, start: int, world_size: int, all_reduce: AllReduce) -> None:
        self.local = ScreenedGreedyHead(shard.contiguous())
        self.start, self.width = start, shard.shape[1]
        self.world_size = world_size
        self.all_reduce = all_reduce
        self.vocab = shard.shape[0]
        self.max_rescored = max(1, int(self.vocab * MAX_RESCORE_SHARE))
        self.fallbacks = 0
        self.last_rescored = 0

    @property
    def bytes(self) -> int:
        """The int8 screens and scales of all ranks (what a step reads instead of the float32 head)."""
        return self.local.bytes * self.world_size

    @property
    def replaced_bytes(self) -> int:
        """The float32 head of all ranks."""
        return self.local.weight.numel() * self.local.weight.element_size() * self.world_size

    def _screen(self, part: torch.Tensor, residual: bool) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """(summed screened logits [B, V], per-row thresholds [B, 1], candidate tokens [T])."""
        screened, levels = self.local.screen(part, residual_level=residual)
        # (amax and amin are each several times faster than abs().amax() on these shapes.)
        largest = torch.maximum(screened.amax(dim=1).abs(), screened.amin(dim=1).abs())
        bound = screening_bound(
            torch.linalg.vector_norm(part.double(), dim=1),
            levels.error_norms,
            largest,
            self.local.norms,
            self.width,
        )
        screened = screened.contiguous()
        self.all_reduce(screened)
        # float32 across the wire (rounded up by more than its relative error), float64 again here.
        bound_sum = (bound * (1 + 2.0**-20)).float().contiguous()
        self.all_reduce(bound_sum)
        bound = bound_sum.double() * (1 + 2.0**-20)
        high = screened.amax(dim=1)
        # The float32 sums (ours and the float32 head's) round too: a few ulps of the largest value.
        bound = (bound + 2.0**-20 * self.world_size * (high.abs().double() + bound)) * SAFETY
        thresholds = candidate_thresholds(screened, bound, high)
        reach = screened.sub(thresholds).amax(dim=0)
        return screened, thresholds, (reach >= 0).nonzero().squeeze(1)

    def argmax(self, hidden: torch.Tensor) -> torch.Tensor:
        """[B] ids from the full hidden states [B, H] (every rank passes the same)."""
        part = hidden[:, self.start : self.start + self.width].contiguous()
        two_levels = 2 * part.shape[0] <= MIN_ROWS
        screened, thresholds, tokens = self._screen(part, residual=two_levels)
        if not two_levels and tokens.numel() > min(SINGLE_LEVEL_MAX_CANDIDATES, self.max_rescored):
            screened, thresholds, tokens = self._screen(part, residual=True)
        self.last_rescored = int(tokens.numel())
        if tokens.numel() > self.max_rescored:
            self.fallbacks += 1
            logits = F.linear(part, self.local.weight).contiguous()
            self.all_reduce(logits)
            return torch.argmax(logits, dim=1)
        exact = F.linear(part, self.local.weight.index_select(0, tokens)).contiguous()
        self.all_reduce(exact)
        exact = exact.masked_fill(screened[:, tokens] < thresholds, float("-inf"))
        return tokens[torch.argmax(exact, dim=1)]


def deepspeed_lm_head_shard(head: Any) -> tuple[torch.Tensor, int, AllReduce] | None:
    """(shard, first input column, all-reduce) of DeepSpeed's ``LmHeadLinearAllreduce``, else None."""
    sizes = getattr(head, "_partition_sizes", None)
    index = getattr(head, "tp_index", None)
    weight = getattr(head, "weight", None)
    if type(head).__name__ != "LmHeadLinearAllreduce" or sizes is None or index is None:
        return None
    if not isinstance(weight, torch.Tensor) or weight.dtype != torch.float32 or head.bias is not None:
        return None
    from deepspeed import comm

    group = head.mp_group

    def all_reduce(tensor: torch.Tensor) -> None:
        # The op the lm_head itself sums with, so rescored sums round as the float32 head's do.
        comm.inference_all_reduce(tensor, group=group)

    return weight.detach(), int(sum(sizes[:index])), all_reduce
