"""The roofline arithmetic and the safetensors header reading."""

from __future__ import annotations

import json
import struct
from pathlib import Path

import pytest
from bloomz_runtime.benchmarks import roofline


def _write_safetensors(path: Path, tensors: dict[str, list[int]]) -> None:
    """A valid safetensors file: header of float32 tensors, then their zero bytes."""
    header: dict[str, object] = {"__metadata__": {"format": "pt"}}
    offset = 0
    for name, shape in tensors.items():
        size = 4
        for dim in shape:
            size *= dim
        header[name] = {"dtype": "F32", "shape": shape, "data_offsets": [offset, offset + size]}
        offset += size
    encoded = json.dumps(header).encode()
    path.write_bytes(struct.pack("<Q", len(encoded)) + encoded + bytes(offset))


def test_parameters_are_counted_from_the_headers(tmp_path: Path) -> None:
    _write_safetensors(tmp_path / "model.safetensors", {"a.weight": [3, 4], "a.bias": [4]})
    _write_safetensors(tmp_path / "model-2.safetensors", {"b.weight": [2, 2, 2]})
    headers = roofline.checkpoint_headers(tmp_path)
    assert roofline.parameter_count(headers) == 12 + 4 + 8
    with pytest.raises(FileNotFoundError):
        roofline.checkpoint_headers(tmp_path / "empty")


def test_an_untied_input_embedding_is_read_one_row_per_token() -> None:
    tied = [{"transformer.word_embeddings.weight": {"shape": [100, 8]}, "h.0.w": {"shape": [8, 8]}}]
    untied = [{**tied[0], "lm_head.weight": {"shape": [100, 8]}}]
    assert roofline.parameters_read_per_token(tied) == 800 + 64
    # lm_head read whole, the input embedding only one row of 8.
    assert roofline.parameters_read_per_token(untied) == 800 + 64 + 8


def test_roofline_of_the_issue_example() -> None:
    # 2.24 GB of float32 weights at 25 GB/s: about 90 ms per token.
    weights = roofline.weight_bytes(560_000_000, "float32")
    assert weights == 2_240_000_000
    assert roofline.roofline_ms_per_token(weights, 25e9) == pytest.approx(89.6)
    # The blog.s figures: BLOOMZ-7B1 bf16 14.1 GB on one Gaudi2 (2.45 TB/s): 5.76 ms per token.
    assert roofline.roofline_ms_per_token(14.1e9, 2.45e12) == pytest.approx(5.755, abs=1e-3)
    # 176B on 8 cards: 352.5 GB / (8 x 2.45 TB/s) = 18 ms per token.
    assert roofline.roofline_ms_per_token(352.5e9, 2.45e12, cards=8) == pytest.approx(17.98, abs=0.01)
    with pytest.raises(ValueError):
        roofline.roofline_ms_per_token(1, 0.0)


def test_roofline_fraction() -> None:
    assert roofline.roofline_fraction(90.0, 120.0) == pytest.approx(0.75)
    assert roofline.roofline_fraction(90.0, 0.0) == 0.0


def test_bandwidth_measurement_returns_a_plausible_rate() -> None:
    # A small array: this checks the arithmetic (bytes / second), not the machine's speed.
    rate = roofline.measure_read_bandwidth(size_bytes=8 << 20, repeats=2)
    assert 1e8 < rate < 1e13


def test_rooflines_follow_the_final_bandwidth_figure() -> None:
    from bloomz_runtime.benchmarks.runner import refresh_rooflines

    results = {
        "bandwidth_bytes_per_s": 20e9,
        "shapes": {
            # 250 ms: from a first bandwidth measurement that other processes slowed down.
            "560m": {"weight_bytes": 2_000_000_000, "roofline_ms_per_token": 250.0},
            "tiny": {"weight_bytes": 14_000_000, "roofline_note": "fits in the cache"},
        },
    }
    refresh_rooflines(results)
    assert results["shapes"]["560m"]["roofline_ms_per_token"] == pytest.approx(100.0)
    assert "roofline_ms_per_token" not in results["shapes"]["tiny"]
