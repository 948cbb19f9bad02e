"""The operator's own series: reconciles and errors by reason, pods by phase, the measured latency per
resource, scraped over HTTP from its endpoint; and the command line that turns it and JSON logs on."""

from __future__ import annotations

import urllib.request
from typing import Any

from bloomz_operator.__main__ import effective_settings, parse_args
from bloomz_operator.metrics import OperatorMetrics, error_reason
from bloomz_operator.settings import Settings, parse_settings
from helpers import free_port
from kubernetes.client.exceptions import ApiException


def pod(phase: str, terminating: bool = False) -> dict[str, Any]:
    meta: dict[str, Any] = {"name": f"p-{phase}"}
    if terminating:
        meta["deletionTimestamp"] = "2026-01-01T00:00:00Z"
    return {"metadata": meta, "status": {"phase": phase}}


def scrape(port: int) -> dict[str, float]:
    body = urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=10).read().decode()
    return {
        name: float(value)
        for name, value in (line.rsplit(" ", 1) for line in body.splitlines() if line and line[0] != "#")
    }


def test_series_over_http_after_known_passes() -> None:
    metrics = OperatorMetrics()
    port = free_port()
    metrics.serve(port, "127.0.0.1")
    pods = [pod("Running"), pod("Running"), pod("Pending"), pod("Failed", terminating=True)]
    metrics.reconciled("ns", "a", pods, "Degraded")
    metrics.reconciled("ns", "a", pods, "Degraded")
    metrics.failed("ns", "a", ApiException(status=409, reason="Conflict"))
    metrics.failed("ns", "a", TimeoutError("slow"))
    metrics.measured(
        "ns", "a", {"perTokenMs": 7.5, "firstTokenMs": 120.0, "seconds": 0.737, "tokensPerSecond": 135.7}
    )
    got = scrape(port)
    resource = 'name="a",namespace="ns"'
    assert got[f"bloomz_operator_reconciles_total{{{resource}}}"] == 2
    assert got[f'bloomz_operator_reconcile_errors_total{{{resource},reason="Conflict"}}'] == 1
    assert got[f'bloomz_operator_reconcile_errors_total{{{resource},reason="TimeoutError"}}'] == 1
    assert got[f'bloomz_operator_pods{{{resource},phase="Running"}}'] == 2
    assert got[f'bloomz_operator_pods{{{resource},phase="Pending"}}'] == 1
    assert got[f'bloomz_operator_pods{{{resource},phase="Failed"}}'] == 0  # terminating: on its way out
    assert got[f'bloomz_operator_resource_phase{{{resource},phase="Degraded"}}'] == 1
    assert got[f'bloomz_operator_resource_phase{{{resource},phase="Ready"}}'] == 0
    assert got[f"bloomz_operator_measured_time_per_output_token_seconds{{{resource}}}"] == 0.0075
    assert got[f"bloomz_operator_measured_time_to_first_token_seconds{{{resource}}}"] == 0.12
    assert got[f"bloomz_operator_measured_latency_seconds{{{resource}}}"] == 0.737
    assert f"bloomz_operator_measured_bandwidth_efficiency{{{resource}}}" not in got  # not measured

    metrics.latency_dropped("ns", "a")
    left = scrape(port)
    assert not [n for n in left if n.startswith("bloomz_operator_measured_") and resource in n]
    assert left[f"bloomz_operator_reconciles_total{{{resource}}}"] == 2
    metrics.forget("ns", "a")
    assert not [name for name in scrape(port) if resource in name]


def test_error_reasons_are_bounded() -> None:
    assert error_reason(ApiException(status=422, reason="Unprocessable Entity")) == "UnprocessableEntity"
    assert error_reason(ValueError("x")) == "ValueError"


def test_command_line_metrics_port_and_json_logs() -> None:
    assert Settings().metrics_port == 0  # off unless configured: tests and the sandbox run many operators
    assert parse_settings({"metricsPort": 8081}).metrics_port == 8081
    args = parse_args(["--metrics-port", "9191", "--log-format", "json"])
    assert effective_settings(args, Settings()).metrics_port == 9191 and args.log_format == "json"
    assert parse_args([]).log_format == "full"
