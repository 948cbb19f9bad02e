"""The small interface between the engine and a device: load a model, run one forward pass."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Protocol

import torch

from bloomz_runtime.dist import DistContext
from bloomz_runtime.kvcache import KV
from bloomz_runtime.options import ServeOptions

DTYPES = {"bfloat16": torch.bfloat16, "float16": torch.float16, "float32": torch.float32}


def torch_dtype(name: str) -> torch.dtype:
    return DTYPES[name]


@dataclass
class ModelRunner:
    """A loaded (possibly sharded) causal LM and what the engine needs to drive it.

    ``forward`` computes logits for the last position only: a BLOOM vocabulary has 250880 entries,
    so projecting every prompt position would cost more than the rest of a short prefill.
    """

    model: Any
    tokenizer: Any
    device: torch.device
    dtype: torch.dtype
    backend: str
    parameters: int = 0
    versions: dict[str, str] = field(default_factory=dict)

    @property
    def pad_id(self) -> int:
        pad = self.tokenizer.pad_token_id
        return int(pad if pad is not None else self.tokenizer.eos_token_id or 0)

    @property
    def eos_id(self) -> int | None:
        eos = self.tokenizer.eos_token_id
        return None if eos is None else int(eos)

    def prompt_length(self, longest: int) -> int:
        """Length a batch of prompts is padded to before prefill (static-shape devices bucket it)."""
        return longest

    def forward(
        self, input_ids: torch.Tensor, attention_mask: torch.Tensor, cache: Any | None, use_cache: bool = True
    ) -> tuple[torch.Tensor, Any | None]:
        """Last-position logits [B, vocab] in float32 (on CPU) and the grown cache.

        ``cache`` is the object the previous call returned (None to start); the engine edits its
        tensors through ``cache_tensors`` / ``set_cache_tensors`` and passes it back. It is kept
        across steps because building a transformers cache object costs more than a tiny
        model's whole decode step.
        """
        if use_cache and cache is None:
            from transformers import DynamicCache

            cache = DynamicCache()
        with torch.inference_mode():
            out = self.model.transformer(
                input_ids=input_ids.to(self.device),
                attention_mask=attention_mask.to(self.device),
                past_key_values=cache if use_cache else None,
                use_cache=use_cache,
                return_dict=True,
            )
            hidden = out.last_hidden_state[:, -1:, :]
            logits = self.model.lm_head(hidden)[:, -1, :].float()
            self.after_forward()
        return logits.cpu(), (cache if use_cache else None)

    @staticmethod
    def cache_tensors(cache: Any) -> KV:
        """(keys, values) per layer, [batch, heads, seq, head_dim]."""
        return [(layer.keys, layer.values) for layer in cache.layers]

    @staticmethod
    def set_cache_tensors(cache: Any, kv: KV) -> None:
        for layer, (keys, values) in zip(cache.layers, kv, strict=True):
            layer.keys, layer.values = keys, values

    def after_forward(self) -> None:
        """Hook for lazy-mode devices (HPU: mark_step)."""


class Backend(Protocol):
    name: str

    def load(self, opts: ServeOptions, ctx: DistContext) -> ModelRunner: ...


def count_parameters(model: Any) -> int:
    return int(sum(p.numel() for p in model.parameters()))
