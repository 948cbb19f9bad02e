"""The chart's admission policy, operator NetworkPolicy and namespace scoping.

The ValidatingAdmissionPolicy's CEL expressions are evaluated here with cel-python against the same specs
the operator's own policy check (bloomz_operator.policy) judges, with the settings the chart renders for
the operator: both must accept and refuse exactly the same specs.
"""

from __future__ import annotations

import json
from typing import Any

import celpy
import kubernetes_validate
import pytest
import yaml
from bloomz_operator.policy import violations
from bloomz_operator.rbac import NAMESPACED_RULES
from bloomz_operator.settings import Settings, parse_settings
from bloomz_operator.spec import parse_spec
from conftest import RELEASE_NAMESPACE, Render, helm_template, only, single

KUBERNETES = "1.31.0"
STRICT_POLICY = {
    "hostPathPrefixes": ["/data/", "/mnt/models"],
    "allowedImagePrefixes": ["registry.example.com/ml/"],
    "allowedTolerationKeys": ["habana.ai/gaudi"],
    "allowEnvSecrets": False,
}
OPEN_POLICY = {"hostPathPrefixes": ["/"], "allowedTolerationKeys": None, "allowEnvSecrets": True}
BASE = {"model": "bigscience/bloomz-7b1", "device": "hpu", "cards": 8}
SECRET_ENV = {"name": "TOKEN", "valueFrom": {"secretKeyRef": {"name": "t", "key": "k"}}}
SPECS = [
    {},
    {"storage": {"pvc": {"claimName": "models"}}},
    {"storage": {"hostPath": {"path": "/data"}}},
    {"storage": {"hostPath": {"path": "/data/bloom"}}},
    {"storage": {"hostPath": {"path": "/database"}}},
    {"storage": {"hostPath": {"path": "/data/../etc"}}},
    {"storage": {"hostPath": {"path": "/mnt/models/x"}}},
    {"storage": {"hostPath": {"path": "/"}}},
    {"image": "registry.example.com/ml/runtime:1"},
    {"image": "docker.io/someone/runtime:1"},
    {"tolerations": [{"key": "habana.ai/gaudi", "operator": "Exists"}]},
    {"tolerations": [{"operator": "Exists"}]},
    {"tolerations": [{"key": "node.kubernetes.io/unreachable"}]},
    {"env": [{"name": "A", "value": "1"}]},
    {"env": [{"name": "A", "value": "1"}, SECRET_ENV]},
    {"env": [{"name": "B", "valueFrom": {"fieldRef": {"fieldPath": "metadata.name"}}}]},
]


def rendered(render: Render, policy: dict[str, Any] | None) -> tuple[list[dict[str, Any]], Settings]:
    extra = ("--set-json", f"config.policy={json.dumps(policy)}") if policy is not None else ()
    objects = render("--kube-version", KUBERNETES, *extra)
    config_map = single(objects, "ConfigMap")
    return objects, parse_settings(yaml.safe_load(config_map["data"]["settings.yaml"]))


def admits(validations: list[dict[str, Any]], spec: dict[str, Any]) -> bool:
    env = celpy.Environment()
    activation = {"object": celpy.json_to_cel({"spec": spec})}
    return all(bool(env.program(env.compile(v["expression"])).evaluate(activation)) for v in validations)


@pytest.mark.parametrize("policy", [None, STRICT_POLICY, OPEN_POLICY], ids=["default", "strict", "open"])
def test_admission_policy_decides_like_the_operator(render: Render, policy: dict[str, Any] | None) -> None:
    objects, settings = rendered(render, policy)
    vap = single(objects, "ValidatingAdmissionPolicy")
    binding = single(objects, "ValidatingAdmissionPolicyBinding")
    for obj in (vap, binding):
        kubernetes_validate.validate(obj, KUBERNETES, strict=True)
    assert binding["spec"]["policyName"] == vap["metadata"]["name"]
    assert binding["spec"]["validationActions"] == ["Deny"]
    decisions = []
    for extra in SPECS:
        spec = BASE | extra
        operator_ok = not violations(parse_spec(spec), settings.policy)
        assert admits(vap["spec"]["validations"], spec) is operator_ok, (spec, settings.policy)
        decisions.append(operator_ok)
    assert True in decisions and (policy == OPEN_POLICY or False in decisions)  # the cases tell apart


def test_admission_policy_is_switchable_and_needs_kubernetes_1_30(render: Render) -> None:
    assert not only(render("--set", "admissionPolicy.enabled=false"), "ValidatingAdmissionPolicy")
    assert not only(render("--kube-version", "1.29.0"), "ValidatingAdmissionPolicy")


def test_default_install_watches_its_own_namespace_with_a_role(render: Render) -> None:
    objects = render()
    (role,) = only(objects, "Role")
    assert role["metadata"]["namespace"] == RELEASE_NAMESPACE and role["rules"] == NAMESPACED_RULES
    cluster_role = single(objects, "ClusterRole")
    assert not any(rule["resources"] == ["pods"] for rule in cluster_role["rules"])
    settings = yaml.safe_load(single(objects, "ConfigMap")["data"]["settings.yaml"])
    assert settings["namespaces"] == [RELEASE_NAMESPACE]
    assert settings["network"]["operatorNamespace"] == RELEASE_NAMESPACE


def test_cluster_wide_is_an_explicit_choice(render: Render) -> None:
    objects = render("--set", "watchAllNamespaces=true")
    assert not only(objects, "Role")
    granted = single(objects, "ClusterRole")["rules"]
    assert all(rule in granted for rule in NAMESPACED_RULES)
    assert yaml.safe_load(single(objects, "ConfigMap")["data"]["settings.yaml"])["namespaces"] == []
    both = helm_template("--set", "watchAllNamespaces=true", "--set", "watchNamespaces={team-a}", check=False)
    assert both.returncode != 0 and "exclude each other" in both.stderr


def test_operator_network_policy_opens_only_liveness_dns_api_and_runtime_grpc(render: Render) -> None:
    policy = single(render(), "NetworkPolicy")
    (ingress,) = policy["spec"]["ingress"]
    assert ingress["ports"] == [{"protocol": "TCP", "port": 8080}] and "from" not in ingress
    ports = {(p["protocol"], p["port"]) for rule in policy["spec"]["egress"] for p in rule["ports"]}
    assert ports == {("UDP", 53), ("TCP", 53), ("TCP", 443), ("TCP", 6443), ("TCP", 50051)}
    assert not only(render("--set", "networkPolicy.enabled=false"), "NetworkPolicy")
