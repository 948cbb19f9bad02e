"""What the sandbox main job prints while it waits: one line per resource or pod, printed again
only when it changes. Pure functions over the objects read from the API server."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

CONDITION_TYPES = ("Scheduled", "ModelLoaded", "Ready")


def _condition_text(condition: Mapping[str, Any]) -> str:
    text = f"{condition.get('type')}={condition.get('status')}"
    if condition.get("status") != "True":
        detail = ": ".join(str(condition[k]) for k in ("reason", "message") if condition.get(k))
        if detail:
            text += f" ({detail})"
    return text


def latency_text(latency: Mapping[str, Any] | None) -> str:
    if not latency or latency.get("seconds") is None:
        return "latency not measured yet"
    text = f"latency {float(latency['seconds']):.3f} s"
    if latency.get("maxNewTokens"):
        text += f" for {latency['maxNewTokens']} tokens"
    if latency.get("tokensPerSecond") is not None:
        text += f" ({float(latency['tokensPerSecond']):.1f} tokens/s)"
    return text


def resource_line(resource: Mapping[str, Any]) -> str:
    name = (resource.get("metadata") or {}).get("name", "?")
    status = resource.get("status") or {}
    conditions = {c.get("type"): c for c in status.get("conditions") or []}
    parts = [f"phase {status.get('phase') or 'unknown'}"]
    parts += [_condition_text(conditions[kind]) for kind in CONDITION_TYPES if kind in conditions]
    if "replicas" in status:
        parts.append(f"ready replicas {status.get('readyReplicas') or 0}/{status.get('replicas')}")
    parts.append(latency_text(status.get("latency")))
    return f"{name}: " + ", ".join(parts)


def pod_line(pod: Mapping[str, Any]) -> str:
    name = (pod.get("metadata") or {}).get("name", "?")
    status = pod.get("status") or {}
    parts = [status.get("phase") or "Pending"]
    containers = status.get("containerStatuses") or []
    if containers:
        ready = sum(1 for c in containers if c.get("ready"))
        parts.append(f"ready {ready}/{len(containers)}")
        parts.append(f"restarts {sum(int(c.get('restartCount') or 0) for c in containers)}")
    if status.get("podIP"):
        parts.append(f"IP {status['podIP']}")
    for condition in status.get("conditions") or []:
        if condition.get("type") == "PodScheduled" and condition.get("status") == "False":
            parts.append(f"unschedulable: {condition.get('message', '')}")
    for container in containers:
        waiting = (container.get("state") or {}).get("waiting")
        if waiting:
            detail = waiting.get("reason", "")
            if waiting.get("message"):
                detail += f": {waiting['message']}"
            parts.append(f"{container.get('name')} waiting ({detail})")
    if (pod.get("metadata") or {}).get("deletionTimestamp"):
        parts.append("terminating")
    return f"pod {name}: " + ", ".join(parts)


def changes(previous: Mapping[str, str], current: Mapping[str, str]) -> list[str]:
    """Lines that are new or different since last time, plus a note for what disappeared."""
    lines = [line for key, line in current.items() if previous.get(key) != line]
    lines += [f"{key}: gone" for key in previous if key not in current]
    return lines


def condition_types(resource: Mapping[str, Any]) -> set[str]:
    return {str(c.get("type")) for c in (resource.get("status") or {}).get("conditions") or []}


def condition_true(resource: Mapping[str, Any], kind: str) -> bool:
    return any(
        c.get("type") == kind and c.get("status") == "True"
        for c in (resource.get("status") or {}).get("conditions") or []
    )


def ready_with_latency(resource: Mapping[str, Any]) -> bool:
    """Ready, measured, and the status describes the current spec (observedGeneration)."""
    status = resource.get("status") or {}
    generation = (resource.get("metadata") or {}).get("generation")
    observed = status.get("observedGeneration")
    current = generation is None or observed is None or observed >= generation
    latency = status.get("latency") or {}
    return condition_true(resource, "Ready") and latency.get("seconds") is not None and current
