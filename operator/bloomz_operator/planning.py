"""Pure reconciliation planning: (desired pods, observed pods) -> the actions that move one towards the other.

Rules:
- the unit is a replica: a group of `spec.nodes` pods (one pod on a single node), see replicas.py;
- a desired replica (deterministic pod names) that does not exist is created whole, while the number of
  replicas holding devices stays within `replicas + maxSurge`, so no more than
  `cards x (replicas + maxSurge)` devices are asked for;
- a replica whose pods all ended (Failed/Succeeded) is deleted, and re-created on a later pass once gone;
  a replica of the current template that lost or ended a member is deleted whole the same way;
- replicas of the current template beyond `replicas` are deleted (scale down);
- replicas of an old template are replaced: not-serving ones are deleted as soon as their room is needed;
  a serving one only when nothing is terminating and every current replica serves (one at a time);
- a serving replica that goes loses its leader first (it drains), its workers once the leader is gone;
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
from . import replicas
from .replicas import ReplicaKey


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


def plan_replicas(
    desired: Sequence[Sequence[Mapping[str, Any]]],
    observed: Sequence[Mapping[str, Any]],
    *,
    max_surge: int = 0,
) -> list[Action]:
    """Actions for one pass. `desired`: the current template's replicas, each its pods leader first;
    `observed`: the owner's pods. The unit is a replica (devices are counted per replica): a replica whose
    pods all ended is deleted at once; a broken replica of the current template is deleted whole and
    re-created once all its pods are gone; a missing replica is created whole; a serving replica that is
    scaled down or replaced loses its leader first (it drains), its workers once it is gone."""
    count = len(desired)
    current_hash = podview.hash_of(desired[0][0]) if desired else None
    size = len(desired[0]) if desired else None
    units = replicas.group(observed)
    actions: list[Action] = []
    deleted: set[ReplicaKey] = set()

    def delete(key: ReplicaKey, reason: str, *, drain: bool = True) -> None:
        # A broken replica serves nothing: all of it goes at once. A serving one drains through its leader.
        unit = replicas.leader_first(units[key]) if drain else units[key]
        for pod in unit:
            if not podview.is_terminating(pod):
                actions.append(DeletePod(podview.name_of(pod), reason))
        deleted.add(key)

    for key, unit in units.items():
        if replicas.has_ended(unit):
            for pod in unit:
                actions.append(DeletePod(podview.name_of(pod), f"pod {podview.phase_of(pod)}: replacing it"))
            deleted.add(key)
    for failure in replicas.find_broken(desired, observed):
        key = (current_hash, failure.group)
        if key not in deleted:
            delete(key, f"group {failure.group}: {failure.message}, recreating it", drain=False)
    for key, unit in units.items():
        if key not in deleted and replicas.is_orphaned(unit) and not replicas.is_gone(unit):
            delete(key, "its leader is gone")
    for key, unit in units.items():
        if key in deleted or replicas.is_gone(unit):
            continue
        hash_, index = key
        if isinstance(index, str) or index >= count:
            delete(key, "scale down" if hash_ == current_hash else "scale down (old template)")

    def going(key: ReplicaKey) -> bool:
        return key in deleted or replicas.is_going(units[key])

    old = [key for key in units if key[0] != current_hash and not going(key)]
    current = [key for key in units if key[0] == current_hash and not going(key)]
    missing = [i for i in range(count) if (current_hash, i) not in units]
    # A replica frees its devices only once every pod of it is gone or ended (the ones deleted in this
    # pass still count).
    in_use = sum(not replicas.has_ended(unit) for unit in units.values())
    capacity = count + max_surge

    created = 0
    for index in missing:
        if in_use < capacity:
            actions.extend(CreatePod(pod) for pod in desired[index])
            in_use += 1
            created += 1
    still_missing = len(missing) - created

    # Old replicas that serve nothing go as soon as their room is needed (or once every new one exists).
    not_ready_old = [key for key in old if not replicas.serves(units[key])]
    ready_old = [key for key in old if replicas.serves(units[key])]
    freed_not_ready = False
    for key in not_ready_old:
        if still_missing > 0 or not missing:
            delete(key, "template changed")
            still_missing -= 1
            freed_not_ready = True
    # A serving old replica goes one at a time, and only once the new ones serve and nothing is shutting
    # down (replicas deleted in this pass included).
    terminating = any(going(key) for key in units if key not in deleted)
    rollout_settled = (
        not terminating
        and not created
        and not freed_not_ready
        and not deleted - set(old)
        and all(replicas.serves(units[key], size) for key in current)
    )
    if ready_old and rollout_settled and (still_missing > 0 or len(current) >= count):
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
