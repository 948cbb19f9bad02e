"""Scheduling for the sandbox's single simulated node: pure functions, no API calls.

This mimics what kube-scheduler decides for one node (resource fit and node selector), so that a
pod asking for more Gaudi cards than the simulated node has stays Pending with the same
message a real cluster shows ("0/1 nodes are available: 1 Insufficient habana.ai/gaudi.").
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
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
