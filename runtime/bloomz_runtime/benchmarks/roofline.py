"""The memory roofline of batch-1 decoding: every new token reads every weight once.

lowest time per token = weight bytes / memory read bandwidth. The bandwidth is measured on this
machine in the same run (a large array read); the weight bytes come from the checkpoint's
safetensors headers (parameter count x the element size of the dtype being served).
"""

from __future__ import annotations

import json
import math
import struct
import time
from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import Any

DTYPE_BYTES = {"float32": 4, "float16": 2, "bfloat16": 2, "F32": 4, "F16": 2, "BF16": 2, "F64": 8, "I64": 8}


def read_safetensors_header(path: Path) -> dict[str, Any]:
    """The JSON header of a .safetensors file: 8-byte little-endian length, then the JSON."""
    with path.open("rb") as handle:
        (length,) = struct.unpack("<Q", handle.read(8))
        header: dict[str, Any] = json.loads(handle.read(length))
    return header


def parameter_count(headers: Iterable[Mapping[str, Any]]) -> int:
    """Number of weights described by safetensors headers (the metadata entry is not a tensor)."""
    total = 0
    for header in headers:
        for name, entry in header.items():
            if name == "__metadata__":
                continue
            total += math.prod(entry["shape"])
    return total


def parameters_read_per_token(headers: Iterable[Mapping[str, Any]]) -> int:
    """Weights a decode step reads: all of them, except an untied input embedding matrix, of which
    only one row per token is read (a tied one is read whole by the output projection anyway)."""
    headers = list(headers)
    total = parameter_count(headers)
    names = {name for header in headers for name in header}
    if "lm_head.weight" in names:
        for header in headers:
            for name, entry in header.items():
                if name.endswith("word_embeddings.weight"):
                    total -= math.prod(entry["shape"]) - entry["shape"][-1]
    return total


def checkpoint_headers(model_dir: Path) -> list[dict[str, Any]]:
    files = sorted(model_dir.glob("*.safetensors"))
    if not files:
        raise FileNotFoundError(f"no .safetensors weights in {model_dir}")
    return [read_safetensors_header(path) for path in files]


def weight_bytes(parameters: int, dtype: str) -> int:
    return parameters * DTYPE_BYTES[dtype]


def roofline_ms_per_token(weight_bytes_: int, bandwidth_bytes_per_s: float, cards: int = 1) -> float:
    """Lowest possible decode time per token when `cards` devices each read their share of weights."""
    if bandwidth_bytes_per_s <= 0 or cards < 1:
        raise ValueError("bandwidth must be positive and cards at least 1")
    return weight_bytes_ / (cards * bandwidth_bytes_per_s) * 1000.0


def roofline_fraction(roofline_ms: float, measured_ms: float) -> float:
    """How close a measured time per token comes to the roofline (1.0 = at the limit)."""
    return roofline_ms / measured_ms if measured_ms > 0 else 0.0


def measure_read_bandwidth(size_bytes: int = 1 << 30, repeats: int = 7) -> float:
    """Best observed read bandwidth (bytes/s) summing an array far larger than the caches.

    The best of several passes: the roofline is the most the hardware can give, and the passes
    that other processes on this shared machine slowed down say nothing about that.
    """
    import torch

    data = torch.ones(size_bytes // 4, dtype=torch.float32)
    data.sum()  # touch every page first
    best = 0.0
    for _ in range(repeats):
        start = time.perf_counter()
        data.sum()
        elapsed = time.perf_counter() - start
        best = max(best, data.numel() * 4 / elapsed)
    del data
    return best
