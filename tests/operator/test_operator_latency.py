"""Latency: when a measurement is due, the summary over pods, and an unreachable pod reported as an error."""

from __future__ import annotations

import asyncio
import socket
from datetime import datetime, timedelta, timezone

from bloomz_operator.latency import (
    PodMeasurement,
    PodTarget,
    benchmark_due,
    benchmark_request,
    benchmark_requested,
    format_time,
    measure_pods,
    summarize,
)
from bloomz_operator.spec import BenchmarkSpec

NOW = datetime(2026, 1, 1, 12, 0, 0, tzinfo=timezone.utc)
BENCH = BenchmarkSpec(interval_seconds=600)


def measured(at: datetime, hash_: str = "h") -> dict[str, object]:
    return {"seconds": 1.0, "measuredAt": format_time(at), "templateHash": hash_}


def due(latency: dict[str, object] | None, bench: BenchmarkSpec = BENCH, requested: bool = False) -> bool:
    return benchmark_due(latency=latency, bench=bench, requested=requested, current_hash="h", now=NOW)


def test_due_when_never_measured_or_measured_on_another_template() -> None:
    assert due(None)
    assert due({})
    assert due(measured(NOW, hash_="old"))


def test_due_after_the_interval_only() -> None:
    assert not due(measured(NOW - timedelta(seconds=599)))
    assert due(measured(NOW - timedelta(seconds=600)))


def test_interval_zero_measures_once_and_on_request() -> None:
    once = BenchmarkSpec(interval_seconds=0)
    assert due(None, once)
    assert not due(measured(NOW - timedelta(days=30)), once)
    assert due(measured(NOW), once, requested=True)


def test_disabled_benchmark_runs_only_on_request() -> None:
    off = BenchmarkSpec(enabled=False)
    assert not due(None, off)
    assert due(None, off, requested=True)


def test_annotation_request() -> None:
    assert benchmark_requested({"inference.bloomz.dev/benchmark": "now"})
    assert not benchmark_requested({"inference.bloomz.dev/benchmark": "done"})
    assert not benchmark_requested(None)


def test_request_carries_the_spec() -> None:
    request = benchmark_request(BenchmarkSpec(prompt="p", max_new_tokens=7, warmup=0, iterations=3))
    assert (request.prompt, request.max_new_tokens, request.warmup, request.iterations) == ("p", 7, 0, 3)
    assert request.HasField("warmup")  # 0 warm-up runs is a value, not "unset"


def test_summary_is_the_median_over_pods_and_lists_each_pod() -> None:
    pods = [
        PodMeasurement("a", 1.0, 100.0, 10.0, 9.0, 7, 5, 100),
        PodMeasurement("b", 3.0, 33.3, 30.0, 29.0, 7, 5, 100),
        PodMeasurement("c", 2.0, 50.0, 20.0, 19.0, 7, 5, 100),
        PodMeasurement("d", error="UNAVAILABLE: connection refused"),
    ]
    latency = summarize(pods, BenchmarkSpec(), current_hash="h", now=NOW)
    assert latency["seconds"] == 2.0 and latency["tokensPerSecond"] == 50.0
    assert latency["firstTokenMs"] == 20.0 and latency["perTokenMs"] == 19.0
    assert (latency["promptTokens"], latency["iterations"], latency["maxNewTokens"]) == (7, 5, 100)
    assert latency["measuredAt"] == "2026-01-01T12:00:00Z" and latency["templateHash"] == "h"
    assert [p["pod"] for p in latency["pods"]] == ["a", "b", "c", "d"]
    assert latency["pods"][3] == {"pod": "d", "error": "UNAVAILABLE: connection refused"}
    assert latency["pods"][0]["seconds"] == 1.0


def test_summary_without_any_answer_has_only_errors() -> None:
    latency = summarize([PodMeasurement("a", error="boom")], BenchmarkSpec(), current_hash="h", now=NOW)
    assert "seconds" not in latency
    assert latency["pods"] == [{"pod": "a", "error": "boom"}]


def test_unreachable_pod_becomes_an_error_entry() -> None:
    with socket.socket() as sock:  # a port nobody listens on
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    targets = [PodTarget("gone", f"127.0.0.1:{port}")]
    (result,) = asyncio.run(measure_pods(targets, BenchmarkSpec(), timeout_s=20))
    assert result.pod == "gone" and result.seconds is None
    assert result.error is not None and result.error.startswith(("UNAVAILABLE", "DEADLINE_EXCEEDED"))
