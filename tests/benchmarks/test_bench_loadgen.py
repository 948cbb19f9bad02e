"""The load-generator part of the benchmark without vLLM: the commands it renders, how it reads
`vllm bench serve`'s result file, and the tables and targets made from it."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
from bloomz_runtime.benchmarks import loadgen, report

# The fields of a `vllm bench serve --save-result` file that the benchmark reads (vLLM 0.32's names).
VLLM_RESULT: dict[str, Any] = {
    "backend": "openai", "num_prompts": 48, "duration": 60.0, "completed": 48, "failed": 0,
    "total_input_tokens": 768, "total_output_tokens": 2400, "request_throughput": 0.8,
    "output_throughput": 40.0, "mean_ttft_ms": 900.0, "median_ttft_ms": 800.0, "median_tpot_ms": 300.0,
    "median_itl_ms": 290.0, "errors": ["", ""],
}  # fmt: skip


def _flag(argv: list[str], name: str) -> str:
    return argv[argv.index(name) + 1]


def test_bench_serve_argv_is_the_same_request_set_for_any_server() -> None:
    settings = loadgen.LoadSettings(num_prompts=32, concurrency=16, input_len=16, output_len=50, seed=3)
    ours = loadgen.bench_serve_argv("http://127.0.0.1:1", Path("/m"), settings, Path("/out"), "a.json")
    theirs = loadgen.bench_serve_argv("http://127.0.0.1:2", Path("/m"), settings, Path("/out"), "b.json")
    assert [a for a in ours if "127.0.0.1" not in a and not a.endswith(".json")] == [
        a for a in theirs if "127.0.0.1" not in a and not a.endswith(".json")
    ]
    expected = {
        "--backend": "openai", "--endpoint": "/v1/completions", "--dataset-name": "random",
        "--random-input-len": "16", "--random-output-len": "50", "--num-prompts": "32",
        "--max-concurrency": "16", "--seed": "3", "--temperature": "0", "--tokenizer": "/m",
        "--model": loadgen.SERVED_NAME, "--result-filename": "a.json", "--result-dir": "/out",
    }  # fmt: skip
    assert {flag: _flag(ours, flag) for flag in expected} == expected
    assert "--ignore-eos" in ours and "--save-result" in ours
    chat = loadgen.bench_serve_argv("http://h:1", Path("/m"), settings, Path("/out"), "c.json", "openai-chat")
    assert (_flag(chat, "--backend"), _flag(chat, "--endpoint")) == ("openai-chat", "/v1/chat/completions")
    assert loadgen.LoadSettings().backends == ("openai", "openai-chat")


def test_bench_serve_runs_as_a_module_call_in_the_vllm_python() -> None:
    command = loadgen.bench_serve_command(Path("/venv/bin/python"), ["--x", "1"])
    assert command[:2] == ["/venv/bin/python", "-c"] and command[-2:] == ["--x", "1"]
    assert "from vllm.benchmarks.serve import add_cli_args, main" in command[2]
    compile(command[2], "<bench-serve>", "exec")  # the script is valid Python


def test_vllm_server_serves_the_checkpoint_under_the_shared_name_in_float32() -> None:
    command = loadgen.vllm_server_command(Path("/venv/bin/python"), Path("/ckpt"), 4321, Path("/t.jinja"))
    assert command[1:3] == ["-m", "vllm.entrypoints.openai.api_server"]
    names = ("--model", "--served-model-name", "--port", "--dtype", "--chat-template")
    assert {flag: _flag(command, flag) for flag in names} == {
        "--model": "/ckpt", "--served-model-name": loadgen.SERVED_NAME, "--port": "4321",
        "--dtype": "float32", "--chat-template": "/t.jinja",
    }  # fmt: skip


def test_a_result_file_becomes_the_figures() -> None:
    result = loadgen.parse_result(VLLM_RESULT)
    assert result == loadgen.LoadResult(
        completed=48, failed=0, duration_s=60.0, output_tokens=2400, output_tokens_per_second=40.0,
        median_ttft_ms=800.0, median_tpot_ms=300.0, median_itl_ms=290.0,
    )  # fmt: skip


def test_failed_requests_are_an_error_with_the_first_reason() -> None:
    failed = {**VLLM_RESULT, "completed": 47, "failed": 1, "errors": ["", "Traceback\nUnauthorized\n"]}
    with pytest.raises(RuntimeError, match="1 of 48 requests failed: Unauthorized"):
        loadgen.parse_result(failed)
    with pytest.raises(RuntimeError, match="no request completed"):
        loadgen.parse_result({**VLLM_RESULT, "completed": 0, "errors": []})


def _loadgen(ours_rate: float, ours_ttft: float, http_to_grpc: float) -> dict[str, Any]:
    completions = loadgen.parse_result(VLLM_RESULT).as_dict()
    chat = {**completions, "output_tokens_per_second": 20.0, "median_ttft_ms": 1000.0}
    vllm = {"openai": completions, "openai-chat": chat, "startup_s": 120.0}
    ours = {"openai": {**completions, "output_tokens_per_second": ours_rate, "median_ttft_ms": ours_ttft},
            "openai-chat": {**chat, "output_tokens_per_second": 30.0}}  # fmt: skip
    row = {"latency_s": 1.0, "first_token_ms": 50.0, "per_token_ms": 9.5, "new_tokens": 100}
    protocols = {"grpc": row, "http": {**row, "latency_s": http_to_grpc}, "same_text": True,
                 "http_to_grpc": http_to_grpc}  # fmt: skip
    return {"settings": {"num_prompts": 48, "input_len": 16, "output_len": 50, "seed": 0, "concurrency": 16},
            "protocols": protocols, "ours": ours, "vllm": vllm}  # fmt: skip


def test_targets_are_checked_against_vllms_server_and_grpc() -> None:
    met = report.loadgen_checks(_loadgen(44.0, 600.0, 1.02))
    assert [(c.name, round(c.value, 2), c.met) for c in met] == [
        ("vllm bench serve tokens/s / vLLM-CPU server", 1.1, True),
        ("vllm bench serve median TTFT / vLLM-CPU server", 0.75, True),
        ("client bench HTTP / gRPC latency", 1.02, True),
    ]
    missed = report.loadgen_checks(_loadgen(36.0, 880.0, 1.08))
    assert [c.met for c in missed] == [False, False, False]
    # Only the load generator measured (--only-loadgen): the shape's targets are these three.
    assert len(report.target_checks({"loadgen": _loadgen(44.0, 600.0, 1.0)})) == 3


def test_the_report_shows_both_servers_side_by_side_and_the_protocols() -> None:
    text = "\n".join(report.loadgen_lines(_loadgen(44.0, 600.0, 1.02)))
    cells = [
        [c.strip() for c in line.split("|")[1:-1]] for line in text.splitlines() if line.startswith("| ")
    ]
    rows = {row[0]: row[1:] for row in cells}
    assert rows["ours 1 rank, /v1/completions"] == ["44.0", "600", "290.0", "300.0", "1.10", "0.75"]
    assert rows["vLLM-CPU server, /v1/completions"] == ["40.0", "800", "290.0", "300.0", "1.00", "1.00"]
    assert rows["ours 1 rank, /v1/chat/completions"][0::4] == ["30.0", "1.50"]  # to vLLM's chat figures
    assert rows["ours 1 rank, client bench over HTTP"][-1] == "1.02"
    assert "48 random prompts of 16 tokens" in text and "Greedy text over HTTP vs gRPC: identical" in text


def test_a_part_that_failed_or_was_skipped_says_why() -> None:
    result = {**_loadgen(44.0, 600.0, 1.0), "vllm": {"skipped": "vLLM's BLOOM needs tied embeddings"}}
    text = "\n".join(report.loadgen_lines(result))
    assert "vllm bench serve against vLLM-CPU's server: vLLM's BLOOM needs tied embeddings" in text
    assert report.loadgen_checks(result)[0].name == "client bench HTTP / gRPC latency"
    result["ours"]["openai-chat"] = {"error": "RuntimeError: 3 of 48 requests failed: boom"}
    text = "\n".join(report.loadgen_lines(result))
    assert "vllm bench serve --backend openai-chat against ours: RuntimeError: 3 of 48" in text
    assert "/v1/completions" in text and "ours 1 rank, /v1/chat/completions" not in text
    result["ours"] = {"error": "RuntimeError: boom\nlast line"}
    assert "against ours: last line" in "\n".join(report.loadgen_lines(result))
    assert report.loadgen_lines({"skipped": "no venv"}) == ["vllm bench serve skipped: no venv"]


def test_a_load_generator_only_run_reports_no_empty_tables() -> None:
    text = report.shape_report("560m", {"parameters": 5.6e8, "loadgen": _loadgen(44.0, 600.0, 1.02)})
    assert "| batch 1 " not in text.split("vllm bench serve")[0]  # no empty system tables before it
    assert "| concurrency" not in text and "| start-up" not in text
    assert "- vllm bench serve tokens/s / vLLM-CPU server: 1.10 (target >= 1.00) met" in text
