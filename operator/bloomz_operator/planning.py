"""Pure reconciliation planning: (desired pods, observed pods) -> the actions that move one towards the other.

Rules:
- a desired pod (deterministic name) that does not exist is created, while the number of existing pods
  stays within `replicas + maxSurge`, so no more than `cards x (replicas + maxSurge)` devices are asked for;
- finished (Failed/Succeeded) pods are deleted, and re-created on a later pass once gone;
- pods of the current template beyond `replicas` are deleted (scale down);
- pods of an old template are replaced: not-ready ones are deleted as soon as their room is needed; a
  ready one only when nothing is terminating and every current pod is ready (one replica at a time);
- terminating pods still hold their devices: they count, and nothing is done to them.
Running the plan twice on the same observation gives the same actions; creating an existing name is a
no-op for the handlers (409), so an operator restart never duplicates a pod.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from . import pods as podview


@dataclass(frozen=True)
class CreatePod:
    body: Mapping[str, Any]

    @property
    def name(self) -> str:
        return podview.name_of(self.body)


@dataclass(frozen=True)
class DeletePod:
    name: str
    reason: str


Action = CreatePod | DeletePod


def plan_pods(
    desired: Sequence[Mapping[str, Any]],
    observed: Sequence[Mapping[str, Any]],
    *,
    max_surge: int = 0,
) -> list[Action]:
    """Actions for one pass. `desired` share the current template hash; `observed` are the owner's pods."""
    replicas = len(desired)
    current_hash = podview.hash_of(desired[0]) if desired else None
    desired_names = [podview.name_of(pod) for pod in desired]
    actions: list[Action] = []
    deleted: set[str] = set()

    def delete(pod: Mapping[str, Any], reason: str) -> None:
        actions.append(DeletePod(podview.name_of(pod), reason))
        deleted.add(podview.name_of(pod))

    live = [pod for pod in observed if not podview.is_terminating(pod)]
    terminating = [pod for pod in observed if podview.is_terminating(pod)]
    for pod in live:
        if podview.is_finished(pod):
            delete(pod, f"pod {podview.phase_of(pod)}: replacing it")
        elif podview.name_of(pod) not in desired_names and podview.hash_of(pod) == current_hash:
            delete(pod, "scale down")
        elif podview.hash_of(pod) != current_hash and (podview.index_of(pod) or 0) >= replicas:
            delete(pod, "scale down (old template)")

    remaining = [pod for pod in live if podview.name_of(pod) not in deleted]
    old = [pod for pod in remaining if podview.hash_of(pod) != current_hash]
    current = [pod for pod in remaining if podview.hash_of(pod) == current_hash]
    existing_names = {podview.name_of(pod) for pod in observed}
    missing = [pod for pod in desired if podview.name_of(pod) not in existing_names]
    capacity = replicas + max_surge
    # A deleted pod frees its devices only once it is gone (a finished one has released them already),
    # so the pods scaled down in this pass still count.
    in_use = len([pod for pod in live if not podview.is_finished(pod)]) + len(terminating)

    created = 0
    for pod in missing:
        if in_use < capacity:
            actions.append(CreatePod(pod))
            in_use += 1
            created += 1
    still_missing = len(missing) - created

    # Old pods that serve nothing go as soon as their room is needed (or once every new pod exists).
    not_ready_old = [pod for pod in old if not podview.is_ready(pod)]
    ready_old = [pod for pod in old if podview.is_ready(pod)]
    for pod in not_ready_old:
        if still_missing > 0 or not missing:
            delete(pod, "template changed")
            still_missing -= 1
    # A serving old pod goes one at a time, and only once the new ones serve and nothing is shutting down
    # (pods deleted in this pass included).
    rollout_settled = (
        not terminating and not created and not deleted and all(podview.is_ready(p) for p in current)
    )
    if ready_old and rollout_settled and (still_missing > 0 or len(current) >= replicas):
        ready_old.sort(key=lambda pod: (podview.index_of(pod) or 0, podview.name_of(pod)))
        delete(ready_old[0], "template changed")
    return actions


# Multi-node replicas: the unit is a group of pods (leader + workers), never a single pod.


@dataclass(frozen=True)
class GroupFailure:
    """Why a group of the current template is broken: the member that failed or vanished."""

    group: int
    pod: str
    role: str
    reason: str
    message: str


GroupKey = tuple[str | None, int | str]


def _group_key(pod: Mapping[str, Any]) -> GroupKey:
    index = podview.index_of(pod)
    return podview.hash_of(pod), index if index is not None else podview.name_of(pod)


def _units(observed: Sequence[Mapping[str, Any]]) -> dict[GroupKey, list[Mapping[str, Any]]]:
    units: dict[GroupKey, list[Mapping[str, Any]]] = {}
    for pod in observed:
        units.setdefault(_group_key(pod), []).append(pod)
    return units


def _role(member: int) -> str:
    return "leader" if member == 0 else "worker"


def find_broken_groups(
    desired_groups: Sequence[Sequence[Mapping[str, Any]]], observed: Sequence[Mapping[str, Any]]
) -> list[GroupFailure]:
    """Groups of the current template that still have live pods but can never serve again as they are:
    a member Failed/Succeeded, deleted (terminating) or gone. Partial groups never serve."""
    units = _units(observed)
    failures = []
    for index, group in enumerate(desired_groups):
        found = units.get((podview.hash_of(group[0]), index), [])
        live = [p for p in found if not podview.is_terminating(p)]
        if not live:
            continue  # nothing to recreate, or still going away
        by_name = {podview.name_of(p): p for p in found}
        failure = None
        for member, want in enumerate(group):
            name = podview.name_of(want)
            pod = by_name.get(name)
            if pod is None:
                failure = GroupFailure(index, name, _role(member), "MemberLost", f"pod {name} is gone")
            elif podview.is_terminating(pod):
                failure = GroupFailure(index, name, _role(member), "MemberDeleted", f"pod {name} was deleted")
            elif podview.is_finished(pod):
                status = pod.get("status") or {}
                reason = str(status.get("reason") or f"Pod{podview.phase_of(pod)}")
                detail = status.get("message") or f"pod {podview.phase_of(pod)}"
                failure = GroupFailure(index, name, _role(member), reason, f"pod {name}: {detail}")
            if failure is not None:
                break
        if failure is not None:
            failures.append(failure)
    return failures


def _unit_ready(unit: Sequence[Mapping[str, Any]], size: int | None = None) -> bool:
    """Serving: complete, nothing going away or ended, and its leader (or only pod) ready."""
    if size is not None and len(unit) != size:
        return False
    if any(podview.is_terminating(p) or podview.is_finished(p) for p in unit):
        return False
    leaders = [p for p in unit if podview.member_of(p) == 0]
    return bool(leaders) and all(podview.is_ready(p) for p in leaders)


def plan_groups(
    desired_groups: Sequence[Sequence[Mapping[str, Any]]],
    observed: Sequence[Mapping[str, Any]],
    *,
    max_surge: int = 0,
) -> list[Action]:
    """`plan_pods`' rules with a group of pods as the unit (devices counted per group): a broken group is
    deleted whole and re-created once all its pods are gone; a missing group is created whole."""
    replicas = len(desired_groups)
    current_hash = podview.hash_of(desired_groups[0][0]) if desired_groups else None
    size = len(desired_groups[0]) if desired_groups else None
    units = _units(observed)
    actions: list[Action] = []
    deleted: set[GroupKey] = set()

    def delete(key: GroupKey, reason: str) -> None:
        for pod in units[key]:
            if not podview.is_terminating(pod):
                actions.append(DeletePod(podview.name_of(pod), reason))
        deleted.add(key)

    for failure in find_broken_groups(desired_groups, observed):
        delete((current_hash, failure.group), f"group {failure.group}: {failure.message}, recreating it")
    for key, unit in units.items():
        if key in deleted or all(podview.is_terminating(p) for p in unit):
            continue
        hash_, index = key
        if isinstance(index, str) or index >= replicas:
            delete(key, "scale down" if hash_ == current_hash else "scale down (old template)")

    def going(key: GroupKey) -> bool:
        return key in deleted or any(podview.is_terminating(p) for p in units[key])

    old = [key for key in units if key[0] != current_hash and not going(key)]
    current = [key for key in units if key[0] == current_hash and not going(key)]
    missing = [i for i in range(replicas) if (current_hash, i) not in units]
    in_use = len(units)  # a group frees its devices only once every pod of it is gone
    capacity = replicas + max_surge

    created = 0
    for index in missing:
        if in_use < capacity:
            actions.extend(CreatePod(pod) for pod in desired_groups[index])
            in_use += 1
            created += 1
    still_missing = len(missing) - created

    not_ready_old = [key for key in old if not _unit_ready(units[key])]
    ready_old = [key for key in old if _unit_ready(units[key])]
    freed_not_ready = False
    for key in not_ready_old:
        if still_missing > 0 or not missing:
            delete(key, "template changed")
            still_missing -= 1
            freed_not_ready = True
    terminating = any(going(key) for key in units if key not in deleted)
    rollout_settled = (
        not terminating
        and not created
        and not freed_not_ready
        and not deleted - set(old)
        and all(_unit_ready(units[key], size) for key in current)
    )
    if ready_old and rollout_settled and (still_missing > 0 or len(current) >= replicas):
        ready_old.sort(key=lambda key: (key[1] if isinstance(key[1], int) else 1 << 30, str(key)))
        delete(ready_old[0], "template changed")
    return actions
