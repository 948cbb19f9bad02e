"""The chart's monitoring: the operator's PodMonitor and the runtime ServiceMonitor render only where the
Prometheus Operator's CRDs exist and select what the operator really builds; the Grafana dashboard parses,
ships in a ConfigMap with the sidecar's label, and every query names a series we export."""

from __future__ import annotations

import json
import re
from typing import Any

import kubernetes_validate
from bloomz_operator.builders import Owner, build_service
from bloomz_operator.constants import METRICS_PORT_NAME
from bloomz_operator.metrics import OperatorMetrics
from bloomz_runtime.metrics import RuntimeMetrics
from conftest import CHART, Render, only, single

MONITORING = ("--api-versions", "monitoring.coreos.com/v1")
ON = (
    "--set", "metrics.podMonitor.enabled=true",
    "--set", "metrics.runtimeServiceMonitor.enabled=true",
    "--set", "metrics.dashboard.enabled=true",
    "--set", "metrics.podMonitor.labels.release=kube-prometheus",
)  # fmt: skip
DASHBOARD = CHART / "files" / "dashboards" / "bloomz.json"
PROMQL_WORDS = {"sum", "by", "rate", "histogram_quantile", "le", "label_values", "without", "increase"}


def exported_series() -> set[str]:
    """Every sample name the runtime and the operator export (counters with `_total`, histograms' parts)."""
    names: set[str] = set()
    for registry in (RuntimeMetrics().registry, OperatorMetrics().registry):
        for metric in registry.collect():
            names.add(metric.name)
            names.update(sample.name for sample in metric.samples)
            if metric.type == "counter":
                names.add(f"{metric.name}_total")
            if metric.type == "histogram":
                names.update(f"{metric.name}_{part}" for part in ("bucket", "sum", "count"))
    return names


def settings_of(objects: list[dict[str, Any]]) -> str:
    (settings,) = [o for o in only(objects, "ConfigMap") if "settings.yaml" in o["data"]]
    return str(settings["data"]["settings.yaml"])


def test_monitors_need_the_prometheus_operator_crds(render: Render) -> None:
    without = render(*ON)
    assert not only(without, "PodMonitor") and not only(without, "ServiceMonitor")
    assert not only(render(*MONITORING), "PodMonitor")  # off by default


def test_the_operator_pod_monitor_scrapes_the_operators_metrics_port(render: Render) -> None:
    objects = render(*ON, *MONITORING)
    monitor = single(objects, "PodMonitor")
    assert monitor["apiVersion"] == "monitoring.coreos.com/v1"
    assert monitor["metadata"]["labels"]["release"] == "kube-prometheus"
    deployment = single(objects, "Deployment")
    pod_labels = deployment["spec"]["template"]["metadata"]["labels"]
    assert monitor["spec"]["selector"]["matchLabels"].items() <= pod_labels.items()
    (endpoint,) = monitor["spec"]["podMetricsEndpoints"]
    (container,) = deployment["spec"]["template"]["spec"]["containers"]
    ports = {p["name"]: p["containerPort"] for p in container["ports"]}
    assert endpoint["port"] == "metrics" and ports["metrics"] == 8081 and endpoint["honorLabels"] is True
    settings = settings_of(objects)
    assert "metricsPort: 8081" in settings  # the operator serves where the pod declares the port
    off = render(*ON, *MONITORING, "--set", "metrics.port=0")
    assert not only(off, "PodMonitor") and "metricsPort: 0" in settings_of(off)


def test_the_runtime_service_monitor_selects_the_services_the_operator_builds(render: Render) -> None:
    monitor = single(render(*ON, *MONITORING), "ServiceMonitor")
    service = build_service(Owner(name="bloomz-7b1", namespace="default", uid="u"))
    assert monitor["spec"]["selector"]["matchLabels"].items() <= service["metadata"]["labels"].items()
    (endpoint,) = monitor["spec"]["endpoints"]
    assert endpoint["port"] == METRICS_PORT_NAME in {p["name"] for p in service["spec"]["ports"]}
    assert monitor["spec"]["namespaceSelector"] == {"any": True}
    namespaced = single(
        render(*ON, *MONITORING, "--set", "watchNamespaces={team-a,team-b}"), "ServiceMonitor"
    )
    assert namespaced["spec"]["namespaceSelector"] == {"matchNames": ["team-a", "team-b"]}


def test_the_dashboard_ships_for_the_sidecar_and_queries_only_our_series(render: Render) -> None:
    objects = render(*ON)
    (configmap,) = [o for o in only(objects, "ConfigMap") if o["metadata"]["name"].endswith("-dashboard")]
    kubernetes_validate.validate(configmap, "1.33.0", strict=True)
    assert configmap["metadata"]["labels"]["grafana_dashboard"] == "1"
    shipped = json.loads(configmap["data"]["bloomz.json"])
    assert shipped == json.loads(DASHBOARD.read_text())

    queries = [t["expr"] for panel in shipped["panels"] for t in panel["targets"]]
    queries += [v["definition"] for v in shipped["templating"]["list"] if v["type"] == "query"]
    exported = exported_series()
    for query in queries:
        # Metric names: identifiers outside {...} label matchers and [..] ranges, not PromQL words.
        bare = re.sub(r"\{[^}]*\}|\[[^\]]*\]|\"[^\"]*\"", " ", query)
        names = {w for w in re.findall(r"[a-zA-Z_:][a-zA-Z0-9_:]*", bare) if w not in PROMQL_WORDS}
        names -= {"service", "namespace", "name", "code", "protocol", "finish_reason", "phase", "reason"}
        assert names and names <= exported, (query, names - exported)
    titles = " ".join(panel["title"] for panel in shipped["panels"]).lower()
    for topic in ("latency", "first token", "tokens/s", "queue", "batch", "errors", "measured"):
        assert topic in titles, topic
    assert len({panel["id"] for panel in shipped["panels"]}) == len(shipped["panels"])
    assert not only(render(), "ConfigMap")[1:]  # off by default: only the settings ConfigMap
