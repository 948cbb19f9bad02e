"""Batch bookkeeping for the key/value cache: left padding, joining and leaving rows.

Rows of a running batch have different lengths, so every row is left-padded to the longest one
and an attention mask marks the real tokens. BLOOM's ALiBi positions come from the mask's
cumulative sum, so padding (even between a row's tokens after two batches were joined) does not
change what a row computes. Tensors are [batch, heads, seq, head_dim]; only dims 0 and 2 are
touched here, so the same code serves sharded (tensor-parallel) caches.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch

KV = list[tuple[torch.Tensor, torch.Tensor]]


def left_pad_prompts(
    prompts: Sequence[Sequence[int]], pad_id: int, length: int | None = None
) -> tuple[torch.Tensor, torch.Tensor]:
    """Token ids [B, L] and mask [B, L] with each prompt right-aligned (left padding)."""
    longest = max(len(p) for p in prompts)
    length = longest if length is None else max(length, longest)
    ids = torch.full((len(prompts), length), pad_id, dtype=torch.long)
    mask = torch.zeros((len(prompts), length), dtype=torch.long)
    for row, prompt in enumerate(prompts):
        if prompt:
            ids[row, length - len(prompt) :] = torch.tensor(list(prompt), dtype=torch.long)
            mask[row, length - len(prompt) :] = 1
    return ids, mask


def _pad_seq(t: torch.Tensor, extra: int) -> torch.Tensor:
    if extra == 0:
        return t
    shape = list(t.shape)
    shape[2] = extra
    return torch.cat([t.new_zeros(shape), t], dim=2)


def left_pad(kv: KV, mask: torch.Tensor, length: int) -> tuple[KV, torch.Tensor]:
    """Grow the sequence dim to ``length`` by adding masked-out positions on the left."""
    extra = length - mask.shape[1]
    if extra <= 0:
        return kv, mask
    padded = [(_pad_seq(k, extra), _pad_seq(v, extra)) for k, v in kv]
    return padded, torch.cat([mask.new_zeros((mask.shape[0], extra)), mask], dim=1)


def concat_rows(a_kv: KV, a_mask: torch.Tensor, b_kv: KV, b_mask: torch.Tensor) -> tuple[KV, torch.Tensor]:
    """Rows of b appended after rows of a, both left-padded to the longer sequence."""
    length = max(a_mask.shape[1], b_mask.shape[1])
    a_kv, a_mask = left_pad(a_kv, a_mask, length)
    b_kv, b_mask = left_pad(b_kv, b_mask, length)
    kv = [(torch.cat([ak, bk]), torch.cat([av, bv])) for (ak, av), (bk, bv) in zip(a_kv, b_kv, strict=True)]
    return kv, torch.cat([a_mask, b_mask])


def select_rows(kv: KV, mask: torch.Tensor, keep: Sequence[int]) -> tuple[KV, torch.Tensor]:
    """Keep only the given rows (in that order), then drop columns no remaining row uses."""
    index = torch.tensor(list(keep), dtype=torch.long, device=mask.device)
    kv = [(k.index_select(0, index.to(k.device)), v.index_select(0, index.to(v.device))) for k, v in kv]
    return trim_left(kv, mask.index_select(0, index))


def trim_left(kv: KV, mask: torch.Tensor) -> tuple[KV, torch.Tensor]:
    """Remove leading columns that are padding in every row (they only cost attention time)."""
    if mask.shape[0] == 0:
        return kv, mask
    used = mask.any(dim=0).nonzero()
    first = int(used[0]) if used.numel() else mask.shape[1]
    if first == 0:
        return kv, mask
    return [(k[:, :, first:], v[:, :, first:]) for k, v in kv], mask[:, first:]


def ones_column(mask: torch.Tensor) -> torch.Tensor:
    """The mask after one new real token per row."""
    return torch.cat([mask, mask.new_ones((mask.shape[0], 1))], dim=1)
