"""The batch every rank holds, and how one ``Step`` changes it (the same on all ranks).

Continuous batching: rows join (prefill) and leave (finished, cancelled) between decode steps.
Only tensors live here; requests, sampling and text belong to rank 0's coordinator.
"""

from __future__ import annotations

from typing import Any

import torch

from bloomz_runtime.backends.base import ModelRunner, StepScores
from bloomz_runtime.commands import Step
from bloomz_runtime.kvcache import concat_rows, left_pad_prompts, ones_column, select_rows
from bloomz_runtime.scheduler import fuses_prefill


class BatchEngine:
    def __init__(self, runner: ModelRunner, kv_cache: bool = True) -> None:
        self.runner = runner
        self.kv_cache = kv_cache
        self.rows: list[str] = []
        # The model's cache object (opaque); its tensors are edited through the runner.
        self.cache: Any = None
        self.mask = torch.zeros((0, 0), dtype=torch.long)
        # Without a KV cache every step re-reads the whole sequence, so keep the token ids.
        self.ids = torch.zeros((0, 0), dtype=torch.long)
        # Static decode: rows live in the fixed slots of a preallocated cache instead (backends/static.py).
        self.slots = runner.slot_batch() if kv_cache else None

    def apply(self, step: Step) -> StepScores | None:
        """Run one step; returns the last position's scores in row order (None if no rows)."""
        if step.drop:
            self._drop(step.drop)
        if step.decode and step.admit and self._can_fuse(step.admit):
            return self._fused(step.decode, step.admit, step.logits)
        parts: list[StepScores] = []
        if step.decode:
            parts.append(self._decode(step.decode, step.logits))
        if step.admit:
            parts.append(self._prefill(step.admit, step.logits))
        return StepScores.cat(parts) if parts else None

    def _drop(self, drop: tuple[str, ...]) -> None:
        gone = set(drop)
        keep = [i for i, row in enumerate(self.rows) if row not in gone]
        if self.slots is not None:
            self.slots.release([row for row in self.rows if row in gone])
        self.rows = [self.rows[i] for i in keep]
        if self.slots is not None:
            return
        if not self.rows:
            self.cache, self.mask, self.ids = None, self.mask[:0, :0], self.ids[:0, :0]
            return
        if self.kv_cache:
            kv, self.mask = select_rows(self.runner.cache_tensors(self.cache), self.mask, keep)
            self.runner.set_cache_tensors(self.cache, kv)
        else:
            index = torch.tensor(keep, dtype=torch.long)
            self.ids, self.mask = self.ids[index], self.mask[index]

    def _decode(self, tokens: tuple[int, ...], logits: bool) -> StepScores:
        if len(tokens) != len(self.rows):
            raise RuntimeError(f"decode got {len(tokens)} tokens for {len(self.rows)} rows")
        if self.slots is not None:
            return self.slots.decode(self.rows, tokens, logits)
        new = torch.tensor(tokens, dtype=torch.long).unsqueeze(1)
        self.mask = ones_column(self.mask)
        if self.kv_cache:
            scores, self.cache = self.runner.forward(new, self.mask, self.cache, logits=logits)
        else:
            self.ids = torch.cat([self.ids, new], dim=1)
            scores, _ = self.runner.forward(self.ids, self.mask, None, use_cache=False, logits=logits)
        return scores

    def _can_fuse(self, admit: tuple[tuple[str, tuple[int, ...]], ...]) -> bool:
        # Every rank decides the same from the same step (no flag travels with it). Graph-compiling
        # devices (static shapes) keep their separate prefill and decode shapes.
        if self.slots is not None or not self.kv_cache or self.cache is None:
            return False
        if self.runner.static_shapes:
            return False
        longest = self.runner.prompt_length(max(len(ids) for _, ids in admit))
        return fuses_prefill(len(self.rows), longest)

    def _fused(
        self, tokens: tuple[int, ...], admit: tuple[tuple[str, tuple[int, ...]], ...], logits: bool
    ) -> StepScores:
        """Decode the running rows and prefill the newcomers in one forward pass (one weight read).

        Each running row's token is left-padded to the newcomers' prompt length; the newcomers get
        masked-out cache positions for the running rows' past. Masked positions weigh exactly zero
        and ALiBi positions come from the mask, so every row computes what it would apart.
        """
        if len(tokens) != len(self.rows):
            raise RuntimeError(f"decode got {len(tokens)} tokens for {len(self.rows)} rows")
        prompts = [list(ids) for _, ids in admit]
        length = self.runner.prompt_length(max(len(p) for p in prompts))
        ids, new_mask = left_pad_prompts([[t] for t in tokens] + prompts, self.runner.pad_id, length)
        kv = self.runner.cache_tensors(self.cache)
        empty = [
            (k.new_zeros((len(admit), *k.shape[1:])), v.new_zeros((len(admit), *v.shape[1:]))) for k, v in kv
        ]
        empty_mask = self.mask.new_zeros((len(admit), self.mask.shape[1]))
        kv, past_mask = concat_rows(kv, self.mask, empty, empty_mask)
        self.runner.set_cache_tensors(self.cache, kv)
        self.mask = torch.cat([past_mask, new_mask], dim=1)
        scores, self.cache = self.runner.forward(ids, self.mask, self.cache, logits=logits)
        self._close_gaps(len(tokens), past_mask.shape[1])
        self.rows.extend(row for row, _ in admit)
        return scores

    def _close_gaps(self, running: int, past: int) -> None:
        """Drop the running rows' padding positions and the newcomers' empty past from the cache, as
        if they had joined apart: every later decode step would otherwise copy and attend over them."""
        kv, mask = self.runner.cache_tensors(self.cache), self.mask
        old_kv = [
            (
                torch.cat([k[:running, :, :past], k[:running, :, -1:]], dim=2),
                torch.cat([v[:running, :, :past], v[:running, :, -1:]], dim=2),
            )
            for k, v in kv
        ]
        old_mask = torch.cat([mask[:running, :past], mask[:running, -1:]], dim=1)
        new_kv = [(k[running:, :, past:], v[running:, :, past:]) for k, v in kv]
        kv, self.mask = concat_rows(old_kv, old_mask, new_kv, mask[running:, past:])
        self.runner.set_cache_tensors(self.cache, kv)

    def _prefill(self, admit: tuple[tuple[str, tuple[int, ...]], ...], logits: bool) -> StepScores:
        if self.slots is not None:
            scores: StepScores = self.slots.admit(admit, logits)
            self.rows.extend(row for row, _ in admit)
            return scores
        prompts = [list(ids) for _, ids in admit]
        length = self.runner.prompt_length(max(len(p) for p in prompts))
        ids, mask = left_pad_prompts(prompts, self.runner.pad_id, length)
        scores, cache = self.runner.forward(ids, mask, None, use_cache=self.kv_cache, logits=logits)
        if not self.rows:
            self.cache, self.mask = cache, mask
            if not self.kv_cache:
                self.ids = ids
        elif self.kv_cache:
            cache_tensors = self.runner.cache_tensors
            kv, self.mask = concat_rows(cache_tensors(self.cache), self.mask, cache_tensors(cache), mask)
            self.runner.set_cache_tensors(self.cache, kv)
        else:
            self.ids, self.mask = _concat_ids(self.ids, self.mask, ids, mask, self.runner.pad_id)
        self.rows.extend(row for row, _ in admit)
        return scores


def _concat_ids(
    a_ids: torch.Tensor, a_mask: torch.Tensor, b_ids: torch.Tensor, b_mask: torch.Tensor, pad_id: int
) -> tuple[torch.Tensor, torch.Tensor]:
    length = max(a_ids.shape[1], b_ids.shape[1])

    def pad(ids: torch.Tensor, mask: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        extra = length - ids.shape[1]
        return (
            torch.cat([ids.new_full((ids.shape[0], extra), pad_id), ids], dim=1),
            torch.cat([mask.new_zeros((mask.shape[0], extra)), mask], dim=1),
        )

    a_ids, a_mask = pad(a_ids, a_mask)
    b_ids, b_mask = pad(b_ids, b_mask)
    return torch.cat([a_ids, b_ids]), torch.cat([a_mask, b_mask])
