"""Prometheus series of the operator, in a registry of its own, served on the settings' `metricsPort`.

What a platform team alerts on: reconciliation passes and their errors by reason, each resource's pods by
phase, and the latency each resource measured (so a regression of TPOT or TTFT can page someone).
"""

from __future__ import annotations

from collections import Counter as Tally
from collections.abc import Iterable, Mapping
from typing import Any

from prometheus_client import CollectorRegistry, Counter, Gauge, start_http_server

from . import pods as podview

POD_PHASES = ("Pending", "Running", "Succeeded", "Failed", "Unknown")
# status.latency field -> (gauge suffix, factor to base units)
LATENCY_GAUGES = {
    "perTokenMs": ("time_per_output_token_seconds", 0.001),
    "firstTokenMs": ("time_to_first_token_seconds", 0.001),
    "seconds": ("latency_seconds", 1.0),
    "tokensPerSecond": ("tokens_per_second", 1.0),
    "bandwidthEfficiency": ("bandwidth_efficiency", 1.0),
}


class OperatorMetrics:
    def __init__(self) -> None:
        self.registry = CollectorRegistry()
        r = self.registry
        resource = ["namespace", "name"]
        self.reconciles = Counter("bloomz_operator_reconciles", "reconciliation passes", resource, registry=r)
        self.reconcile_errors = Counter(
            "bloomz_operator_reconcile_errors",
            "failed reconciliation passes by reason (the error's type, or the API status reason)",
            [*resource, "reason"],
            registry=r,
        )
        self.pods = Gauge(
            "bloomz_operator_pods", "a resource's pods by phase", [*resource, "phase"], registry=r
        )
        self.phase = Gauge(
            "bloomz_operator_resource_phase",
            "1 for the resource's status.phase, 0 for the others",
            [*resource, "phase"],
            registry=r,
        )
        self.latency = {
            field: Gauge(
                f"bloomz_operator_measured_{suffix}",
                f"status.latency.{field} of the resource (greedy at batch 1, median over pods), base units",
                resource,
                registry=r,
            )
            for field, (suffix, _) in LATENCY_GAUGES.items()
        }

    def serve(self, port: int, host: str) -> None:
        """The HTTP endpoint in a daemon thread (port 0: none)."""
        if port:
            start_http_server(port, addr=host, registry=self.registry)

    def reconciled(
        self, namespace: str, name: str, observed: Iterable[Mapping[str, Any]], phase: str | None
    ) -> None:
        self.reconciles.labels(namespace, name).inc()
        counts = Tally(
            podview.phase_of(pod) or "Unknown" for pod in observed if not podview.is_terminating(pod)
        )
        for pod_phase in POD_PHASES:
            self.pods.labels(namespace, name, pod_phase).set(counts.get(pod_phase, 0))
        if phase:
            for known in RESOURCE_PHASES:
                self.phase.labels(namespace, name, known).set(1 if known == phase else 0)

    def failed(self, namespace: str, name: str, error: BaseException) -> None:
        self.reconcile_errors.labels(namespace, name, error_reason(error)).inc()

    def measured(self, namespace: str, name: str, latency: Mapping[str, Any]) -> None:
        for field, (_, factor) in LATENCY_GAUGES.items():
            value = latency.get(field)
            if isinstance(value, (int, float)):
                self.latency[field].labels(namespace, name).set(value * factor)

    def latency_dropped(self, namespace: str, name: str) -> None:
        """The spec changed what a measurement means: no gauge keeps the old template's latency."""
        self._remove(namespace, name, self.latency.values())

    def forget(self, namespace: str, name: str) -> None:
        """A deleted resource's series go with it (no stale latency to alert on)."""
        metrics = (self.pods, self.phase, self.reconcile_errors, self.reconciles, *self.latency.values())
        self._remove(namespace, name, metrics)

    @staticmethod
    def _remove(namespace: str, name: str, metrics: Iterable[Any]) -> None:
        for metric in metrics:
            for labels in [key for key in _label_sets(metric) if key[:2] == (namespace, name)]:
                metric.remove(*labels)


RESOURCE_PHASES = ("Pending", "Loading", "Ready", "Degraded", "Failed", "Stopped")


def error_reason(error: BaseException) -> str:
    """A bounded label: the Kubernetes API's reason (`Conflict`, `Forbidden`, ...) or the error's type."""
    reason = getattr(error, "reason", None)
    status = getattr(error, "status", None)
    if isinstance(status, int) and isinstance(reason, str) and reason:
        return reason.replace(" ", "")
    return type(error).__name__


def _label_sets(metric: Any) -> list[tuple[str, ...]]:
    # prometheus_client keeps the children by their label values.
    return list(getattr(metric, "_metrics", {}).keys())
