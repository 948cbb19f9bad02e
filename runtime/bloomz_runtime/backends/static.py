"""Static-shape BLOOM decode: rows in fixed slots of a preallocated key/value cache.

A graph (HPU graphs, CUDA graphs, ``torch.compile``) is only reused while every tensor shape and
address stays the same, so a decode step here has no Python-int offsets and no growing tensors:

- the cache of each layer is one preallocated 2-D tensor ``[slots * heads * max_length, head_dim]``
  (a view gives ``[slots, heads, max_length, head_dim]``); a step writes its new key and value with
  ``index_copy_`` at flat indices computed from the per-row position, a device tensor (as
  optimum-habana's BLOOM ``update()`` with ``token_idx``; the write is on the base tensor, not a
  view, which HPU graphs cannot capture);
- a step reads the first ``batch bucket`` slots and ``length bucket`` positions (power-of-two
  batches, lengths in multiples of a bucket), so its shapes depend on the bucket pair only;
- each row's keys start at position 0 of its slot (no left padding), so the ALiBi bias is the same
  for every row and a mask ``key position > row position`` blocks the rest; unused positions hold
  finite values that get zero weight.

Continuous batching stays: a joining row's prompt is prefilled by ``bloom_forward`` (prompt length
and, on graph devices, batch padded to buckets) and copied into a free slot; a leaving row frees
its slot; rows are moved down when the batch fits a smaller bucket.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import torch

from bloomz_runtime.kvcache import left_pad_prompts

if TYPE_CHECKING:
    from bloomz_runtime.backends.base import StepScores
    from bloomz_runtime.backends.bloom import BloomRunner


def bucket_length(length: int, bucket: int, limit: int | None = None) -> int:
    """Smallest multiple of ``bucket`` >= length (never beyond ``limit`` if it is larger than length)."""
    if length <= 0:
        return bucket
    padded = -(-length // bucket) * bucket
    if limit is not None and length <= limit < padded:
        return limit
    return padded


def batch_bucket(rows: int, limit: int | None = None) -> int:
    """Smallest power of two >= rows (capped at ``limit`` when rows fit under it)."""
    bucket = 1
    while bucket < rows:
        bucket *= 2
    if limit is not None and rows <= limit < bucket:
        return limit
    return bucket


@dataclass(frozen=True)
class SlotShape:
    """The preallocated cache of one layer: ``slots`` rows of ``length`` positions."""

    slots: int
    heads: int
    length: int
    head_dim: int

    def view(self, flat: torch.Tensor) -> torch.Tensor:
        return flat.view(self.slots, self.heads, self.length, self.head_dim)


def decode_step(
    model: Any,
    shape: SlotShape,
    keys: Sequence[torch.Tensor],
    values: Sequence[torch.Tensor],
    alibi: torch.Tensor,
    ids: torch.Tensor,
    pos: torch.Tensor,
    key_pos: torch.Tensor,
) -> torch.Tensor:
    """One decode step over the first ``len(ids)`` slots and ``len(key_pos)`` positions.

    ``ids`` [B] the rows' input tokens, ``pos`` [B] where each writes its key/value (its length so
    far), ``key_pos`` = arange(L) (its length is the length bucket), ``alibi`` the bucket's
    ``alibi_for`` (built outside: transformers builds it from host scalars, which a CUDA graph
    cannot capture). Returns the last hidden
    state [B, hidden] after ln_f. Same operations as ``bloom_forward``'s decode, so equal results.
    """
    tr = model.transformer
    batch, length = ids.shape[0], key_pos.shape[0]
    heads, head_dim = shape.heads, shape.head_dim
    hidden = tr.word_embeddings_layernorm(tr.word_embeddings(ids[:, None]))
    blocked = (key_pos[None, :] > pos[:, None])[:, None, None, :]
    mask = torch.zeros(blocked.shape, dtype=hidden.dtype, device=ids.device)
    mask = mask.masked_fill(blocked, torch.finfo(hidden.dtype).min)
    # Flat row of (slot b, head h, position pos[b]) in the [slots * heads * length, head_dim] cache.
    head_rows = torch.arange(batch * heads, device=ids.device) * shape.length
    # expand, not repeat_interleave: that one reads its output size back to the host (no capture).
    flat = head_rows + pos[:, None].expand(batch, heads).reshape(-1)
    for i, block in enumerate(tr.h):
        attn = block.self_attention
        post_ln_residual = block.apply_residual_connection_post_layernorm
        normed = block.input_layernorm(hidden)
        residual = normed if post_ln_residual else hidden
        fused = attn.query_key_value(normed).view(batch, 1, heads, 3, head_dim)
        query = fused[:, 0, :, 0, :]
        keys[i].index_copy_(0, flat, fused[:, 0, :, 1, :].reshape(batch * heads, head_dim))
        values[i].index_copy_(0, flat, fused[:, 0, :, 2, :].reshape(batch * heads, head_dim))
        key = shape.view(keys[i])[:batch, :, :length].reshape(batch * heads, length, head_dim)
        value = shape.view(values[i])[:batch, :, :length].reshape(batch * heads, length, head_dim)
        scores = alibi.baddbmm(
            batch1=query.reshape(batch * heads, 1, head_dim),
            batch2=key.transpose(-1, -2),
            beta=attn.beta,
            alpha=attn.inv_norm_factor,
        )
        weights = scores.view(batch, heads, 1, length) + mask
        probs = torch.softmax(weights, dim=-1, dtype=torch.float32).to(query.dtype)
        context = torch.bmm(probs.view(batch * heads, 1, length), value)
        context = context.view(batch, heads, 1, head_dim).permute(0, 2, 1, 3).reshape(batch, 1, -1)
        attention_output = residual + attn.dense(context)
        normed = block.post_attention_layernorm(attention_output)
        residual = normed if post_ln_residual else attention_output
        mlp = block.mlp
        hidden = residual + mlp.dense_4h_to_h(mlp.gelu_impl(mlp.dense_h_to_4h(normed)))
    return tr.ln_f(hidden[:, -1, :])


def alibi_for(model: Any, batch: int, length: int, dtype: torch.dtype, device: torch.device) -> torch.Tensor:
    """[batch * heads, 1, length] ALiBi bias of positions 0..length-1 (every row starts at 0), through
    the model's own ``build_alibi_tensor`` (DeepSpeed's tensor parallelism shards it there)."""
    tr = model.transformer
    ones = torch.ones((batch, length), dtype=torch.long, device=device)
    return tr.build_alibi_tensor(ones, tr.num_heads, dtype=dtype)


def decode_with_head(
    model: Any,
    shape: SlotShape,
    keys: Sequence[torch.Tensor],
    values: Sequence[torch.Tensor],
    alibi: torch.Tensor,
    ids: torch.Tensor,
    pos: torch.Tensor,
    key_pos: torch.Tensor,
) -> tuple[torch.Tensor, torch.Tensor]:
    """``decode_step`` plus the lm_head and the argmax, all on the device: (float32 logits, ids)."""
    last = decode_step(model, shape, keys, values, alibi, ids, pos, key_pos)
    logits = model.lm_head(last.unsqueeze(1))[:, -1, :].float()
    return logits, torch.argmax(logits, dim=-1)


# (ids, pos, key_pos) -> (logits [B, vocab] float32, greedy ids [B]), both on the device.
StepFn = Callable[[torch.Tensor, torch.Tensor, torch.Tensor], tuple[torch.Tensor, torch.Tensor]]


class SlotBatch:
    """The rows of a running batch in the slots of a preallocated cache, for ``BatchEngine``.

    ``graphs``: how a (batch bucket, length bucket) step runs after its first call: ``None`` eager
    (CPU), or a factory that captures one (``capture.py``: CUDA graphs, HPU graphs, torch.compile).
    """

    def __init__(
        self,
        runner: BloomRunner,
        slots: int,
        max_length: int,
        length_bucket: int,
        graphs: Callable[[StepFn, tuple[int, int]], StepFn] | None = None,
        pad_prefill_batch: bool = False,
    ) -> None:
        self.runner = runner
        attn = runner.model.transformer.h[0].self_attention
        slots = batch_bucket(slots)
        self.length_bucket = length_bucket
        self.shape = SlotShape(slots, attn.num_heads, bucket_length(max_length, length_bucket), attn.head_dim)
        flat = (slots * self.shape.heads * self.shape.length, self.shape.head_dim)
        layers = len(runner.model.transformer.h)
        dtype, device = runner.dtype, runner.device
        self.keys = [torch.zeros(flat, dtype=dtype, device=device) for _ in range(layers)]
        self.values = [torch.zeros(flat, dtype=dtype, device=device) for _ in range(layers)]
        self.graphs = graphs
        self.pad_prefill_batch = pad_prefill_batch
        self.steps: dict[tuple[int, int], StepFn] = {}
        self.key_positions: dict[int, torch.Tensor] = {}
        self.alibi: dict[tuple[int, int], torch.Tensor] = {}
        self.slot_of: dict[str, int] = {}
        # Keys written so far per slot (0: free).
        self.lengths = [0] * slots

    # --- rows joining and leaving --------------------------------------------------------------

    def admit(self, admit: Sequence[tuple[str, Sequence[int]]], logits: bool) -> StepScores:
        from bloomz_runtime.backends.bloom import bloom_forward

        runner = self.runner
        prompts = [list(ids) for _, ids in admit]
        longest = max(len(p) for p in prompts)
        if longest + 1 > self.shape.length:
            raise ValueError(
                f"a prompt of {longest} tokens leaves no room in a {self.shape.length}-position cache"
            )
        if len(self.slot_of) + len(admit) > self.shape.slots:
            raise RuntimeError(f"{len(self.slot_of) + len(admit)} rows for {self.shape.slots} slots")
        rows = len(prompts)
        if self.pad_prefill_batch:
            prompts += [[runner.pad_id]] * (batch_bucket(rows) - rows)
        ids, mask = left_pad_prompts(prompts, runner.pad_id, runner.prompt_length(longest))
        with torch.inference_mode():
            last, past = bloom_forward(runner.model, ids.to(runner.device), mask.to(runner.device), None)
            for r, (row, _) in enumerate(admit):
                slot = self.lengths.index(0)
                size = len(prompts[r])
                for layer, (k, v) in enumerate(past):
                    self.shape.view(self.keys[layer])[slot, :, :size] = k[r, :, k.shape[2] - size :]
                    self.shape.view(self.values[layer])[slot, :, :size] = v[r, :, v.shape[2] - size :]
                self.slot_of[row], self.lengths[slot] = slot, size
            scores = runner.head(last[:rows], logits)
            runner.after_forward()
        return scores

    def release(self, rows: Sequence[str]) -> None:
        for row in rows:
            self.lengths[self.slot_of.pop(row)] = 0
        self._compact()

    def _compact(self) -> None:
        """Move rows from the top slots into free lower ones until they fit the smallest bucket."""
        target = batch_bucket(len(self.slot_of))
        for row, slot in sorted(self.slot_of.items(), key=lambda item: -item[1]):
            if slot < target:
                break
            free = self.lengths.index(0)
            size = self.lengths[slot]
            with torch.inference_mode():
                for flat in (*self.keys, *self.values):
                    view = self.shape.view(flat)
                    view[free, :, :size] = view[slot, :, :size]
            self.slot_of[row], self.lengths[free], self.lengths[slot] = free, size, 0

    # --- one decode step ------------------------------------------------------------------------

    def plan(self, rows: Sequence[str], tokens: Sequence[int]) -> tuple[list[int], list[int], list[int], int]:
        """Host side of a step: (ids, positions per slot of the batch bucket, the rows' slots,
        length bucket). Pure bookkeeping, no tensors."""
        if len(tokens) != len(rows):
            raise RuntimeError(f"decode got {len(tokens)} tokens for {len(rows)} rows")
        order = [self.slot_of[row] for row in rows]
        batch = batch_bucket(max(order) + 1, self.shape.slots)
        ids = [self.runner.pad_id] * batch
        pos = [0] * batch
        for slot, token in zip(order, tokens, strict=True):
            if self.lengths[slot] >= self.shape.length:
                raise RuntimeError(f"slot {slot} is full ({self.shape.length} positions)")
            ids[slot], pos[slot] = token, self.lengths[slot]
        length = bucket_length(max(pos) + 1, self.length_bucket, self.shape.length)
        return ids, pos, order, length

    def decode(self, rows: Sequence[str], tokens: Sequence[int], logits: bool) -> StepScores:
        from bloomz_runtime.backends.base import StepScores

        ids, pos, order, length = self.plan(rows, tokens)
        runner = self.runner
        device = runner.device
        ids_t = torch.tensor(ids, dtype=torch.long).to(device)
        pos_t = torch.tensor(pos, dtype=torch.long).to(device)
        key_pos = self.key_positions.get(length)
        if key_pos is None:
            key_pos = self.key_positions[length] = torch.arange(length, device=device)
        alibi = self._alibi(len(ids), length)
        index = torch.tensor(order, dtype=torch.long)
        with torch.inference_mode():
            if self.graphs is None:
                model, shape = runner.model, self.shape
                last = decode_step(model, shape, self.keys, self.values, alibi, ids_t, pos_t, key_pos)
                scores = runner.head(last.index_select(0, index.to(device)), logits)
            else:
                step = self._step(len(ids), length)
                all_logits, greedy = step(ids_t, pos_t, key_pos)
                # Only the ids cross to the host; logits stay on the device for sampling rows.
                device_index = index.to(device)
                scores = StepScores(
                    greedy=greedy.index_select(0, device_index).cpu(),
                    logits=all_logits.index_select(0, device_index) if logits else None,
                )
            runner.after_forward()
        for slot in order:
            self.lengths[slot] += 1
        return scores

    def _step(self, batch: int, length: int) -> StepFn:
        key = (batch, length)
        step = self.steps.get(key)
        if step is None:
            assert self.graphs is not None
            model, shape, keys, values = self.runner.model, self.shape, self.keys, self.values
            alibi = self._alibi(batch, length)

            def run(
                ids: torch.Tensor, pos: torch.Tensor, key_pos: torch.Tensor
            ) -> tuple[torch.Tensor, torch.Tensor]:
                return decode_with_head(model, shape, keys, values, alibi, ids, pos, key_pos)

            step = self.steps[key] = self.graphs(run, key)
        return step

    def _alibi(self, batch: int, length: int) -> torch.Tensor:
        alibi = self.alibi.get((batch, length))
        if alibi is None:
            runner = self.runner
            with torch.inference_mode():
                alibi = alibi_for(runner.model, batch, length, runner.dtype, runner.device)
            self.alibi[(batch, length)] = alibi
        return alibi
