"""Scheduling for the sandbox's simulated nodes: pure functions, no API calls.

This mimics what kube-scheduler decides (resource fit, node selector, required pod anti-affinity), so
that a pod asking for more Gaudi cards than a simulated node has stays Pending with the same message a
real cluster shows ("0/1 nodes are available: 1 Insufficient habana.ai/gaudi."), and the pods of a
multi-node group land on distinct nodes ("0/2 nodes are available: 1 Insufficient habana.ai/gaudi,
1 node(s) didn't match pod anti-affinity rules.").
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from decimal import Decimal
from typing import Any

from kubernetes.utils.quantity import parse_quantity

ResourceAmounts = dict[str, Decimal]

GAUDI_RESOURCE = "habana.ai/gaudi"
NVIDIA_GPU_RESOURCE = "nvidia.com/gpu"
# Devices this machine does not have: pods asking for them are scheduled but never started.
ACCELERATOR_RESOURCES = (GAUDI_RESOURCE, NVIDIA_GPU_RESOURCE)


def parse_amounts(values: Mapping[str, Any]) -> ResourceAmounts:
    """Kubernetes quantities ("500m", "4Gi", 8) -> exact decimals."""
    return {name: Decimal(parse_quantity(value)) for name, value in values.items()}


def _container_requests(container: Mapping[str, Any]) -> ResourceAmounts:
    # Like the API server's defaulting: a resource with a limit and no request requests its limit.
    resources = container.get("resources") or {}
    amounts = parse_amounts(resources.get("limits") or {})
    amounts.update(parse_amounts(resources.get("requests") or {}))
    return amounts


def _add(total: ResourceAmounts, extra: Mapping[str, Decimal]) -> None:
    for name, amount in extra.items():
        total[name] = total.get(name, Decimal(0)) + amount


def pod_requests(pod: Mapping[str, Any]) -> ResourceAmounts:
    """Effective requests of a pod: sum over containers, at least the largest init container."""
    spec = pod.get("spec") or {}
    total: ResourceAmounts = {}
    for container in spec.get("containers") or []:
        _add(total, _container_requests(container))
    for init_container in spec.get("initContainers") or []:
        for name, amount in _container_requests(init_container).items():
            total[name] = max(total.get(name, Decimal(0)), amount)
    return total


def sum_requests(pods: Iterable[Mapping[str, Any]]) -> ResourceAmounts:
    total: ResourceAmounts = {}
    for pod in pods:
        _add(total, pod_requests(pod))
    return total


def insufficient_resources(
    requests: Mapping[str, Decimal], allocatable: Mapping[str, Decimal], used: Mapping[str, Decimal]
) -> list[str]:
    """Resource names whose request does not fit in allocatable minus used, sorted like the scheduler."""
    short: list[str] = []
    for name, amount in requests.items():
        if amount <= 0:
            continue
        free = allocatable.get(name, Decimal(0)) - used.get(name, Decimal(0))
        if amount > free:
            short.append(name)
    return sorted(short)


def node_selector_matches(node_selector: Mapping[str, str] | None, node_labels: Mapping[str, str]) -> bool:
    return all(node_labels.get(key) == value for key, value in (node_selector or {}).items())


def unschedulable_reasons(
    pod: Mapping[str, Any],
    allocatable: Mapping[str, Decimal],
    used: Mapping[str, Decimal],
    node_labels: Mapping[str, str],
    bound_pod_count: int = 0,
) -> list[str]:
    """Why the pod does not fit the node, as kube-scheduler words each reason; [] when it fits."""
    spec = pod.get("spec") or {}
    if not node_selector_matches(spec.get("nodeSelector"), node_labels):
        return ["node(s) didn't match Pod's node affinity/selector"]
    reasons: list[str] = []
    max_pods = allocatable.get("pods")
    if max_pods is not None and bound_pod_count + 1 > max_pods:
        reasons.append("Too many pods")
    requests = {name: amount for name, amount in pod_requests(pod).items() if name != "pods"}
    reasons.extend(f"Insufficient {name}" for name in insufficient_resources(requests, allocatable, used))
    return reasons


def scheduler_message(reasons: Iterable[str], node_count: int = 1) -> str:
    """kube-scheduler's FailedScheduling message for reasons that each apply to every node."""
    parts = ", ".join(f"{node_count} {reason}" for reason in sorted(reasons))
    return f"0/{node_count} nodes are available: {parts}."


def nodes_unavailable_message(reasons_by_node: Sequence[Iterable[str]]) -> str:
    """kube-scheduler's FailedScheduling message: each reason with the number of nodes it applies to."""
    counts = Counter(reason for reasons in reasons_by_node for reason in set(reasons))
    parts = ", ".join(f"{counts[reason]} {reason}" for reason in sorted(counts))
    return f"0/{len(reasons_by_node)} nodes are available: {parts}."


ANTI_AFFINITY_MISMATCH = "node(s) didn't match pod anti-affinity rules"
EXISTING_ANTI_AFFINITY_MISMATCH = "node(s) didn't satisfy existing pods anti-affinity rules"


@dataclass(frozen=True)
class NodeState:
    """A node as the scheduler sees it: its labels, room, and the pods already bound to it."""

    name: str
    labels: Mapping[str, str]
    allocatable: Mapping[str, Decimal]
    pods: Sequence[Mapping[str, Any]] = field(default_factory=tuple)

    @property
    def used(self) -> ResourceAmounts:
        return sum_requests(self.pods)


def _expression_matches(expression: Mapping[str, Any], labels: Mapping[str, str]) -> bool:
    key, operator = expression["key"], expression["operator"]
    values = [str(v) for v in expression.get("values") or []]
    if operator == "In":
        return key in labels and labels[key] in values
    if operator == "NotIn":
        return key not in labels or labels[key] not in values
    if operator == "Exists":
        return key in labels
    if operator == "DoesNotExist":
        return key not in labels
    raise ValueError(f"label selector operator {operator!r} is not supported")


def label_selector_matches(selector: Mapping[str, Any] | None, labels: Mapping[str, str]) -> bool:
    """A metav1.LabelSelector: matchLabels and matchExpressions all hold. A missing selector matches
    nothing (as in affinity terms), an empty one matches everything."""
    if selector is None:
        return False
    match_labels = selector.get("matchLabels") or {}
    if any(labels.get(key) != str(value) for key, value in match_labels.items()):
        return False
    return all(_expression_matches(e, labels) for e in selector.get("matchExpressions") or [])


def _required_anti_affinity_terms(pod: Mapping[str, Any]) -> list[Mapping[str, Any]]:
    affinity = ((pod.get("spec") or {}).get("affinity") or {}).get("podAntiAffinity") or {}
    return list(affinity.get("requiredDuringSchedulingIgnoredDuringExecution") or [])


def _namespace(pod: Mapping[str, Any]) -> str:
    return str((pod.get("metadata") or {}).get("namespace") or "default")


def _term_selects(term: Mapping[str, Any], owner: Mapping[str, Any], other: Mapping[str, Any]) -> bool:
    """Whether `owner`'s affinity term selects `other` (term namespaces default to the owner's own)."""
    namespaces = term.get("namespaces") or [_namespace(owner)]
    if _namespace(other) not in namespaces:
        return False
    labels = (other.get("metadata") or {}).get("labels") or {}
    return label_selector_matches(term.get("labelSelector"), labels)


def _same_topology(term: Mapping[str, Any], node: NodeState, other_node: NodeState) -> bool:
    key = term.get("topologyKey") or ""
    return key in node.labels and other_node.labels.get(key) == node.labels[key]


def anti_affinity_reasons(pod: Mapping[str, Any], node: NodeState, nodes: Sequence[NodeState]) -> list[str]:
    """Required pod anti-affinity, both ways, as kube-scheduler's InterPodAffinity filter reports it (one
    reason, the pod's own terms checked first): the pod's terms against pods in the node's topology domain
    (a node without the topology key is not constrained), then existing pods' terms against the pod."""
    neighbours = [(other, bound) for other in nodes for bound in other.pods]
    for term in _required_anti_affinity_terms(pod):
        if any(_same_topology(term, node, other) and _term_selects(term, pod, b) for other, b in neighbours):
            return [ANTI_AFFINITY_MISMATCH]
    for other, bound in neighbours:
        if any(
            _same_topology(term, node, other) and _term_selects(term, bound, pod)
            for term in _required_anti_affinity_terms(bound)
        ):
            return [EXISTING_ANTI_AFFINITY_MISMATCH]
    return []


def node_reasons(pod: Mapping[str, Any], node: NodeState, nodes: Sequence[NodeState]) -> list[str]:
    """Why the pod does not fit this node (kube-scheduler's words); [] when it fits. Like the scheduler's
    filter chain, the first failing check decides: node selector, then resources, then pod anti-affinity."""
    reasons = unschedulable_reasons(pod, node.allocatable, node.used, node.labels, len(node.pods))
    return reasons or anti_affinity_reasons(pod, node, nodes)


def choose_node(pod: Mapping[str, Any], nodes: Sequence[NodeState]) -> tuple[str | None, str]:
    """The first node (in the given order) the pod fits, or None and the FailedScheduling message."""
    reasons_by_node = []
    for node in nodes:
        reasons = node_reasons(pod, node, nodes)
        if not reasons:
            return node.name, ""
        reasons_by_node.append(reasons)
    return None, nodes_unavailable_message(reasons_by_node)


def requested_accelerators(pod: Mapping[str, Any]) -> list[str]:
    """Accelerator resources the pod asks for (the sandbox cannot run such pods)."""
    requests = pod_requests(pod)
    return [name for name in ACCELERATOR_RESOURCES if requests.get(name, Decimal(0)) > 0]


def qos_class(pod: Mapping[str, Any]) -> str:
    """The pod's QoS class from its containers' cpu/memory requests and limits (as the API server sets it)."""
    containers = list((pod.get("spec") or {}).get("containers") or [])
    guaranteed, anything = True, False
    for container in containers:
        resources = container.get("resources") or {}
        limits = parse_amounts(
            {k: v for k, v in (resources.get("limits") or {}).items() if k in ("cpu", "memory")}
        )
        requests = parse_amounts(
            {k: v for k, v in (resources.get("requests") or {}).items() if k in ("cpu", "memory")}
        )
        anything = anything or bool(limits) or bool(requests)
        for name in ("cpu", "memory"):
            if name not in limits or requests.get(name, limits[name]) != limits[name]:
                guaranteed = False
    if not anything:
        return "BestEffort"
    return "Guaranteed" if guaranteed and containers else "Burstable"
