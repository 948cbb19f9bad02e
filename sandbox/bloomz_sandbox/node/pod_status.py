"""Pod status from what the sandbox knows about a pod's processes. Pure functions, no side effects.

The body returned by `pod_status` is what a kubelet reports through the pods/status
subresource: phase, podIP, hostIP, startTime, conditions (PodScheduled, Initialized,
ContainersReady, Ready) and containerStatuses (state, lastState, ready, started, restartCount).
"""

from __future__ import annotations

import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, Literal

ContainerStateKind = Literal["waiting", "running", "terminated"]

WAITING_CREATING = "ContainerCreating"
WAITING_BACKOFF = "CrashLoopBackOff"
WAITING_CREATE_ERROR = "CreateContainerError"


def rfc3339(timestamp: float) -> str:
    return time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(timestamp))


@dataclass(frozen=True)
class Termination:
    exit_code: int
    started_at: float
    finished_at: float
    signal: int | None = None
    message: str = ""  # the termination message (terminationMessagePolicy: FallbackToLogsOnError)

    @property
    def reason(self) -> str:
        return "Completed" if self.exit_code == 0 else "Error"

    def as_status(self) -> dict[str, Any]:
        body: dict[str, Any] = {
            "exitCode": self.exit_code,
            "reason": self.reason,
            "startedAt": rfc3339(self.started_at),
            "finishedAt": rfc3339(self.finished_at),
        }
        if self.signal is not None:
            body["signal"] = self.signal
        if self.message:
            body["message"] = self.message
        return body


@dataclass(frozen=True)
class ContainerView:
    """One container as the runner sees it. `terminated` is set only when it will not restart."""

    name: str
    image: str
    state: ContainerStateKind
    reason: str = ""  # waiting reason
    message: str = ""  # waiting message
    started_at: float | None = None  # of the running process
    process_id: int | None = None
    terminated: Termination | None = None
    last_termination: Termination | None = None
    restart_count: int = 0
    ready: bool = False


@dataclass(frozen=True)
class PodView:
    scheduled: bool
    unschedulable_message: str = ""
    pod_ip: str = ""
    host_ip: str = ""
    start_time: float | None = None
    containers: Sequence[ContainerView] = field(default_factory=tuple)
    qos_class: str = "BestEffort"


def termination_exit_code(returncode: int) -> tuple[int, int | None]:
    """Popen's returncode (negative = killed by a signal) -> (exit code as Kubernetes shows it, signal)."""
    if returncode < 0:
        return 128 - returncode, -returncode
    return returncode, None


# The kubelet's limits for a termination message taken from the log: the last 80 lines, at most 2048 bytes.
FALLBACK_LOG_LINES, FALLBACK_LOG_BYTES = 80, 2048


def fallback_message(container_spec: Mapping[str, Any], exit_code: int, log_tail: bytes) -> str:
    """The termination message of a container that failed with `FallbackToLogsOnError` (no message file in
    the sandbox: its processes cannot write the container's /dev/termination-log)."""
    if exit_code == 0 or container_spec.get("terminationMessagePolicy") != "FallbackToLogsOnError":
        return ""
    lines = log_tail.splitlines()[-FALLBACK_LOG_LINES:]
    return b"\n".join(lines)[-FALLBACK_LOG_BYTES:].decode("utf-8", errors="replace")


def should_restart(restart_policy: str, exit_code: int) -> bool:
    policy = restart_policy or "Always"
    return policy == "Always" or (policy == "OnFailure" and exit_code != 0)


def backoff_seconds(restart_count: int, initial: float, maximum: float) -> float:
    """Delay before restart number `restart_count` (1-based): doubling from `initial`, capped."""
    if restart_count <= 0:
        return 0.0
    return float(min(maximum, initial * (2 ** (restart_count - 1))))


def pod_phase(view: PodView) -> str:
    containers = list(view.containers)
    if not view.scheduled or not containers:
        return "Pending"
    if all(c.terminated is not None for c in containers):
        succeeded = all(c.terminated and c.terminated.exit_code == 0 for c in containers)
        return "Succeeded" if succeeded else "Failed"
    if any(c.state == "running" or c.restart_count > 0 or c.terminated is not None for c in containers):
        return "Running"
    return "Pending"


def container_status(container: ContainerView) -> dict[str, Any]:
    state: dict[str, Any]
    if container.state == "running":
        started = container.started_at if container.started_at is not None else time.time()
        state = {"running": {"startedAt": rfc3339(started)}}
    elif container.state == "terminated" and container.terminated is not None:
        state = {"terminated": container.terminated.as_status()}
    else:
        waiting: dict[str, Any] = {"reason": container.reason or WAITING_CREATING}
        if container.message:
            waiting["message"] = container.message
        state = {"waiting": waiting}
    last_state = {"terminated": container.last_termination.as_status()} if container.last_termination else {}
    return {
        "name": container.name,
        "image": container.image,
        "imageID": "",
        "containerID": f"sandbox://{container.process_id}" if container.process_id else "",
        "ready": container.ready,
        "started": container.state == "running",
        "restartCount": container.restart_count,
        "state": state,
        "lastState": last_state,
    }


def _condition(kind: str, ok: bool, reason: str = "", message: str = "") -> dict[str, Any]:
    body: dict[str, Any] = {"type": kind, "status": "True" if ok else "False"}
    if reason:
        body["reason"] = reason
    if message:
        body["message"] = message
    return body


def pod_conditions(view: PodView) -> list[dict[str, Any]]:
    if not view.scheduled:
        return [_condition("PodScheduled", False, "Unschedulable", view.unschedulable_message)]
    phase = pod_phase(view)
    unready = [c.name for c in view.containers if not c.ready]
    if phase == "Succeeded":
        ready_reason, ready_message = "PodCompleted", ""
    elif unready:
        ready_reason = "ContainersNotReady"
        ready_message = f"containers with unready status: [{' '.join(unready)}]"
    else:
        ready_reason, ready_message = "", ""
    all_ready = not unready and bool(view.containers)
    return [
        _condition("PodScheduled", True),
        _condition("Initialized", True),
        _condition("ContainersReady", all_ready, ready_reason, ready_message),
        _condition("Ready", all_ready, ready_reason, ready_message),
    ]


def with_transition_times(
    conditions: Sequence[Mapping[str, Any]], previous: Sequence[Mapping[str, Any]], now: float
) -> list[dict[str, Any]]:
    """Keep a condition's lastTransitionTime while its status does not change."""
    before = {c.get("type"): c for c in previous}
    result = []
    for condition in conditions:
        old = before.get(condition["type"])
        changed = old is None or old.get("status") != condition["status"] or not old.get("lastTransitionTime")
        stamp = rfc3339(now) if changed or old is None else old["lastTransitionTime"]
        result.append({**condition, "lastProbeTime": None, "lastTransitionTime": stamp})
    return result


def pod_status(view: PodView, previous: Mapping[str, Any] | None, now: float) -> dict[str, Any]:
    """The full status body for the pods/status subresource (None values clear stale fields)."""
    previous = previous or {}
    conditions = with_transition_times(pod_conditions(view), previous.get("conditions") or [], now)
    status: dict[str, Any] = {
        "phase": pod_phase(view),
        "conditions": conditions,
        "hostIP": view.host_ip or None,
        "hostIPs": [{"ip": view.host_ip}] if view.host_ip else None,
        "podIP": view.pod_ip or None,
        "podIPs": [{"ip": view.pod_ip}] if view.pod_ip else None,
        "startTime": rfc3339(view.start_time) if view.start_time is not None else None,
        "containerStatuses": [container_status(c) for c in view.containers] if view.scheduled else None,
        "qosClass": view.qos_class,
    }
    return status
