"""Batch bookkeeping: left padding, joining and leaving rows, admission rules, token choice."""

from __future__ import annotations

from dataclasses import dataclass

import pytest
import torch
from bloomz_runtime.backends.base import StepScores
from bloomz_runtime.kvcache import concat_rows, left_pad_prompts, ones_column, select_rows, trim_left
from bloomz_runtime.sampling import (
    RowSampler,
    apply_repetition_penalty,
    choose_tokens,
    filter_top_k,
    filter_top_p,
    needs_logits,
)
from bloomz_runtime.scheduler import free_slots, should_gather, split_admissible
from bloomz_runtime.validation import SamplingParams


def kv_for(mask: torch.Tensor, layers: int = 2) -> list[tuple[torch.Tensor, torch.Tensor]]:
    """A fake cache whose entries record (row, position) so moves can be checked."""
    b, s = mask.shape
    k = torch.arange(b * s, dtype=torch.float32).reshape(b, 1, s, 1) + 1
    return [(k.clone(), -k.clone()) for _ in range(layers)]


def test_left_pad_prompts() -> None:
    ids, mask = left_pad_prompts([[5, 6, 7], [9]], pad_id=3)
    assert ids.tolist() == [[5, 6, 7], [3, 3, 9]]
    assert mask.tolist() == [[1, 1, 1], [0, 0, 1]]
    ids, mask = left_pad_prompts([[1, 2]], pad_id=0, length=4)  # bucketed length
    assert ids.tolist() == [[0, 0, 1, 2]] and mask.tolist() == [[0, 0, 1, 1]]


def test_concat_rows_pads_the_shorter_batch_on_the_left() -> None:
    a_mask = torch.tensor([[1, 1, 1]])
    b_mask = torch.tensor([[0, 1], [1, 1]])
    a, b = kv_for(a_mask), kv_for(b_mask)
    kv, mask = concat_rows(a, a_mask, b, b_mask)
    assert mask.tolist() == [[1, 1, 1], [0, 0, 1], [0, 1, 1]]
    keys = kv[0][0][:, 0, :, 0]
    assert keys.tolist() == [[1, 2, 3], [0, 1, 2], [0, 3, 4]]
    assert torch.equal(kv[1][1], -kv[1][0])


def test_select_rows_keeps_order_and_trims_unused_columns() -> None:
    mask = torch.tensor([[0, 0, 1, 1], [1, 1, 1, 1], [0, 1, 1, 1]])
    kv, new_mask = select_rows(kv_for(mask), mask, [2, 0])
    assert new_mask.tolist() == [[1, 1, 1], [0, 1, 1]]
    assert kv[0][0][:, 0, :, 0].tolist() == [[10, 11, 12], [2, 3, 4]]


def test_trim_left_and_ones_column() -> None:
    mask = torch.tensor([[0, 1], [0, 1]])
    kv, trimmed = trim_left(kv_for(mask), mask)
    assert trimmed.tolist() == [[1], [1]] and kv[0][0].shape[2] == 1
    assert ones_column(trimmed).tolist() == [[1, 1], [1, 1]]


@dataclass
class W:
    cancelled: bool = False
    urgent: bool = False
    deadline: float | None = None

    def expired(self, now: float) -> bool:
        return self.deadline is not None and now >= self.deadline


def test_split_admissible_skips_gone_requests_and_respects_slots() -> None:
    a, b, c, d = W(), W(cancelled=True), W(deadline=1.0), W()
    e = W()
    admit, keep, gone = split_admissible([a, b, c, d, e], slots=2, now=5.0)
    assert admit == [a, d] and keep == [e] and gone == [b, c]


def test_free_slots() -> None:
    assert free_slots(3, 8) == 5
    assert free_slots(9, 8) == 0


def test_idle_engine_gathers_briefly_but_never_for_urgent_or_full_batches() -> None:
    two = [W(), W()]
    assert should_gather(0, two, 8, oldest_wait_s=0.001, batch_wait_s=0.005)
    assert not should_gather(0, two, 8, oldest_wait_s=0.006, batch_wait_s=0.005)
    assert not should_gather(0, [W()], 8, 0.0, 0.005)  # a lone request starts at once
    assert not should_gather(1, two, 8, 0.0, 0.005)  # a running batch takes newcomers next step
    assert not should_gather(0, [W(), W(urgent=True)], 8, 0.0, 0.005)
    assert not should_gather(0, [W()] * 8, 8, 0.0, 0.005)
    assert not should_gather(0, two, 8, 0.0, 0.0)
    assert not should_gather(0, [], 8, 0.0, 0.005)


def test_repetition_penalty_like_transformers() -> None:
    scores = torch.tensor([2.0, -2.0, 1.0])
    out = apply_repetition_penalty(scores, torch.tensor([0, 1]), 2.0)
    assert out.tolist() == [1.0, -4.0, 1.0]


def test_top_k_and_top_p_filters() -> None:
    scores = torch.tensor([3.0, 2.0, 1.0, 0.0])
    assert torch.isinf(filter_top_k(scores, 2)).tolist() == [False, False, True, True]
    probs_first = torch.softmax(scores, -1)[0].item()
    kept = ~torch.isinf(filter_top_p(scores, probs_first * 0.99))
    assert kept.tolist() == [True, False, False, False]  # the top token is always kept
    assert (~torch.isinf(filter_top_p(scores, 0.999))).sum() >= 3


def test_choose_tokens_greedy_and_seeded_sampling() -> None:
    logits = torch.tensor([[0.0, 5.0, 1.0], [4.0, 0.0, 0.0]])
    greedy = RowSampler(SamplingParams(), [0])
    assert choose_tokens(StepScores.from_logits(logits), [greedy, greedy]) == [1, 0]
    # Greedy-only steps may come without logits (screened lm_head); sampling rows never do.
    assert not needs_logits([greedy, greedy])
    assert choose_tokens(StepScores(greedy=torch.tensor([2, 1])), [greedy, greedy]) == [2, 1]
    sampler = RowSampler(SamplingParams(do_sample=True, seed=3), [0])
    assert needs_logits([greedy, sampler])
    assert needs_logits([RowSampler(SamplingParams(repetition_penalty=1.2), [0])])
    with pytest.raises(RuntimeError, match="without logits"):
        choose_tokens(StepScores(greedy=torch.tensor([2, 1])), [greedy, sampler])
    params = SamplingParams(do_sample=True, temperature=1.0, seed=7)
    flat = torch.zeros(1000)
    a = [RowSampler(params, [0]).choose(flat) for _ in range(3)]
    b = [RowSampler(params, [0]).choose(flat) for _ in range(3)]
    assert a == b  # same seed, same choice
    s = RowSampler(params, [0])
    draws = {s.choose(flat) for _ in range(20)}
    assert len(draws) > 1  # it really samples
    assert RowSampler(SamplingParams(do_sample=True, top_k=1, seed=1), [0]).choose(logits[0]) == 1


def test_step_scores_of_decode_and_prefill_parts_join_in_row_order() -> None:
    decode = StepScores(greedy=torch.tensor([4, 5]), rescored=3)
    prefill = StepScores(greedy=torch.tensor([6]), rescored=9)
    joined = StepScores.cat([decode, prefill])
    assert joined.greedy.tolist() == [4, 5, 6] and joined.logits is None and joined.rescored == 12
    eye = torch.eye(3)
    full = StepScores.cat([StepScores.from_logits(eye[:2]), StepScores.from_logits(eye[2:])])
    assert full.greedy.tolist() == [0, 1, 2] and full.logits is not None and full.rescored is None
    # One part without logits: the step has none (only greedy-only steps skip them).
    assert StepScores.cat([decode, StepScores.from_logits(torch.eye(3)[:1])]).logits is None
