"""Pure status computation: observed pods -> phase, conditions (Scheduled / ModelLoaded / Ready), counts.

Reasons and messages are the pods' own (the scheduler's Unschedulable message, the kubelet's image pull or
crash-loop reason with the last exit code), so `kubectl get bloomz -o yaml` says what really happened.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, replace
from typing import Any

from . import pods as podview
from .replicas import group as group_replicas
from .replicas import serves

IMAGE_ERRORS = ("ErrImagePull", "ImagePullBackOff", "InvalidImageName", "ErrImageNeverPull")
CONFIG_ERRORS = ("CreateContainerConfigError", "CreateContainerError", "RunContainerError")
WARNING_PHASES = ("Failed", "Degraded")


@dataclass(frozen=True)
class Diagnosis:
    """What one pod is doing, in the terms of the three conditions."""

    pod: str
    scheduled: bool
    loaded: bool
    ready: bool
    reason: str
    message: str
    failed: bool = False


def _waiting_problem(pod: Mapping[str, Any]) -> tuple[str, str] | None:
    for status in podview.container_statuses(pod):
        waiting = (status.get("state") or {}).get("waiting") or {}
        reason = waiting.get("reason")
        if reason == "CrashLoopBackOff":
            last = (status.get("lastState") or {}).get("terminated") or {}
            code = last.get("exitCode")
            detail = f"exit code {code}" if code is not None else "no exit code"
            if last.get("reason"):
                detail += f" ({last['reason']})"
            restarts = status.get("restartCount")
            if restarts:
                detail += f", {restarts} restarts"
            if last.get("message"):
                # The container's termination message, e.g. a multi-node leader naming the unreachable worker.
                detail += f": {str(last['message']).strip()[:300]}"
            return reason, f"container {status.get('name')} keeps crashing: {detail}"
        if reason in IMAGE_ERRORS or reason in CONFIG_ERRORS:
            return reason, f"container {status.get('name')}: {waiting.get('message') or reason}"
    return None


def diagnose(pod: Mapping[str, Any]) -> Diagnosis:
    name = podview.name_of(pod)
    phase = podview.phase_of(pod)
    sched = podview.condition(pod, "PodScheduled")
    scheduled = bool((pod.get("spec") or {}).get("nodeName")) or (
        sched is not None and sched.get("status") == "True"
    )
    if podview.is_finished(pod):
        message = (pod.get("status") or {}).get("message") or f"pod {phase}"
        reason = (pod.get("status") or {}).get("reason") or f"Pod{phase}"
        return Diagnosis(name, scheduled, False, False, reason, f"{name}: {message}", failed=True)
    if not scheduled:
        if sched is not None and sched.get("status") == "False":
            reason = sched.get("reason") or "Unschedulable"
            return Diagnosis(name, False, False, False, reason, f"{name}: {sched.get('message') or reason}")
        return Diagnosis(name, False, False, False, "Scheduling", f"{name}: waiting for the scheduler")
    problem = _waiting_problem(pod)
    if problem is not None:
        return Diagnosis(name, True, False, False, problem[0], f"{name}: {problem[1]}", failed=True)
    statuses = podview.container_statuses(pod)
    started = phase == "Running" and bool(statuses) and all(s.get("started") for s in statuses)
    if podview.is_ready(pod):
        return Diagnosis(name, True, True, True, "Serving", f"{name}: serving")
    if started:
        return Diagnosis(
            name, True, True, False, "NotReady", f"{name}: model loaded, readiness probe failing"
        )
    if phase == "Running":
        return Diagnosis(name, True, False, False, "Loading", f"{name}: loading the model and warming up")
    waiting = next(
        (
            w
            for w in (((st.get("state") or {}).get("waiting") or {}) for st in statuses)
            if w.get("reason") or w.get("message")
        ),
        {},
    )
    # The kubelet's own words while it prepares the container (e.g. pulling a large image).
    detail = f": {str(waiting['message']).strip()[:300]}" if waiting.get("message") else ""
    return Diagnosis(
        name,
        True,
        False,
        False,
        waiting.get("reason") or "ContainerCreating",
        f"{name}: starting the container ({phase}){detail}",
    )


def diagnose_member(pod: Mapping[str, Any]) -> Diagnosis:
    """`diagnose`, except that a worker of a multi-node group loads nothing itself: it is done once its
    sshd accepts connections (the leader's readiness says when the group's model is loaded)."""
    found = diagnose(pod)
    if not podview.is_worker(pod) or found.failed or not found.scheduled or found.ready:
        return found
    if podview.phase_of(pod) == "Running":
        return replace(found, reason="StartingSSH", message=f"{found.pod}: worker starting sshd")
    return found


def _condition(type_: str, ok: bool, reason: str, message: str) -> dict[str, Any]:
    return {"type": type_, "status": "True" if ok else "False", "reason": reason, "message": message}


def _first_problem(diagnoses: Sequence[Diagnosis], predicate: Any) -> Diagnosis | None:
    # Failures first: they are what a user must act on.
    bad = [d for d in diagnoses if not predicate(d)]
    bad.sort(key=lambda d: not d.failed)
    return bad[0] if bad else None


def compute_status(
    *,
    replicas: int,
    observed: Sequence[Mapping[str, Any]],
    current_hash: str,
    endpoint: str,
    generation: int | None,
    previous_conditions: Sequence[Mapping[str, Any]] = (),
    now: str,
    nodes: int = 1,
) -> dict[str, Any]:
    """The status block, given the owned pods (any template) and the desired replica count.

    Each replica is a group of `nodes` pods (one on a single node), which counts (and serves) as one
    replica only when it is complete and its leader is ready."""
    live = [pod for pod in observed if not podview.is_terminating(pod)]
    # The conditions speak about the current template's pods (the ones the spec asked for).
    current = [pod for pod in live if podview.hash_of(pod) == current_hash]
    units = group_replicas(live)
    # Replicas of an earlier template may have had another size: complete as far as can be told.
    ready_count = sum(serves(pods, nodes if key[0] == current_hash else None) for key, pods in units.items())
    current_units = [pods for key, pods in units.items() if key[0] == current_hash]
    diagnoses = [diagnose_member(pod) for pod in sorted(current, key=podview.name_of)]
    missing = max(0, replicas - len(current_units))
    current_ready = sum(serves(pods, nodes) for pods in current_units)
    live_replicas = len(units)

    if replicas == 0:
        conditions = [
            _condition("Scheduled", True, "ScaledToZero", "no replicas requested"),
            _condition("ModelLoaded", False, "ScaledToZero", "no replicas requested"),
            _condition("Ready", False, "ScaledToZero", "no replicas requested"),
        ]
        phase = "Stopped"
    else:
        not_created = f"{missing} of {replicas} pod(s) not created yet"
        unscheduled = _first_problem(diagnoses, lambda d: d.scheduled)
        if unscheduled is not None:
            scheduled = _condition("Scheduled", False, unscheduled.reason, unscheduled.message)
        elif missing:
            scheduled = _condition("Scheduled", False, "PodsPending", not_created)
        else:
            scheduled = _condition("Scheduled", True, "AllScheduled", f"{len(current)} pod(s) scheduled")
        not_loaded = _first_problem(diagnoses, lambda d: d.loaded)
        if not_loaded is not None:
            loaded = _condition("ModelLoaded", False, not_loaded.reason, not_loaded.message)
        elif missing:
            loaded = _condition("ModelLoaded", False, "PodsPending", not_created)
        else:
            loaded = _condition(
                "ModelLoaded", True, "Loaded", "the model is loaded and warmed up in every pod"
            )
        if ready_count >= replicas and current_ready >= replicas:
            ready = _condition("Ready", True, "Serving", f"{ready_count}/{replicas} replicas serving")
        else:
            blocker = _first_problem(diagnoses, lambda d: d.ready)
            reason = blocker.reason if blocker is not None else "PodsPending"
            ready = _condition("Ready", False, reason, f"{ready_count}/{replicas} replicas serving")
        conditions = [scheduled, loaded, ready]
        failed = any(d.failed for d in diagnoses)
        if ready["status"] == "True":
            phase = "Ready"
        elif ready_count > 0:
            phase = "Degraded"
        elif failed:
            phase = "Failed"
        elif any(d.scheduled for d in diagnoses):
            phase = "Loading"
        else:
            phase = "Pending"

    previous = {c.get("type"): c for c in previous_conditions}
    for cond in conditions:
        before = previous.get(cond["type"])
        same = (
            before is not None and before.get("status") == cond["status"] and before.get("lastTransitionTime")
        )
        cond["lastTransitionTime"] = before["lastTransitionTime"] if same and before else now
    status: dict[str, Any] = {
        "phase": phase,
        "conditions": conditions,
        "replicas": live_replicas,
        "readyReplicas": ready_count,
        "endpoint": endpoint,
        "templateHash": current_hash,
    }
    if generation is not None:
        status["observedGeneration"] = generation
    return status


@dataclass(frozen=True)
class StatusEvent:
    type: str  # "Normal" | "Warning"
    reason: str
    message: str


def status_events(old: Mapping[str, Any] | None, new: Mapping[str, Any]) -> list[StatusEvent]:
    """Kubernetes Events worth posting for a status change: phase changes, and newly seen failures."""
    old = old or {}
    events: list[StatusEvent] = []
    if old.get("phase") != new.get("phase"):
        kind = "Warning" if new.get("phase") in WARNING_PHASES else "Normal"
        message = f"phase {old.get('phase') or 'None'} -> {new.get('phase')}"
        ready = next((c for c in new.get("conditions", ()) if c["type"] == "Ready"), None)
        if ready is not None:
            message += f": {ready['message']}"
        events.append(StatusEvent(kind, f"Phase{new.get('phase')}", message))
    old_conditions = {c.get("type"): c for c in old.get("conditions") or ()}
    warned: set[str] = set()
    for cond in new.get("conditions", ()):
        before = old_conditions.get(cond["type"], {})
        quiet = cond["reason"] in (
            "PodsPending",
            "Scheduling",
            "Loading",
            "ScaledToZero",
            "ContainerCreating",
            "NotReady",
            "StartingSSH",
        )
        changed = (before.get("reason"), before.get("message")) != (cond["reason"], cond["message"])
        # One warning per new problem, even when it blocks several conditions.
        if cond["status"] == "False" and not quiet and changed and cond["reason"] not in warned:
            warned.add(cond["reason"])
            events.append(StatusEvent("Warning", cond["reason"], f"{cond['type']}: {cond['message']}"))
    return events
