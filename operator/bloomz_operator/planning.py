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

import threading
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


def leader_first(unit: Sequence[Mapping[str, Any]]) -> list[Mapping[str, Any]]:
    """The pods of a group to delete now: its leader alone while it may still be draining requests (the
    workers run its ranks; killing them first would fail what it accepted), the workers once it is gone or
    ended. Pods already terminating are not deleted twice."""
    leaders = [p for p in unit if podview.member_of(p) == 0]
    draining = [p for p in leaders if not podview.is_finished(p)]
    if draining:
        return [p for p in draining if not podview.is_terminating(p)]
    return [p for p in unit if not podview.is_terminating(p)]


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
    deleted whole and re-created once all its pods are gone; a missing group is created whole; a serving
    group that is scaled down or replaced loses its leader first (it drains), its workers once it is gone."""
    replicas = len(desired_groups)
    current_hash = podview.hash_of(desired_groups[0][0]) if desired_groups else None
    size = len(desired_groups[0]) if desired_groups else None
    units = _units(observed)
    actions: list[Action] = []
    deleted: set[GroupKey] = set()

    def delete(key: GroupKey, reason: str, *, drain: bool = True) -> None:
        # A broken group serves nothing: all of it goes at once. A serving one drains through its leader.
        unit = leader_first(units[key]) if drain else units[key]
        for pod in unit:
            if not podview.is_terminating(pod):
                actions.append(DeletePod(podview.name_of(pod), reason))
        deleted.add(key)

    for failure in find_broken_groups(desired_groups, observed):
        message = f"group {failure.group}: {failure.message}, recreating it"
        delete((current_hash, failure.group), message, drain=False)
    for key, unit in units.items():
        # Workers whose leader is gone serve nothing (the leader went first on an earlier pass).
        orphaned = podview.role_of(unit[0]) is not None and not any(podview.member_of(p) == 0 for p in unit)
        if key not in deleted and orphaned and not all(podview.is_terminating(p) for p in unit):
            delete(key, "its leader is gone")
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


# Rollouts caused by the operator's own settings (a new default image after a chart upgrade, a changed
# device setting) change every resource's template hash at once: they are rolled at a bounded rate.


def settings_rollout(old_status: Mapping[str, Any] | None, generation: int | None, current_hash: str) -> bool:
    """True when the pods' template changed although the spec did not: the status was written for this
    generation with another template hash, so the difference comes from the operator's settings."""
    status = old_status or {}
    previous_hash = status.get("templateHash")
    return (
        bool(previous_hash)
        and previous_hash != current_hash
        and generation is not None
        and status.get("observedGeneration") == generation
    )


def hold_rollout(
    actions: Sequence[Action],
    observed: Sequence[Mapping[str, Any]],
    desired_units: Sequence[Sequence[Mapping[str, Any]]],
    *,
    max_surge: int = 0,
) -> list[Action]:
    """The plan without the rollout: old-template pods (and groups) keep serving, and no new-template pod
    is created for a replica index an old live pod still holds. Replacing finished pods, scaling down and
    creating replicas that have no pod at all go on (within `replicas + maxSurge` units, as always).
    `desired_units`: the current template's pods per replica index (one pod, or a group's pods)."""
    current_hash = podview.hash_of(desired_units[0][0]) if desired_units else None
    held = {
        podview.index_of(pod)
        for pod in observed
        if podview.hash_of(pod) != current_hash and not podview.is_terminating(pod)
    }
    kept: list[Action] = []
    for action in actions:
        if isinstance(action, DeletePod) and action.reason == "template changed":
            continue
        if isinstance(action, CreatePod) and podview.index_of(action.body) in held:
            continue
        kept.append(action)
    # A replica index with no pod of any template gets the current one (e.g. after a failed pod went away).
    occupied = {podview.index_of(pod) for pod in observed}
    units = {(podview.hash_of(pod), podview.index_of(pod)) for pod in observed}
    creating = {podview.index_of(a.body) for a in kept if isinstance(a, CreatePod)}
    in_use = len(units) + len(creating)
    for index, unit in enumerate(desired_units):
        if index in occupied or index in creating or in_use >= len(desired_units) + max_surge:
            continue
        kept.extend(CreatePod(pod) for pod in unit)
        creating.add(index)
        in_use += 1
    return kept


def rollout_finished(
    observed: Sequence[Mapping[str, Any]], desired_units: Sequence[Sequence[Mapping[str, Any]]]
) -> bool:
    """Every desired pod exists and is ready, and no pod of another template is left."""
    wanted = {podview.name_of(pod) for unit in desired_units for pod in unit}
    live = [pod for pod in observed if not podview.is_terminating(pod)]
    ready = {podview.name_of(pod) for pod in live if podview.is_ready(pod)}
    return wanted <= ready and all(podview.name_of(pod) in wanted for pod in observed)


class RolloutGate:
    """Admits resources to a settings-caused rollout: at most `max_at_once` rolling together and at most
    `per_minute` starting in any 60 s. A resource holds its slot until `finish` (its rollout is done or the
    resource is gone), so a new template that never becomes ready stops the wave instead of spreading.
    Refused resources wait in line: when a slot frees, `to_wake` names the longest-waiting ones.
    `now` is passed in (seconds, monotonic): the gate itself reads no clock."""

    WINDOW_S = 60.0

    def __init__(self, max_at_once: int, per_minute: int) -> None:
        self.max_at_once = max_at_once
        self.per_minute = per_minute
        self._rolling: dict[str, float] = {}
        self._started: list[float] = []
        self._waiting: dict[str, float] = {}
        self._freed = False
        self._lock = threading.Lock()  # passes of different resources run in different threads

    def _free_slots(self, now: float) -> int:
        self._started = [t for t in self._started if now - t < self.WINDOW_S]
        return min(self.max_at_once - len(self._rolling), self.per_minute - len(self._started))

    def admit(self, uid: str, now: float) -> bool:
        with self._lock:
            if uid in self._rolling:
                return True
            if self._free_slots(now) <= 0:
                self._waiting.setdefault(uid, now)
                return False
            self._waiting.pop(uid, None)
            self._rolling[uid] = now
            self._started.append(now)
            return True

    def finish(self, uid: str) -> None:
        with self._lock:
            if self._rolling.pop(uid, None) is not None:
                self._freed = True
            self._waiting.pop(uid, None)

    def to_wake(self, now: float) -> list[str]:
        """Once after a slot freed: the waiting resources that may take the free slots, longest-waiting
        first (waking every waiter would cost a pass each for one slot)."""
        with self._lock:
            if not self._freed:
                return []
            self._freed = False
            free = self._free_slots(now)
            return sorted(self._waiting, key=lambda uid: self._waiting[uid])[: max(0, free)]

    def rolling(self) -> set[str]:
        with self._lock:
            return set(self._rolling)
