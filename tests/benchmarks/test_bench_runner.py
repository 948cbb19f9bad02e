"""The runner's preparation steps: the shared inputs, the vLLM settings and when vLLM cannot run."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from bloomz_api.client.requests import BENCHMARK_PROMPT
from bloomz_runtime.benchmarks import runner


def test_every_system_gets_the_same_token_ids(tiny_checkpoint: Path) -> None:
    from transformers import AutoTokenizer

    args = runner.build_parser().parse_args(["--clients", "4", "--input-tokens", "16"])
    spec = runner.build_spec(tiny_checkpoint, args)
    tokenizer = AutoTokenizer.from_pretrained(tiny_checkpoint)
    assert (
        spec["prompt"] == BENCHMARK_PROMPT and spec["prompt_ids"] == tokenizer(BENCHMARK_PROMPT)["input_ids"]
    )
    assert (spec["max_new_tokens"], spec["warmup"], spec["runs"], spec["concurrent_new_tokens"]) == (
        100,
        2,
        5,
        50,
    )
    assert len(spec["concurrent_texts"]) == len(spec["concurrent_prompt_ids"]) == 4
    for text, ids in zip(spec["concurrent_texts"], spec["concurrent_prompt_ids"], strict=True):
        assert ids == tokenizer(text)["input_ids"][:16] and len(ids) == 16


def test_vllm_runs_with_its_best_settings_here(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("PYTHONPATH", "/somewhere/runtime")
    env = runner.vllm_environment(tmp_path / "cache", cores=2)
    assert env["VLLM_CPU_OMP_THREADS_BIND"] == "0-1" and env["VLLM_CPU_NUM_OF_RESERVED_CPU"] == "0"
    assert env["VLLM_CPU_KVCACHE_SPACE"] == "2" and env["VLLM_CACHE_ROOT"] == str(tmp_path / "cache")
    assert "PYTHONPATH" not in env  # never this project's modules in vLLM's environment
    assert runner.vllm_environment(tmp_path, cores=1)["VLLM_CPU_OMP_THREADS_BIND"] == "0"


def test_untied_bloom_checkpoints_are_skipped_for_vllm(tmp_path: Path) -> None:
    (tmp_path / "config.json").write_text(json.dumps({"model_type": "bloom", "tie_word_embeddings": False}))
    assert "tied embeddings" in (runner.vllm_unsupported(tmp_path) or "")
    (tmp_path / "config.json").write_text(json.dumps({"model_type": "bloom"}))  # BLOOM ties by default
    assert runner.vllm_unsupported(tmp_path) is None


def test_a_missing_vllm_environment_without_its_setup_script_is_a_reason_to_skip(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(runner, "REPO_ROOT", tmp_path)  # an install without the repository's scripts/
    reason = runner.ensure_vllm(tmp_path / "venv/bin/python", tmp_path / "setup.log")
    assert reason is not None and "missing" in reason
