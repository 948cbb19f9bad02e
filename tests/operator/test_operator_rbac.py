"""RBAC rules: sorted PolicyRules, exactly the declared calls, and the KubeAPI uses only what it declares."""

from __future__ import annotations

import ast
import inspect

from bloomz_operator import kubeapi, rbac

CORE_METHODS = {
    "list_namespaced_pod": ("", "pods", "list"),
    "create_namespaced_pod": ("", "pods", "create"),
    "delete_namespaced_pod": ("", "pods", "delete"),
    "read_namespaced_service": ("", "services", "get"),
    "create_namespaced_service": ("", "services", "create"),
    "delete_namespaced_service": ("", "services", "delete"),
    "patch_namespaced_custom_object_status": ("inference.bloomz.dev", "bloomzinferences/status", "patch"),
    "read_namespaced_secret": ("", "secrets", "get"),
    "create_namespaced_secret": ("", "secrets", "create"),
    "patch_namespaced_secret": ("", "secrets", "patch"),
    "read_namespaced_network_policy": ("networking.k8s.io", "networkpolicies", "get"),
    "create_namespaced_network_policy": ("networking.k8s.io", "networkpolicies", "create"),
    "patch_namespaced_network_policy": ("networking.k8s.io", "networkpolicies", "patch"),
    "read_namespaced_pod_disruption_budget": ("policy", "poddisruptionbudgets", "get"),
    "create_namespaced_pod_disruption_budget": ("policy", "poddisruptionbudgets", "create"),
    "patch_namespaced_pod_disruption_budget": ("policy", "poddisruptionbudgets", "patch"),
}


def granted(rules: list[dict[str, object]]) -> set[tuple[str, str, str]]:
    return {
        (group, resource, verb)
        for rule in rules
        for group in rule["apiGroups"]  # type: ignore[attr-defined]
        for resource in rule["resources"]  # type: ignore[attr-defined]
        for verb in rule["verbs"]  # type: ignore[attr-defined]
    }


def test_rules_are_well_formed_and_sorted() -> None:
    for rules in (rbac.CLUSTER_RULES, rbac.NAMESPACED_RULES):
        keys = [(r["apiGroups"], r["resources"]) for r in rules]
        assert keys == sorted(keys)
        for rule in rules:
            assert set(rule) == {"apiGroups", "resources", "verbs"}
            assert rule["verbs"] == sorted(rule["verbs"]) and "*" not in rule["verbs"]
            assert "*" not in rule["resources"] and "*" not in rule["apiGroups"]


def test_exactly_the_declared_calls_are_granted() -> None:
    assert granted(rbac.NAMESPACED_RULES) == kubeapi.API_CALLS | rbac.KOPF_NAMESPACED_CALLS
    assert granted(rbac.CLUSTER_RULES) == rbac.KOPF_CLUSTER_CALLS
    # Nothing that writes outside the operator's own objects; secrets only to create, read back, rotate
    # the SSH key pairs of multi-node groups (no list/watch; get reads any Secret of a watched namespace).
    everything = granted(rbac.NAMESPACED_RULES) | granted(rbac.CLUSTER_RULES)
    assert {verb for _, resource, verb in everything if resource == "secrets"} == {"create", "get", "patch"}
    assert not any(resource == "secrets" for _, resource, _ in granted(rbac.CLUSTER_RULES))
    assert not any(verb in ("update", "deletecollection", "escalate", "bind") for *_, verb in everything)


def test_kubeapi_declares_every_client_method_it_calls() -> None:
    tree = ast.parse(inspect.getsource(kubeapi))
    called = {
        node.func.attr
        for node in ast.walk(tree)
        if isinstance(node, ast.Call)
        and isinstance(node.func, ast.Attribute)
        and isinstance(node.func.value, ast.Attribute)
        and node.func.value.attr in ("core", "custom", "networking", "policy")
    }
    assert called == set(CORE_METHODS)
    assert {CORE_METHODS[m] for m in called} == kubeapi.API_CALLS


def test_allows() -> None:
    assert rbac.allows(rbac.NAMESPACED_RULES, "", "pods", "create")
    assert not rbac.allows(rbac.NAMESPACED_RULES, "", "pods", "update")
    assert rbac.allows(rbac.CLUSTER_RULES, "apiextensions.k8s.io", "customresourcedefinitions", "watch")
