"""NetworkPolicy and PodDisruptionBudget per resource, and every object the operator builds against the
real Kubernetes 1.31 schemas (kubernetes-validate --strict)."""

from __future__ import annotations

from typing import Any

import kubernetes_validate
import pytest
from bloomz_operator.builders import Owner, build_service
from bloomz_operator.constants import LABEL_OWNER
from bloomz_operator.groups import build_headless_service, build_replicas
from bloomz_operator.policy import NetworkSettings
from bloomz_operator.protection import build_disruption_budget, build_network_policy
from bloomz_operator.settings import Settings, parse_settings
from bloomz_operator.spec import parse_spec
from bloomz_operator.sshkeys import build_ssh_secret, generate_key_pair
from cluster_fakes import build_pods

OWNER = Owner(name="bloomz-7b1", namespace="team-a", uid="0f1e2d3c-aaaa-bbbb-cccc-000000000001")
KUBERNETES_VERSION = "1.31.0"


def peers(rule: dict[str, Any]) -> list[dict[str, Any]]:
    return list(rule.get("from") or [])


def ports(rule: dict[str, Any]) -> set[int]:
    return {p["port"] for p in rule.get("ports") or ()}


def test_network_policy_defaults_to_same_namespace_clients_and_monitoring_metrics() -> None:
    policy = build_network_policy(OWNER, NetworkSettings())
    spec = policy["spec"]
    assert (
        spec["policyTypes"] == ["Ingress"] and spec["podSelector"]["matchLabels"][LABEL_OWNER] == OWNER.name
    )
    clients, metrics, group = spec["ingress"]
    assert ports(clients) == {50051, 8000}
    namespace = "kubernetes.io/metadata.name"
    assert [p["namespaceSelector"]["matchLabels"][namespace] for p in peers(clients)] == ["team-a"]
    assert ports(metrics) == {9090}
    assert peers(metrics) == [{"namespaceSelector": {"matchLabels": {namespace: "monitoring"}}}]
    # Ranks of a group talk on ports chosen at run time: any port, but only from this resource's pods.
    assert "ports" not in group and peers(group) == [
        {"podSelector": {"matchLabels": {LABEL_OWNER: OWNER.name}}}
    ]


def test_network_policy_clients_are_selectable_and_the_operator_may_measure() -> None:
    settings = parse_settings(
        {
            "network": {
                "clientNamespaces": ["gateway"],
                "clientPodLabels": {"role": "llm-client"},
                "monitoringNamespace": None,
                "operatorNamespace": "bloomz-system",
            }
        }
    )
    clients, metrics, _ = build_network_policy(OWNER, settings.network)["spec"]["ingress"]
    names = [p["namespaceSelector"]["matchLabels"]["kubernetes.io/metadata.name"] for p in peers(clients)]
    assert names == ["team-a", "gateway", "bloomz-system"]
    assert peers(clients)[1]["podSelector"] == {"matchLabels": {"role": "llm-client"}}
    assert "podSelector" not in peers(clients)[2]  # the operator pod, whatever its labels
    assert peers(metrics)[0]["namespaceSelector"]["matchLabels"]["kubernetes.io/metadata.name"] == "team-a"


def test_disruption_budget_lets_one_pod_go_at_a_time() -> None:
    budget = build_disruption_budget(OWNER)
    assert budget["spec"]["maxUnavailable"] == 1
    assert budget["spec"]["selector"]["matchLabels"][LABEL_OWNER] == OWNER.name
    assert budget["metadata"]["ownerReferences"][0]["uid"] == OWNER.uid


def built_objects() -> list[dict[str, Any]]:
    settings = Settings()
    objects: list[dict[str, Any]] = []
    for device in ("hpu", "cuda", "cpu"):
        spec = parse_spec({"model": "bigscience/bloomz-7b1", "device": device, "cards": 2, "replicas": 2})
        objects += build_pods(OWNER, spec, settings)
        group_spec = parse_spec({"model": "bigscience/bloomz", "device": device, "cards": 16})
        objects += [pod for group in build_replicas(OWNER, group_spec, settings) for pod in group]
    objects += [build_service(OWNER), build_service(OWNER, leaders_only=True), build_headless_service(OWNER)]
    objects.append(build_ssh_secret(OWNER, generate_key_pair(comment="test"), "0123456789"))
    objects += [build_network_policy(OWNER, settings.network), build_disruption_budget(OWNER)]
    return objects


@pytest.mark.parametrize("obj", built_objects(), ids=lambda o: f"{o['kind']}-{o['metadata']['name']}")
def test_every_built_object_passes_strict_kubernetes_validation(obj: dict[str, Any]) -> None:
    kubernetes_validate.validate(obj, KUBERNETES_VERSION, strict=True)
