"""A replica is a group of `spec.nodes` pods (one pod on a single node): its key, the grouping of observed
pods into replicas, and what a replica is doing (serving, holding devices, ended, broken).

Every pod of a replica carries the template hash and the replica index; member 0 is the leader (it
serves, and is the only member of a single-node replica), the others are workers. The planner and the
status read replicas only through this module, so both count and judge them the same way.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from . import pods as podview

Pod = Mapping[str, Any]
# (template hash, replica index); a pod without a readable index is a replica of its own, keyed by name.
ReplicaKey = tuple[str | None, int | str]


def key_of(pod: Pod) -> ReplicaKey:
    index = podview.index_of(pod)
    return podview.hash_of(pod), index if index is not None else podview.name_of(pod)


def group(pods: Sequence[Pod]) -> dict[ReplicaKey, list[Pod]]:
    """The pods by replica, in the order they were observed."""
    replicas: dict[ReplicaKey, list[Pod]] = {}
    for pod in pods:
        replicas.setdefault(key_of(pod), []).append(pod)
    return replicas


def leaders(pods: Sequence[Pod]) -> list[Pod]:
    return [pod for pod in pods if podview.member_of(pod) == 0]


def serves(pods: Sequence[Pod], size: int | None = None) -> bool:
    """Complete (`size` pods, when the size is known), nothing going away or ended, its leader ready."""
    if size is not None and len(pods) != size:
        return False
    if any(podview.is_terminating(pod) or podview.is_finished(pod) for pod in pods):
        return False
    found = leaders(pods)
    return bool(found) and all(podview.is_ready(pod) for pod in found)


def is_going(pods: Sequence[Pod]) -> bool:
    """Some pod of it is being deleted."""
    return any(podview.is_terminating(pod) for pod in pods)


def is_gone(pods: Sequence[Pod]) -> bool:
    """Every pod of it is being deleted: nothing is left to act on."""
    return all(podview.is_terminating(pod) for pod in pods)


def has_ended(pods: Sequence[Pod]) -> bool:
    """Every pod of it ended (Failed/Succeeded) and none is being deleted: it holds no devices any more
    (the kubelet released them) and serves nothing."""
    return all(podview.is_finished(pod) and not podview.is_terminating(pod) for pod in pods)


def is_orphaned(pods: Sequence[Pod]) -> bool:
    """Workers whose leader is gone: they serve nothing (a single-node pod has no role and is never one)."""
    return podview.role_of(pods[0]) is not None and not leaders(pods)


def role_name(member: int) -> str:
    return "leader" if member == 0 else "worker"


@dataclass(frozen=True)
class ReplicaFailure:
    """Why a replica of the current template is broken: the member that failed or vanished."""

    group: int
    pod: str
    role: str
    reason: str
    message: str


def failure_of(index: int, wanted: Sequence[Pod], found: Sequence[Pod]) -> ReplicaFailure | None:
    """The first member (leader first) that keeps a replica with live pods from ever serving again as it
    is: ended, deleted or gone. None while nothing is broken, or when no live pod is left (nothing to
    recreate yet, or still going away)."""
    if all(podview.is_terminating(pod) for pod in found):
        return None
    by_name = {podview.name_of(pod): pod for pod in found}
    for member, want in enumerate(wanted):
        name = podview.name_of(want)
        role = role_name(member)
        pod = by_name.get(name)
        if pod is None:
            return ReplicaFailure(index, name, role, "MemberLost", f"pod {name} is gone")
        if podview.is_terminating(pod):
            return ReplicaFailure(index, name, role, "MemberDeleted", f"pod {name} was deleted")
        if podview.is_finished(pod):
            status = pod.get("status") or {}
            reason = str(status.get("reason") or f"Pod{podview.phase_of(pod)}")
            detail = status.get("message") or f"pod {podview.phase_of(pod)}"
            return ReplicaFailure(index, name, role, reason, f"pod {name}: {detail}")
    return None


def find_broken(desired: Sequence[Sequence[Pod]], observed: Sequence[Pod]) -> list[ReplicaFailure]:
    """The replicas of the current template that still have live pods but can never serve again as they
    are. A partial replica never serves."""
    replicas = group(observed)
    failures = []
    for index, wanted in enumerate(desired):
        found = replicas.get((podview.hash_of(wanted[0]), index), [])
        failure = failure_of(index, wanted, found)
        if failure is not None:
            failures.append(failure)
    return failures


def leader_first(pods: Sequence[Pod]) -> list[Pod]:
    """The pods of a replica to delete now: its leader alone while it may still be draining requests (the
    workers run its ranks; killing them first would fail what it accepted), the workers once it is gone or
    ended. Pods already terminating are not deleted twice."""
    draining = [pod for pod in leaders(pods) if not podview.is_finished(pod)]
    if draining:
        return [pod for pod in draining if not podview.is_terminating(pod)]
    return [pod for pod in pods if not podview.is_terminating(pod)]
