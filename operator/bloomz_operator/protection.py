"""Pure builders of what protects a resource's pods: its NetworkPolicy and its PodDisruptionBudget.

NetworkPolicy (ingress only): the client ports (gRPC 50051, the OpenAI-compatible HTTP 8000) from the
resource's own namespace, the namespaces the settings list and the operator's namespace (its latency
measurement dials gRPC); the metrics port from the monitoring namespace; and, between the pods of one
resource, any TCP port: Open MPI's out-of-band channel, gloo/HCCL and ssh pick their ports at run time, so
a group's ranks cannot be confined to ssh and the rendezvous port alone. Nothing else reaches the pods.
PodDisruptionBudget: voluntary evictions (node drains) take at most one pod of the resource at a time.
Both are rebuilt on every pass and patched over the resource's own copies when they differ (settings changed).
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from .builders import Owner, common_labels, owner_reference, selector_labels
from .constants import GRPC_PORT, LABEL_OWNER, METRICS_PORT
from .policy import NetworkSettings

# The launcher's --http-port default (the OpenAI-compatible HTTP API).
HTTP_PORT = 8000
NAMESPACE_LABEL = "kubernetes.io/metadata.name"  # set by the API server on every namespace


def policy_name(owner_name: str) -> str:
    return owner_name


def _namespace(name: str) -> dict[str, Any]:
    return {"namespaceSelector": {"matchLabels": {NAMESPACE_LABEL: name}}}


def _tcp(*ports: int) -> list[dict[str, Any]]:
    return [{"protocol": "TCP", "port": port} for port in ports]


def build_network_policy(owner: Owner, network: NetworkSettings) -> dict[str, Any]:
    clients: list[dict[str, Any]] = []
    for namespace in (owner.namespace, *network.client_namespaces):
        peer = _namespace(namespace)
        if network.client_pod_labels:
            peer["podSelector"] = {"matchLabels": dict(network.client_pod_labels)}
        clients.append(peer)
    if network.operator_namespace and network.operator_namespace != owner.namespace:
        clients.append(_namespace(network.operator_namespace))
    monitoring = [_namespace(network.monitoring_namespace or owner.namespace)]
    own_pods = [{"podSelector": {"matchLabels": {LABEL_OWNER: owner.name}}}]
    return {
        "apiVersion": "networking.k8s.io/v1",
        "kind": "NetworkPolicy",
        "metadata": {
            "name": policy_name(owner.name),
            "namespace": owner.namespace,
            "labels": common_labels(owner.name),
            "ownerReferences": [owner_reference(owner)],
        },
        "spec": {
            "podSelector": {"matchLabels": selector_labels(owner.name)},
            "policyTypes": ["Ingress"],
            "ingress": [
                {"from": clients, "ports": _tcp(GRPC_PORT, HTTP_PORT)},
                {"from": monitoring, "ports": _tcp(METRICS_PORT)},
                {"from": own_pods},  # ranks of a group, any port (see the module docstring)
            ],
        },
    }


def build_disruption_budget(owner: Owner) -> dict[str, Any]:
    return {
        "apiVersion": "policy/v1",
        "kind": "PodDisruptionBudget",
        "metadata": {
            "name": owner.name,
            "namespace": owner.namespace,
            "labels": common_labels(owner.name),
            "ownerReferences": [owner_reference(owner)],
        },
        "spec": {"selector": {"matchLabels": selector_labels(owner.name)}, "maxUnavailable": 1},
    }


def protection_patch(existing: Mapping[str, Any], desired: Mapping[str, Any]) -> list[dict[str, Any]] | None:
    """A JSON patch (RFC 6902) bringing our `existing` object to the `desired` spec and labels: the whole
    spec replaced (a cleared setting leaves nothing behind), our labels set, other metadata kept. It first
    tests the resourceVersion it was computed from, so a concurrent writer wins and the next pass decides
    again. None when the object is current."""
    meta = existing.get("metadata") or {}
    labels = {**(meta.get("labels") or {}), **desired["metadata"]["labels"]}
    if existing.get("spec") == desired["spec"] and labels == (meta.get("labels") or {}):
        return None
    patch: list[dict[str, Any]] = []
    if meta.get("resourceVersion"):
        patch.append({"op": "test", "path": "/metadata/resourceVersion", "value": meta["resourceVersion"]})
    return [
        *patch,
        {"op": "add", "path": "/spec", "value": desired["spec"]},  # add = set, present or not
        {"op": "add", "path": "/metadata/labels", "value": labels},
    ]
