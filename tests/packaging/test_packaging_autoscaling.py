"""The autoscaling examples: the HPA is schema-valid Kubernetes (kubernetes-validate --strict); the KEDA
ScaledObject (a kind kubernetes-validate does not know) is parsed and checked; both target a resource of the
examples through its scale subresource, on a series the runtime exports."""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

import kubernetes_validate
import pytest
import yaml
from bloomz_runtime.metrics import RuntimeMetrics

ROOT = Path(__file__).resolve().parents[2]
HPA = ROOT / "examples" / "autoscaling" / "hpa-external.yaml"
KEDA = ROOT / "examples" / "autoscaling" / "keda-scaledobject.yaml"
CRD = ROOT / "crds" / "bloomzinferences.inference.bloomz.dev.yaml"


def exported_series() -> set[str]:
    return {metric.name for metric in RuntimeMetrics().registry.collect()}


def check_target(ref: dict[str, Any]) -> str:
    crd = yaml.safe_load(CRD.read_text())
    (version,) = crd["spec"]["versions"]
    assert "scale" in version["subresources"]
    assert ref["apiVersion"] == f"{crd['spec']['group']}/{version['name']}"
    assert ref["kind"] == crd["spec"]["names"]["kind"]
    names = {yaml.safe_load(p.read_text())["metadata"]["name"] for p in (ROOT / "examples").glob("*.yaml")}
    assert ref["name"] in names
    return str(ref["name"])


@pytest.mark.parametrize("kubernetes_version", ["1.29.0", "1.33.0"])
def test_the_hpa_is_valid_and_scales_an_example_on_the_waiting_requests(kubernetes_version: str) -> None:
    hpa = yaml.safe_load(HPA.read_text())
    kubernetes_validate.validate(hpa, kubernetes_version, strict=True)
    name = check_target(hpa["spec"]["scaleTargetRef"])
    (metric,) = hpa["spec"]["metrics"]
    assert metric["external"]["metric"]["name"] == "bloomz_waiting_requests"
    assert "bloomz_waiting_requests" in exported_series()
    assert metric["external"]["metric"]["selector"]["matchLabels"] == {"service": name}
    assert 1 <= hpa["spec"]["minReplicas"] <= hpa["spec"]["maxReplicas"]


def test_the_keda_scaled_object_queries_a_series_the_runtime_exports() -> None:
    scaled = yaml.safe_load(KEDA.read_text())
    assert (scaled["apiVersion"], scaled["kind"]) == ("keda.sh/v1alpha1", "ScaledObject")
    spec = scaled["spec"]
    name = check_target(spec["scaleTargetRef"])
    assert 1 <= spec["minReplicaCount"] <= spec["maxReplicaCount"]
    assert isinstance(spec["cooldownPeriod"], int) and isinstance(spec["pollingInterval"], int)
    (trigger,) = spec["triggers"]
    assert trigger["type"] == "prometheus"
    meta = trigger["metadata"]
    assert all(isinstance(value, str) for value in meta.values())  # KEDA's trigger metadata is strings
    assert float(meta["threshold"]) > 0 and meta["serverAddress"].startswith("http")
    series = set(re.findall(r"\b(bloomz_[a-z_]+)\{", meta["query"]))
    assert series == {"bloomz_waiting_requests"} and series <= exported_series()
    assert f'service="{name}"' in meta["query"]
    # The scale-down policy is a real HPA behavior block (KEDA passes it through unchanged).
    behavior = spec["advanced"]["horizontalPodAutoscalerConfig"]["behavior"]
    hpa = {
        "apiVersion": "autoscaling/v2",
        "kind": "HorizontalPodAutoscaler",
        "metadata": {"name": name},
        "spec": {
            "scaleTargetRef": spec["scaleTargetRef"],
            "maxReplicas": spec["maxReplicaCount"],
            "behavior": behavior,
        },
    }
    kubernetes_validate.validate(hpa, "1.33.0", strict=True)
