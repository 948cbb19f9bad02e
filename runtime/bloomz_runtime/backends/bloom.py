"""A lean BLOOM forward pass over the model's own modules, for serving.

transformers' BLOOM forward builds cache objects, 4D masks and per-layer wrappers on every call;
at batch 1 that Python work is a large share of a decode step. This pass calls the same
sub-modules (so DeepSpeed's tensor-parallel Linear replacements still all-reduce) with the same
operations in the same order, so its hidden states equal transformers' exactly (tests compare
them, and greedy token ids end to end), and keeps the key/value cache as plain tensors the
engine can edit.
"""

from __future__ import annotations

import threading
from typing import Any

import torch
import torch.nn.functional as F
from bloomz_api.options import ServeOptions

from bloomz_runtime.backends.base import ModelRunner, StepScores
from bloomz_runtime.backends.greedy_head import ScreenedGreedyHead
from bloomz_runtime.backends.sharded_head import ShardedScreenedGreedyHead
from bloomz_runtime.kvcache import KV


def supports_lean_forward(model: Any) -> bool:
    """Only plain BLOOM; the slow-but-exact tensor-parallel emulation has its own arithmetic."""
    config = getattr(model, "config", None)
    if getattr(config, "model_type", None) != "bloom":
        return False
    return not (getattr(config, "pretraining_tp", 1) > 1 and getattr(config, "slow_but_exact", False))


def causal_padding_mask(
    attention_mask: torch.Tensor, query_length: int, dtype: torch.dtype, query_start: int | None = None
) -> torch.Tensor:
    """[B, 1, q, K] additive mask: 0 where a query may look, the dtype's minimum elsewhere.

    The same values transformers' eager BLOOM attention adds: keys after the query's position and
    padding keys are blocked. Queries are the ``query_length`` positions from ``query_start``
    (default: the last ones; static shapes put unused key positions after them).
    """
    keys = attention_mask.shape[1]
    start = keys - query_length if query_start is None else query_start
    query_pos = torch.arange(start, start + query_length, device=attention_mask.device)
    key_pos = torch.arange(keys, device=attention_mask.device)
    blocked = (key_pos[None, :] > query_pos[:, None])[None, None, :, :]
    blocked = blocked | (attention_mask[:, None, None, :] == 0)
    mask = torch.zeros(blocked.shape, dtype=dtype, device=attention_mask.device)
    return mask.masked_fill(blocked, torch.finfo(dtype).min)


class GrowingCache:
    """Keys and values per layer in buffers with room to spare.

    A decode step writes its new position in place instead of copying the whole cache with
    torch.cat (at batch 16 that copy is a large share of the memory traffic of a step). Buffers
    grow by ``chunk`` positions when full; rows joining or leaving rebuild them (``load``).
    Unused positions are zeros, so attending over the whole buffer (static shapes: the same
    shape for ``chunk`` steps) only adds masked, zero-weight columns.
    """

    CHUNK = 64

    def __init__(self, kv: KV, chunk: int = CHUNK) -> None:
        self.chunk = chunk
        self.keys: list[torch.Tensor] = []
        self.values: list[torch.Tensor] = []
        self.length = 0
        self.load(kv)

    def load(self, kv: KV) -> None:
        self.length = kv[0][0].shape[2] if kv else 0
        self.keys, self.values = [], []
        for k, v in kv:
            self.keys.append(self._room(k, self.length + 1))
            self.values.append(self._room(v, self.length + 1))

    def _room(self, t: torch.Tensor, needed: int) -> torch.Tensor:
        capacity = -(-needed // self.chunk) * self.chunk
        shape = list(t.shape)
        shape[2] = capacity
        buffer = t.new_zeros(shape)
        buffer[:, :, : t.shape[2]] = t
        return buffer

    def reserve(self, new_positions: int) -> None:
        needed = self.length + new_positions
        if self.keys and needed > self.keys[0].shape[2]:
            self.keys = [self._room(k[:, :, : self.length], needed) for k in self.keys]
            self.values = [self._room(v[:, :, : self.length], needed) for v in self.values]

    @property
    def capacity(self) -> int:
        return self.keys[0].shape[2] if self.keys else 0

    def append(
        self, layer: int, key: torch.Tensor, value: torch.Tensor, whole_buffer: bool = False
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """Write the new positions of one layer; the layer's keys and values so far (views), or
        the whole buffers with ``whole_buffer`` (static shapes)."""
        end = self.length + key.shape[2]
        self.keys[layer][:, :, self.length : end] = key
        self.values[layer][:, :, self.length : end] = value
        if whole_buffer:
            return self.keys[layer], self.values[layer]
        return self.keys[layer][:, :, :end], self.values[layer][:, :, :end]

    def tensors(self) -> KV:
        return [
            (k[:, :, : self.length], v[:, :, : self.length])
            for k, v in zip(self.keys, self.values, strict=True)
        ]


def bloom_forward(
    model: Any,
    input_ids: torch.Tensor,
    attention_mask: torch.Tensor,
    past: GrowingCache | None,
    static_shapes: bool = False,
) -> tuple[torch.Tensor, KV]:
    """Hidden state of the last position [B, hidden] after ln_f, and this call's keys/values.

    With ``past``, the new positions are appended to it in place (and the returned list is
    empty); without, the prompt's keys and values are returned for a new cache. With
    ``static_shapes`` (and ``past``), attention runs over the cache's whole buffer:
    ``attention_mask`` must then cover ``past.capacity`` positions (zeros after the real ones).
    """
    tr = model.transformer
    hidden = tr.word_embeddings_layernorm(tr.word_embeddings(input_ids))
    batch, q_len, _ = hidden.shape
    query_start = None
    if past is not None:
        past.reserve(q_len)
        if static_shapes:
            query_start = past.length
    alibi = tr.build_alibi_tensor(attention_mask, tr.num_heads, dtype=hidden.dtype)
    mask = causal_padding_mask(attention_mask, q_len, hidden.dtype, query_start)
    new_past: KV = []
    for i, block in enumerate(tr.h):
        attn = block.self_attention
        post_ln_residual = block.apply_residual_connection_post_layernorm
        normed = block.input_layernorm(hidden)
        residual = normed if post_ln_residual else hidden
        heads, head_dim = attn.num_heads, attn.head_dim
        fused = attn.query_key_value(normed).view(batch, q_len, heads, 3, head_dim)
        query = fused[..., 0, :].transpose(1, 2)
        key = fused[..., 1, :].transpose(1, 2)
        value = fused[..., 2, :].transpose(1, 2)
        if past is not None:
            key, value = past.append(i, key, value, whole_buffer=static_shapes)
        else:
            new_past.append((key, value))
        kv_len = key.shape[2]
        scores = alibi.baddbmm(
            batch1=query.reshape(batch * heads, q_len, head_dim),
            batch2=key.reshape(batch * heads, kv_len, head_dim).transpose(-1, -2),
            beta=attn.beta,
            alpha=attn.inv_norm_factor,
        )
        weights = scores.view(batch, heads, q_len, kv_len) + mask[:, :, :, :kv_len]
        probs = F.softmax(weights, dim=-1, dtype=torch.float32).to(query.dtype)
        context = torch.bmm(
            probs.view(batch * heads, q_len, kv_len), value.reshape(batch * heads, kv_len, head_dim)
        )
        context = context.view(batch, heads, q_len, head_dim).permute(0, 2, 1, 3).reshape(batch, q_len, -1)
        attention_output = residual + attn.dense(context)
        normed = block.post_attention_layernorm(attention_output)
        residual = normed if post_ln_residual else attention_output
        mlp = block.mlp
        hidden = residual + mlp.dense_4h_to_h(mlp.gelu_impl(mlp.dense_h_to_4h(normed)))
    if past is not None:
        past.length += q_len
    return tr.ln_f(hidden[:, -1, :]), new_past


class BloomRunner(ModelRunner):
    """ModelRunner over ``bloom_forward``; its cache is a ``GrowingCache``.

    ``static_shapes`` (graph-compiling devices): decode steps attend over the whole cache buffer,
    so their shapes change only every ``cache_chunk`` tokens and compiled graphs are reused.
    """

    cache_chunk: int = GrowingCache.CHUNK
    # Exact greedy ids without the full float32 projection (CPU, float32); None: always project.
    greedy_head: ScreenedGreedyHead | ShardedScreenedGreedyHead | None = None
    # The thread building greedy_head after loading (screen_store.py), None when there is none.
    screen_builder: threading.Thread | None = None
    # Static decode (static.py): rows in the slots of a cache preallocated for this many rows and
    # positions (the backend sets them from --max-batch-size and the token limits).
    static_decode: bool = False
    slot_rows: int = 8
    slot_length: int = 3072

    def forward(
        self,
        input_ids: torch.Tensor,
        attention_mask: torch.Tensor,
        cache: Any | None,
        use_cache: bool = True,
        logits: bool = True,
    ) -> tuple[StepScores, Any | None]:
        with torch.inference_mode():
            mask = attention_mask.to(self.device)
            past = cache if use_cache else None
            static = self.static_shapes and past is not None
            if static:
                assert past is not None
                past.reserve(input_ids.shape[1])
                mask = F.pad(mask, (0, past.capacity - mask.shape[1]))
            last, new_past = bloom_forward(self.model, input_ids.to(self.device), mask, past, static)
            scores = self.head(last, logits)
            self.after_forward()
        if not use_cache:
            return scores, None
        return scores, (past if past is not None else GrowingCache(new_past, self.cache_chunk))

    def head(self, last: torch.Tensor, logits: bool) -> StepScores:
        """Scores of the last hidden states [B, hidden]: the greedy ids come to the host, the float32
        logits (when asked for) stay on the device."""
        if not logits and self.greedy_head is not None:
            tokens = self.greedy_head.argmax(last)
            return StepScores(greedy=tokens, rescored=self.greedy_head.last_rescored)
        # [B, 1, hidden]: DeepSpeed's tensor-parallel lm_head slices the last dim of a 3D input.
        projected = self.model.lm_head(last.unsqueeze(1))[:, -1, :].float()
        return StepScores.from_logits(projected)

    def slot_batch(self) -> Any:
        """With ``static_decode``, the engine keeps its rows in a ``SlotBatch`` (static.py)."""
        if not self.static_decode:
            return None
        from bloomz_runtime.backends.static import SlotBatch

        batch = SlotBatch(
            self,
            slots=self.slot_rows,
            max_length=self.slot_length,
            length_bucket=self.cache_chunk,
            pad_prefill_batch=self.static_shapes,
        )
        batch.graphs = self.step_graphs(batch.shape)
        return batch

    def step_graphs(self, shape: Any) -> Any:
        """How static decode steps run per bucket pair (None: eagerly); graph devices override it."""
        return None

    def configure_static_decode(self, opts: ServeOptions) -> None:
        """Slots for every row a batch may hold, positions for the longest prompt plus its new tokens."""
        self.static_decode = opts.uses_static_decode
        self.slot_rows = opts.max_batch_size
        self.slot_length = opts.max_input_tokens + opts.max_new_tokens

    @property
    def greedy_head_name(self) -> str:
        return "int8-screened" if self.greedy_head is not None else "full"

    @property
    def decode_weight_bytes(self) -> int:
        full = super().decode_weight_bytes
        if self.greedy_head is None:
            return full
        # The screen is read instead of the lm_head matrix (the rescored rows are a few KiB).
        return full - self.greedy_head.replaced_bytes + self.greedy_head.bytes

    @staticmethod
    def cache_tensors(cache: Any) -> KV:
        return list(cache.tensors())

    @staticmethod
    def set_cache_tensors(cache: Any, kv: KV) -> None:
        cache.load(kv)
