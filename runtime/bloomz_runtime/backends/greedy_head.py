"""Exact greedy decoding at a fraction of the lm_head's memory traffic (CPU, float32 models).

A BLOOM lm_head is a [250880, hidden] matrix: at batch 1 reading it is almost half of a decode
step's memory traffic, and at batch 16 its float32 matmul is almost half of the step's time.
Greedy decoding only needs the argmax of the logits, so the head is computed in three moves:

1. screen: logits from an int8 copy of the matrix (per-row scales) times the hidden state split
   into two int8 levels (coarse + residual), with oneDNN's u8 x s8 matmul and float32 output:
   a quarter of the bytes, and the integer products are exact;
2. bound: |screened - float32 logit| is bounded rigorously per row from the known quantization
   errors (Cauchy-Schwarz on their norms) plus float32 rounding of both computations;
3. rescore: every token whose screened logit is within twice the bound of the best one is
   computed again in float32 from the original weights, and the argmax is taken over those.

The float32 argmax is always among the rescored tokens, so the result is the float32 argmax
(if the bound ever admits too many tokens, the step falls back to the full float32 head). Only
greedy rows use this: sampling needs every logit exactly.
"""

from __future__ import annotations

import math
import os
from collections.abc import MutableMapping
from dataclasses import dataclass
from typing import Any

import torch
import torch.nn.functional as F

# oneDNN's int8 kernel is much slower for 1-3 rows than for 4 (a different code path).
MIN_ROWS = 4
# Residual level: the coarse level's rounding error (|r| <= scale / 2) times 2**7 fits in int8.
RESIDUAL_SHIFT = 2.0**7
ZERO_POINT = 128  # uint8 activations centred at 128: signed values in [-127, 127]
# A coarse-only screen (batches of 3 rows and more) is kept when it leaves at most this many tokens to
# rescore (their float32 rows are 16 MiB at hidden 1024: a few ms against ~8 ms for the residual level).
SINGLE_LEVEL_MAX_CANDIDATES = 4096
# Fall back to the full float32 head when more than this share of the vocabulary needs rescoring.
MAX_RESCORE_SHARE = 1 / 16
# Covers float32 rounding in the scale/residual arithmetic on top of the analysed terms.
SAFETY = 1.01


def can_screen() -> bool:
    """oneDNN's quantized linear ops are in every x86 torch build we ship (private ops, so check)."""
    onednn = getattr(torch.ops, "onednn", None)
    return (
        torch.backends.mkldnn.is_available()
        and onednn is not None
        and hasattr(onednn, "qlinear_prepack")
        and hasattr(onednn, "qlinear_pointwise")
    )


def screen_pays_off() -> bool:
    """Without AVX-512 oneDNN's int8 kernels for a few rows are slower than the float32 head."""
    return torch.backends.cpu.get_cpu_capability() in ("AVX512", "AMX")


# oneDNN's AMX int8 kernel for a few rows reads the matrix at about half the speed of its AVX-512
# VNNI kernel on the machines we measured (4 and 32 rows of a 250880 x 1024 head: 27-31 and 39-43
# ms against 13-16 and 24-34 ms), so a process that screens caps oneDNN at VNNI. float32 matmuls
# use the same AVX-512 kernels either way; only int8 and bfloat16 ones would use AMX.
ONEDNN_ISA_ENV = "ONEDNN_MAX_CPU_ISA"
SCREEN_ISA = "AVX512_CORE_VNNI"


def cap_onednn_isa(environ: MutableMapping[str, str] = os.environ) -> bool:
    """Cap oneDNN at SCREEN_ISA unless a cap is set already (an operator's choice wins).

    oneDNN reads the cap once, at its first kernel: call this before anything runs a oneDNN op.
    """
    if ONEDNN_ISA_ENV in environ or "DNNL_MAX_CPU_ISA" in environ:
        return False
    environ[ONEDNN_ISA_ENV] = SCREEN_ISA
    return True


def power_of_two_scale(largest: float, levels: int = 127) -> float:
    """The smallest power of two s with largest / s <= levels (exact in float32 arithmetic)."""
    if largest <= 0 or not math.isfinite(largest):
        return 1.0
    return 2.0 ** math.ceil(math.log2(largest / levels))


@dataclass(frozen=True)
class QuantizedActivations:
    """hidden ~= scale * (coarse + residual / RESIDUAL_SHIFT) with int8 levels stored as uint8 + 128.

    The residual level (the coarse level's rounding error, 2**7 times finer) is worth its rows
    only for a batch of one or two, which oneDNN pads to MIN_ROWS rows anyway.
    """

    coarse: torch.Tensor  # [B, H] uint8
    residual: torch.Tensor | None  # [B, H] uint8
    scale: float
    error_norms: torch.Tensor  # [B] float64: ||hidden - represented||_2 per row


def quantize_activations(hidden: torch.Tensor, residual_level: bool) -> QuantizedActivations:
    """float32 rows -> one or two int8 levels sharing one power-of-two scale (per tensor)."""
    scale = power_of_two_scale(float(hidden.abs().max()))
    coarse = torch.round(hidden / scale).clamp_(-127, 127)
    represented = coarse.double() * scale
    residual = None
    if residual_level:
        residual = torch.round((hidden - coarse * scale) * (RESIDUAL_SHIFT / scale)).clamp_(-127, 127)
        represented += residual.double() * (scale / RESIDUAL_SHIFT)
    error = torch.linalg.vector_norm(hidden.double() - represented, dim=1)
    return QuantizedActivations(
        coarse=(coarse + ZERO_POINT).to(torch.uint8),
        residual=None if residual is None else (residual + ZERO_POINT).to(torch.uint8),
        scale=scale,
        error_norms=error,
    )


@dataclass(frozen=True)
class WeightNorms:
    """Largest row norms of the int8 matrix, of its quantization error and of the float32 matrix."""

    quantized: float
    error: float
    original: float


def screening_bound(
    hidden_norms: torch.Tensor,
    activation_error_norms: torch.Tensor,
    screened_abs_max: torch.Tensor,
    weights: WeightNorms,
    hidden_size: int,
) -> torch.Tensor:
    """Per row b, an upper bound on |screened_bj - float32_bj| for every token j.

    screened - exact = (Wq - W) h + Wq (h_q - h) + rounding, so by Cauchy-Schwarz
    |.| <= ||Wq_j - W_j|| ||h|| + ||Wq_j|| ||h_q - h|| + rounding. The float32 logit itself carries
    at most hidden_size * 2**-24 * sum_i |W_ji h_i| <= hidden_size * 2**-24 * ||W_j|| ||h|| of
    rounding (counted twice: the full head and the rescoring may round differently); the
    screened value's float32 scaling and sum add a few ulps of its own magnitude.
    """
    h = hidden_norms.double()
    rounding = 2 * hidden_size * 2.0**-24 * weights.original * h
    ulps = 2.0**-20 * (screened_abs_max.double() + weights.quantized * h)
    total = weights.error * h + weights.quantized * activation_error_norms.double() + rounding + ulps
    return total * SAFETY


def candidate_thresholds(screened: torch.Tensor, bound: torch.Tensor, row_max: torch.Tensor) -> torch.Tensor:
    """[B, 1]: a token may hold its row's float32 maximum only if its screened logit reaches this.

    With |screened - exact| <= bound: exact[best] >= exact[k] >= screened[k] - bound for every k,
    and screened[best] >= exact[best] - bound, so screened[best] >= max(screened) - 2 * bound.
    """
    return (row_max.double() - 2 * bound).to(screened.dtype).unsqueeze(1)


# Rows quantized per chunk at start-up: small temporaries stay in the allocator's reach (no page
# faults on every pass) and in cache.
_BUILD_CHUNK = 1024


def quantize_weight(weight: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, WeightNorms]:
    """int8 rows with per-row scales (symmetric) and the row norms the bound needs."""
    vocab = weight.shape[0]
    int8 = torch.empty(weight.shape, dtype=torch.int8)
    scales = torch.empty(vocab, dtype=torch.float32)
    error_norms = torch.empty(vocab, dtype=torch.float32)
    original_norms = torch.empty(vocab, dtype=torch.float32)
    for start in range(0, vocab, _BUILD_CHUNK):
        end = min(start + _BUILD_CHUNK, vocab)
        rows = weight[start:end].detach()
        scale = rows.abs().amax(dim=1).div_(127)
        scale = torch.where(scale > 0, scale, torch.ones_like(scale))
        q = torch.div(rows, scale[:, None]).round_().clamp_(-127, 127)
        int8[start:end] = q
        scales[start:end] = scale
        original_norms[start:end] = torch.linalg.vector_norm(rows, dim=1)
        error_norms[start:end] = torch.linalg.vector_norm(q.mul_(scale[:, None]).sub_(rows), dim=1)
    # float32 norms are within a few ulps of the exact ones (SAFETY covers that); ||Wq_j|| is at
    # most ||W_j|| + ||Wq_j - W_j||.
    error, original = float(error_norms.max()), float(original_norms.max())
    return int8, scales, WeightNorms(quantized=original + error, error=error, original=original)


class ScreenedGreedyHead:
    """argmax(hidden @ weight.T) for float32 ``weight`` [V, H], reading int8 instead of float32."""

    def __init__(self, weight: torch.Tensor, parts: Any = None) -> None:
        """``parts``: a ``screen_store.ScreenParts`` built (or stored) earlier for this ``weight``."""
        if weight.dtype != torch.float32 or weight.dim() != 2:
            raise ValueError("ScreenedGreedyHead needs a 2-D float32 weight")
        self.weight = weight  # the original: rescoring reads a few rows of it
        self.vocab, self.hidden_size = weight.shape
        with torch.no_grad():
            if parts is None:
                int8, self.scales, self.norms = quantize_weight(weight)
            else:
                int8, self.scales, self.norms = parts.int8, parts.scales, parts.norms
            self.packed = torch.ops.onednn.qlinear_prepack(int8, None)
        self.zero_points = torch.zeros(self.vocab, dtype=torch.long)
        self.max_rescored = max(1, int(self.vocab * MAX_RESCORE_SHARE))
        self.fallbacks = 0  # steps that needed the full float32 head
        self.last_rescored = 0  # tokens rescored in float32 by the last call (union over rows)
        self.single_level = False  # whether the last call's screen was the coarse level alone

    @property
    def bytes(self) -> int:
        """Memory the screen adds and reads per step (the int8 matrix and its scales)."""
        return self.vocab * self.hidden_size + self.scales.numel() * 4

    @property
    def replaced_bytes(self) -> int:
        """The float32 matrix a greedy step no longer reads."""
        return self.weight.numel() * self.weight.element_size()

    def screen(
        self, hidden: torch.Tensor, residual_level: bool = True
    ) -> tuple[torch.Tensor, QuantizedActivations]:
        """Screened logits [B, V] float32 from one oneDNN matmul of at least MIN_ROWS rows."""
        rows = hidden.shape[0]
        levels = quantize_activations(hidden, residual_level=residual_level)
        parts = [levels.coarse] if levels.residual is None else [levels.coarse, levels.residual]
        used = rows * len(parts)
        if used < MIN_ROWS:
            parts.append(levels.coarse.new_full((MIN_ROWS - used, self.hidden_size), ZERO_POINT))
        out = torch.ops.onednn.qlinear_pointwise(
            torch.cat(parts) if len(parts) > 1 else parts[0], levels.scale, ZERO_POINT, self.packed,
            self.scales, self.zero_points, None, 1.0, 0, torch.float32, "none", [], "",
        )  # fmt: skip
        if levels.residual is None:
            return out[:rows], levels
        return torch.add(out[:rows], out[rows : 2 * rows], alpha=1 / RESIDUAL_SHIFT), levels

    def candidates(self, hidden: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """(screened logits [B, V], per-row thresholds [B, 1], tokens any row may pick [T] ascending).

        Up to MIN_ROWS / 2 rows both levels fit in the matmul's minimum rows for free; beyond, the
        coarse level alone is tried first (half the rows: 16 greedy rows of the 560m head took
        23-24 against 35-36 ms here) and both levels only when its looser bound leaves too many candidates
        (hidden states with outlier dimensions)."""
        if 2 * hidden.shape[0] > MIN_ROWS:
            screened, thresholds, tokens = self._select(hidden, *self.screen(hidden, residual_level=False))
            self.single_level = tokens.numel() <= min(SINGLE_LEVEL_MAX_CANDIDATES, self.max_rescored)
            if self.single_level:
                return screened, thresholds, tokens
        else:
            self.single_level = False
        return self._select(hidden, *self.screen(hidden, residual_level=True))

    def _select(
        self, hidden: torch.Tensor, screened: torch.Tensor, levels: QuantizedActivations
    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        # (amax and amin are each several times faster than aminmax or max on these shapes.)
        high, low = screened.amax(dim=1), screened.amin(dim=1)
        bound = screening_bound(
            torch.linalg.vector_norm(hidden.double(), dim=1),
            levels.error_norms,
            torch.maximum(low.abs(), high.abs()),
            self.norms,
            self.hidden_size,
        )
        thresholds = candidate_thresholds(screened, bound, high)
        # A token is a candidate if it reaches the threshold of any row.
        reach = screened.sub(thresholds).amax(dim=0) if screened.shape[0] > 1 else screened[0] - thresholds[0]
        tokens = (reach >= 0).nonzero().squeeze(1)
        return screened, thresholds, tokens

    def argmax(self, hidden: torch.Tensor) -> torch.Tensor:
        """[B] token ids: the argmax of the float32 logits of ``hidden`` [B, H] float32."""
        hidden = hidden.contiguous()
        screened, thresholds, tokens = self.candidates(hidden)
        self.last_rescored = int(tokens.numel())
        if tokens.numel() > self.max_rescored:
            self.fallbacks += 1
            return torch.argmax(F.linear(hidden, self.weight), dim=1)
        exact = F.linear(hidden, self.weight.index_select(0, tokens))
        exact = exact.masked_fill(screened[:, tokens] < thresholds, float("-inf"))
        # tokens are ascending, so ties resolve to the lowest id, as torch.argmax does on all logits.
        return tokens[torch.argmax(exact, dim=1)]
