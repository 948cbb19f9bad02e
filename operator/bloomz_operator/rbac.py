"""The operator's RBAC rules, least privilege; the Helm chart renders exactly these.

NAMESPACED_RULES: what the operator needs in each watched namespace (bound with a RoleBinding per namespace,
or with a ClusterRoleBinding when it watches all namespaces). CLUSTER_RULES: what it needs cluster-wide.
The operator runs `--standalone` (one replica, no Kopf peering), so no peering rules are granted.
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

from .constants import GROUP, PLURAL
from .kubeapi import API_CALLS

# Kopf's own calls, per watched namespace: watch the resources, patch them (finalizers, its progress
# annotations), patch their status subresource, post Kubernetes events, watch the pods (a pod change wakes
# its owner's reconciliation).
KOPF_NAMESPACED_CALLS: frozenset[tuple[str, str, str]] = frozenset(
    {
        ("", "pods", "list"),
        ("", "pods", "watch"),
        (GROUP, PLURAL, "list"),
        (GROUP, PLURAL, "watch"),
        (GROUP, PLURAL, "patch"),
        (GROUP, f"{PLURAL}/status", "patch"),
        ("", "events", "create"),
    }
)
# Kopf's own calls, cluster-wide: CRD discovery (it notices when the CRD appears or changes) and namespaces
# (to follow namespace patterns and cluster-wide watching).
KOPF_CLUSTER_CALLS: frozenset[tuple[str, str, str]] = frozenset(
    {
        ("apiextensions.k8s.io", "customresourcedefinitions", "list"),
        ("apiextensions.k8s.io", "customresourcedefinitions", "watch"),
        ("", "namespaces", "list"),
        ("", "namespaces", "watch"),
    }
)


def rules_for(calls: Iterable[tuple[str, str, str]]) -> list[dict[str, Any]]:
    """PolicyRules (one per group and resource, verbs sorted) covering exactly `calls`."""
    verbs: dict[tuple[str, str], set[str]] = {}
    for group, resource, verb in calls:
        verbs.setdefault((group, resource), set()).add(verb)
    return [
        {"apiGroups": [group], "resources": [resource], "verbs": sorted(verbs[group, resource])}
        for group, resource in sorted(verbs)
    ]


NAMESPACED_RULES: list[dict[str, Any]] = rules_for(API_CALLS | KOPF_NAMESPACED_CALLS)
CLUSTER_RULES: list[dict[str, Any]] = rules_for(KOPF_CLUSTER_CALLS)


def allows(rules: Iterable[dict[str, Any]], group: str, resource: str, verb: str) -> bool:
    return any(
        group in rule["apiGroups"] and resource in rule["resources"] and verb in rule["verbs"]
        for rule in rules
    )
