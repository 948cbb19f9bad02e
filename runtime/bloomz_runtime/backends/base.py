"""The small interface between the engine and a device: load a model, run one forward pass."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, ClassVar, Protocol

import torch
from bloomz_api.options import ServeOptions

from bloomz_runtime.dist import DistContext
from bloomz_runtime.kvcache import KV

DTYPES = {"bfloat16": torch.bfloat16, "float16": torch.float16, "float32": torch.float32}


def torch_dtype(name: str) -> torch.dtype:
    return DTYPES[name]


@dataclass(frozen=True)
class StepScores:
    """What one forward pass gives the token choice, per row of the batch.

    ``greedy`` (always, on the host): the argmax of the row's float32 logits. ``logits`` [B, vocab]
    float32, on the model's device (never copied to the host whole): only when the step asked for
    them (a row samples or penalizes repetition); greedy-only steps may skip the full projection
    (see ``greedy_head``).
    """

    greedy: torch.Tensor
    logits: torch.Tensor | None = None
    # Tokens the int8 screen left for float32 rescoring (None: no screen ran), for the metrics.
    rescored: int | None = None

    @staticmethod
    def from_logits(logits: torch.Tensor) -> StepScores:
        """The argmax is taken where the logits are; only the ids cross to the host."""
        return StepScores(greedy=torch.argmax(logits, dim=-1).cpu(), logits=logits)

    @staticmethod
    def cat(parts: list[StepScores]) -> StepScores:
        if len(parts) == 1:
            return parts[0]
        logits = [p.logits for p in parts]
        rescored = [p.rescored for p in parts if p.rescored is not None]
        return StepScores(
            greedy=torch.cat([p.greedy for p in parts]),
            logits=None if any(t is None for t in logits) else torch.cat(logits),  # type: ignore[arg-type]
            rescored=sum(rescored) if rescored else None,
        )


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
    # Graph-compiling devices keep fixed prefill and decode shapes (no fused prefill+decode step).
    static_shapes: ClassVar[bool] = False

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
        self,
        input_ids: torch.Tensor,
        attention_mask: torch.Tensor,
        cache: Any | None,
        use_cache: bool = True,
        logits: bool = True,
    ) -> tuple[StepScores, Any | None]:
        """Last-position scores (greedy ids; float32 logits on CPU unless ``logits`` is False and
        the runner has a cheaper way to the argmax) and the grown cache.

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
            projected = self.model.lm_head(hidden)[:, -1, :].float()
            self.after_forward()
        return StepScores.from_logits(projected), (cache if use_cache else None)

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

    def slot_batch(self) -> Any:
        """A ``static.SlotBatch`` when this runner decodes with static shapes, else None."""
        return None

    @property
    def greedy_head_name(self) -> str:
        """How greedy steps get their token (InfoResponse.greedy_head)."""
        return "full"

    @property
    def decode_weight_bytes(self) -> int:
        """Weight bytes a greedy decode step reads (the roofline's numerator): every parameter once,
        except an input embedding that is not the lm_head's matrix (a lookup reads one row)."""
        element = torch.empty((), dtype=self.dtype).element_size()
        read = self.parameters * element
        # The config says whether they are tied (DeepSpeed's sharded lm_head holds a new tensor either way).
        tied = bool(getattr(getattr(self.model, "config", None), "tie_word_embeddings", True))
        inputs = _embedding_weight(self.model, "input")
        if not tied and inputs is not None:
            read -= inputs.numel() * element
        return read


def _embedding_weight(model: Any, which: str) -> torch.Tensor | None:
    getter = getattr(model, f"get_{which}_embeddings", None)
    module = getter() if callable(getter) else None
    weight = getattr(module, "weight", None)
    return weight if isinstance(weight, torch.Tensor) else None


class Backend(Protocol):
    name: str

    def load(self, opts: ServeOptions, ctx: DistContext) -> ModelRunner: ...


def count_parameters(model: Any) -> int:
    return int(sum(p.numel() for p in model.parameters()))
