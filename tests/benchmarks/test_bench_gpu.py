"""`make bench-gpu` (benchmarks/gpu.py) on CPU at the tiny shape: the same code path a CUDA machine
runs, except the CUDA graphs, which need a GPU (the static decode step under them is tested in
tests/runtime/test_static_decode.py)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from bloomz_runtime.benchmarks import gpu


def test_tiny_cpu_run_writes_ratios_and_agrees_with_transformers(tmp_path: Path) -> None:
    out = tmp_path / "gpu.json"
    argv = [
        "--shape",
        "tiny",
        "--device",
        "cpu",
        "--dtype",
        "float32",
        "--new-tokens",
        "12",
        "--clients",
        "3",
    ]
    assert gpu.main([*argv, "--reps", "1", "--out", str(out)]) == 0
    result = json.loads(out.read_text())
    # float32 on CPU: our static decode gives transformers' greedy tokens exactly.
    assert result["batch1_agreement"] == 1.0 and result["clients_agreement"] == 1.0
    assert result["graphs"] is False and result["skipped"] == []
    for key in ("plain_batch1", "ours_batch1", "plain_clients", "ours_clients"):
        assert len(result[key]["seconds"]) == 1
    assert result["batch1_ours_over_plain"] > 0 and result["clients_tokens_per_s"]["ours_over_plain"] > 0
    # Tied embeddings: the lm_head reads the embedding matrix, so every float32 weight once.
    assert result["weight_bytes_per_token"] == result["parameters"] * 4
    assert result["roofline_s_per_new_tokens"] == pytest.approx(12 * result["parameters"] * 4 / 4800e9)


def test_budget_skips_what_is_left_and_says_so(tmp_path: Path) -> None:
    out = tmp_path / "gpu.json"
    argv = ["--shape", "tiny", "--device", "cpu", "--dtype", "float32", "--new-tokens", "2", "--clients", "2"]
    assert gpu.main([*argv, "--reps", "1", "--budget-s", "0", "--out", str(out)]) == 0
    result = json.loads(out.read_text())
    assert result["skipped"] == ["plain_batch1", "ours_batch1", "plain_clients", "ours_clients"]


def test_roofline_of_the_7b1_shape_on_an_h200() -> None:
    # 7.07 B bfloat16 weights read once per token at 4.8 TB/s: about 0.29 s per 100 tokens.
    params = 7_069_016_064
    assert 100 * gpu.roofline_s_per_token(params * 2, gpu.H200_BANDWIDTH_GBS) == pytest.approx(
        0.295, abs=0.001
    )


def test_cuda_without_a_gpu_stops_with_a_clear_message() -> None:
    import torch

    if torch.cuda.is_available():
        pytest.skip("this machine has a GPU")
    with pytest.raises(SystemExit, match="sees no CUDA device"):
        gpu.preflight("cuda")


def test_agreement() -> None:
    assert gpu.agreement([[1, 2, 3, 4]], [[1, 2, 9, 4]]) == 0.5
    assert gpu.agreement([[1, 2], [3, 4]], [[1, 2], [3, 4]]) == 1.0
