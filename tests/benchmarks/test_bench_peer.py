"""The baseline peer's protocol (vllm_peer.py) and the driver that alternates its runs with ours
(peer.py), against a real peer process whose engine is a deterministic function instead of vLLM
(the vLLM environment is installed by `make bench`, not by the tests)."""

from __future__ import annotations

import contextlib
import io
import json
import statistics
import sys
from pathlib import Path
from typing import Any

import pytest
from bloomz_runtime.benchmarks import peer as peer_module
from bloomz_runtime.benchmarks import runner, vllm_peer
from bloomz_runtime.benchmarks.peer import AlternatingBaseline, PeerProcess

SPEC: dict[str, Any] = {
    "prompt_ids": [5, 6, 7],
    "max_new_tokens": 4,
    "concurrent_prompt_ids": [[1, 2], [3, 4], [5, 6]],
    "concurrent_new_tokens": 3,
}

# A peer with the real protocol code; its "model" continues each prompt with last id + 1, + 2, ...
PEER_SCRIPT = """
import json, os, sys
from bloomz_runtime.benchmarks import vllm_peer

spec = json.loads(sys.argv[1])
reply_fd = int(sys.argv[sys.argv.index("--reply-fd") + 1])
crash_after = int(os.environ.get("CRASH_AFTER", "-1"))
calls = 0

def generate(prompts, new_tokens):
    global calls
    calls += 1
    if calls == crash_after:
        os._exit(3)
    return [[ids[-1] + i + 1 for i in range(new_tokens)] for ids in prompts]

replies = os.fdopen(reply_fd, "w")
replies.write(json.dumps({"startup_s": 1.5, "first_generate_s": 0.25, "vllm": "fake"}) + "\\n")
replies.flush()
print("a log line on stdout, as vLLM writes them")
vllm_peer.serve(generate, spec, sys.stdin, replies)
"""


def fake_generate(prompts: list[list[int]], new_tokens: int) -> list[list[int]]:
    return [[ids[-1] + i + 1 for i in range(new_tokens)] for ids in prompts]


def start_peer(tmp_path: Path, monkeypatch: pytest.MonkeyPatch, crash_after: int = -1) -> PeerProcess:
    monkeypatch.setenv("CRASH_AFTER", str(crash_after))
    monkeypatch.setattr(peer_module, "SETTLE_S", 0.0)
    command = [sys.executable, "-c", PEER_SCRIPT, json.dumps(SPEC)]
    return PeerProcess(command, tmp_path / "peer.log", ready_timeout_s=60)


def test_each_command_is_one_measurement() -> None:
    latency = vllm_peer.run_command(fake_generate, SPEC, {"op": "latency"})
    assert latency["token_ids"] == [8, 9, 10, 11] and latency["seconds"] >= 0
    assert vllm_peer.run_command(fake_generate, SPEC, {"op": "batched"})["tokens"] == 9
    assert set(vllm_peer.run_command(fake_generate, SPEC, {"op": "first_token"})) == {"seconds"}
    with pytest.raises(ValueError, match="unknown op"):
        vllm_peer.run_command(fake_generate, SPEC, {"op": "dance"})


def test_serve_replies_once_per_command_errors_included_and_stops_at_exit() -> None:
    commands = ['{"op": "warmup", "runs": 2}', "", '{"op": "dance"}', '{"op": "latency"}', '{"op": "exit"}']
    commands.append('{"op": "latency"}')  # after exit: not run
    replies = io.StringIO()
    vllm_peer.serve(fake_generate, SPEC, commands, replies)
    lines = [json.loads(line) for line in replies.getvalue().splitlines()]
    assert len(lines) == 3
    assert lines[0] == {} and "unknown op" in lines[1]["error"] and lines[2]["token_ids"] == [8, 9, 10, 11]


def test_a_peer_process_answers_on_its_own_pipe(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    with start_peer(tmp_path, monkeypatch) as peer:
        assert peer.ready == {"startup_s": 1.5, "first_generate_s": 0.25, "vllm": "fake"}
        assert peer.call("latency")["token_ids"] == [8, 9, 10, 11]
        assert peer.call("batched")["tokens"] == 9
    assert peer.process.returncode == 0  # "exit" ended it
    assert "a log line on stdout" in (tmp_path / "peer.log").read_text()


def test_a_peer_that_dies_is_an_error_with_its_exit_code(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    with start_peer(tmp_path, monkeypatch, crash_after=2) as peer:
        peer.call("latency")
        with pytest.raises(RuntimeError, match="exited with 3"):
            peer.call("latency")


def test_alternating_runs_give_the_reports_layout(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    with start_peer(tmp_path, monkeypatch) as peer:
        baseline = AlternatingBaseline(peer, SPEC)
        for _ in range(3):
            baseline.latency_run()
            baseline.batched_run()
        baseline.first_token_runs(2)
        result = baseline.result(paired_with="ours 1 rank")
    assert result["paired_with"] == "ours 1 rank" and result["versions"] == {"vllm": "fake"}
    assert (result["startup_s"], result["first_generate_s"], result["new_tokens"]) == (1.5, 0.25, 4)
    assert len(result["latencies_s"]) == 3 and result["latency_s"] == statistics.median(result["latencies_s"])
    assert result["token_ids"] == [8, 9, 10, 11] and result["first_token_s"] >= 0
    concurrency = result["concurrency"]
    assert len(concurrency["all_batched_s"]) == 3 and concurrency["prompts"] == 3
    assert concurrency["batched_tokens_per_second"] == pytest.approx(9 / concurrency["batched_s"])


def test_a_failing_baseline_is_reported_and_leaves_the_other_runs_alone(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    with start_peer(tmp_path, monkeypatch, crash_after=2) as peer:
        baseline = AlternatingBaseline(peer, SPEC)
        for _ in range(3):  # the second run kills the peer: no exception reaches the caller
            baseline.latency_run()
        baseline.first_token_runs(2)
        result = baseline.result(paired_with="ours 1 rank")
    assert result == {"skipped": f"vLLM-CPU failed: {baseline.error}"}
    assert baseline.error and "exited with 3" in baseline.error and len(baseline.latencies) == 1


def test_the_median_batched_run_is_the_lower_middle_rate_like_ours(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    with start_peer(tmp_path, monkeypatch) as peer:
        baseline = AlternatingBaseline(peer, SPEC)
        baseline.batched = [1.0, 4.0, 2.0, 3.0]  # rates 9, 2.25, 4.5, 3: lower middle 3 (3.0 s)
        assert baseline.result("ours 1 rank")["concurrency"]["batched_s"] == 3.0
        baseline.batched = [1.0, 3.0, 2.0]
        assert baseline.result("ours 1 rank")["concurrency"]["batched_s"] == 2.0


# What the runner starts as "vLLM's python": the fake engine above behind the peer's real command line.
FAKE_VLLM_PEER = """
import argparse, json, os, sys
from bloomz_runtime.benchmarks import vllm_peer

parser = argparse.ArgumentParser()
parser.add_argument("script")
parser.add_argument("--model")
parser.add_argument("--spec")
parser.add_argument("--reply-fd", type=int)
args = parser.parse_args()
assert os.path.basename(args.script) == "vllm_peer.py" and os.path.isdir(args.model)
assert os.environ["VLLM_CPU_OMP_THREADS_BIND"] == "0-1"

def generate(prompts, new_tokens):
    return [[ids[-1] + i + 1 for i in range(new_tokens)] for ids in prompts]

replies = os.fdopen(args.reply_fd, "w")
replies.write(json.dumps({"startup_s": 2.0, "first_generate_s": 0.5, "vllm": "fake"}) + "\\n")
replies.flush()
vllm_peer.serve(generate, json.loads(open(args.spec).read()), sys.stdin, replies)
"""


def vllm_beside(tmp_path: Path, *flags: str) -> tuple[Any, dict[str, Any], contextlib.ExitStack]:
    script = tmp_path / "fake_vllm_peer.py"
    script.write_text(FAKE_VLLM_PEER)
    python = tmp_path / "python"
    python.write_text(f'#!/bin/sh\nexec {sys.executable} {script} "$@"\n')
    python.chmod(0o755)
    model = tmp_path / "model"
    model.mkdir()
    (model / "config.json").write_text('{"model_type": "bloom"}')
    spec_path = tmp_path / "spec.json"
    spec_path.write_text(json.dumps(SPEC))
    argv = ["--vllm-python", str(python), "--runs", "2", "--warmup", "0", "--concurrency-runs", "3", *flags]
    args = runner.build_parser().parse_args(argv)
    results: dict[str, Any] = {"machine": {"cores": 2}, "shapes": {"560m": {}}}
    stack = contextlib.ExitStack()
    beside = runner.VllmBeside("560m", args, model, SPEC, spec_path, tmp_path, results, stack)
    return beside, results["shapes"]["560m"], stack


def test_vllm_beside_loads_on_demand_alternates_and_finishes_once(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(peer_module, "SETTLE_S", 0.0)
    beside, shape, stack = vllm_beside(tmp_path)
    with stack:
        assert beside.wanted and beside.baseline is None and shape["vllm"] == {}
        beside.load()  # what ours.measure's after_start does once our runtime serves
        for _ in range(3):
            beside.latency_run()
            beside.batched_run()
        beside.finish()
        beside.finish()  # the runner's second call after the loop: nothing more
    vllm = shape["vllm"]
    assert vllm["paired_with"] == "ours 1 rank" and vllm["startup_s"] == 2.0
    assert len(vllm["latencies_s"]) == 3 and len(vllm["concurrency"]["all_batched_s"]) == 3
    assert vllm["token_ids"] == [8, 9, 10, 11]
    assert beside.baseline is not None and beside.baseline.peer.process.returncode == 0


def test_vllm_without_a_runtime_to_alternate_with_runs_on_its_own(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(peer_module, "SETTLE_S", 0.0)
    beside, shape, stack = vllm_beside(tmp_path)
    with stack:
        beside.finish()  # e.g. --ranks 2, or our 1-rank runtime never served
    vllm = shape["vllm"]
    assert vllm["paired_with"] == "" and len(vllm["latencies_s"]) == 2
    assert len(vllm["concurrency"]["all_batched_s"]) == 3


def test_a_skipped_vllm_is_never_started(tmp_path: Path) -> None:
    beside, shape, stack = vllm_beside(tmp_path, "--skip-vllm")
    with stack:
        beside.load()
        beside.latency_run()
        beside.finish()
    assert shape["vllm"] == {"skipped": "--skip-vllm"} and beside.baseline is None
