"""Memory-bandwidth efficiency in status.latency: the roofline fraction (pure), per pod and as the median,
and the per-device bandwidth settings it is computed with."""

from __future__ import annotations

from datetime import datetime, timezone

import pytest
from bloomz_operator.latency import PodMeasurement, bandwidth_efficiency, summarize
from bloomz_operator.settings import Settings, SettingsError, parse_settings
from bloomz_operator.spec import BenchmarkSpec

NOW = datetime(2026, 1, 1, tzinfo=timezone.utc)


def pod(name: str, per_token_ms: float, weight_bytes: int | None = 14_000_000_000) -> PodMeasurement:
    return PodMeasurement(
        name,
        seconds=per_token_ms / 10,
        tokens_per_second=1000 / per_token_ms,
        first_token_ms=per_token_ms * 2,
        per_token_ms=per_token_ms,
        prompt_tokens=7,
        iterations=3,
        max_new_tokens=100,
        decode_weight_bytes=weight_bytes,
    )


def test_the_fraction_of_the_roofline() -> None:
    # 14 GB per token in 7 ms on 8 Gaudi2 cards (8 x 2.45 TB/s): 2 TB/s of 19.6 TB/s.
    assert bandwidth_efficiency(14_000_000_000, 7.0, 8 * 2.45e12) == pytest.approx(0.102, abs=1e-3)
    assert bandwidth_efficiency(25_000_000, 1.0, 25e9) == 1.0
    for missing in ((None, 7.0, 1e12), (14, None, 1e12), (14, 7.0, None), (0, 7.0, 1e12)):
        assert bandwidth_efficiency(*missing) is None


def test_summary_reports_each_pod_and_the_median() -> None:
    pods = [pod("a", 10.0), pod("b", 20.0), pod("c", 40.0), PodMeasurement("d", error="UNAVAILABLE: gone")]
    latency = summarize(pods, BenchmarkSpec(), current_hash="h", now=NOW, bandwidth=2.8e12)
    assert [p.get("bandwidthEfficiency") for p in latency["pods"]] == [0.5, 0.25, 0.125, None]
    assert latency["bandwidthEfficiency"] == 0.25


def test_no_bandwidth_or_no_weight_bytes_reports_nothing() -> None:
    latency = summarize([pod("a", 10.0)], BenchmarkSpec(), current_hash="h", now=NOW)
    assert "bandwidthEfficiency" not in latency and "bandwidthEfficiency" not in latency["pods"][0]
    old_runtime = [pod("a", 10.0, weight_bytes=None)]  # an Info without decode_weight_bytes
    latency = summarize(old_runtime, BenchmarkSpec(), current_hash="h", now=NOW, bandwidth=1e12)
    assert "bandwidthEfficiency" not in latency


def test_device_bandwidth_settings() -> None:
    defaults = Settings()
    assert defaults.device("hpu").memory_bandwidth == 2.45e12
    assert defaults.device("cuda").memory_bandwidth == 3.35e12
    assert defaults.device("cpu").memory_bandwidth is None  # a CPU's depends on the machine: a setting
    tuned = parse_settings({"devices": {"cpu": {"memoryBandwidth": 25e9}, "cuda": {"memoryBandwidth": 2e12}}})
    assert tuned.device("cpu").memory_bandwidth == 25e9 and tuned.device("cuda").memory_bandwidth == 2e12
    assert (
        parse_settings({"devices": {"hpu": {"memoryBandwidth": None}}}).device("hpu").memory_bandwidth is None
    )
    for bad in (0, -1, "fast", True):
        with pytest.raises(SettingsError, match="memoryBandwidth"):
            parse_settings({"devices": {"cpu": {"memoryBandwidth": bad}}})
