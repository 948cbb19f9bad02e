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
    in_use = len(remaining) + len(terminating)  # a deleted pod frees its devices only once it is gone

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
    freed_not_ready = False
    for pod in not_ready_old:
        if still_missing > 0 or not missing:
            delete(pod, "template changed")
            still_missing -= 1
            freed_not_ready = True
    # A serving old pod goes one at a time, and only once the new ones serve and nothing is shutting down.
    rollout_settled = (
        not terminating and not created and not freed_not_ready and all(podview.is_ready(p) for p in current)
    )
    if ready_old and rollout_settled and (still_missing > 0 or len(current) >= replicas):
        ready_old.sort(key=lambda pod: (podview.index_of(pod) or 0, podview.name_of(pod)))
        delete(ready_old[0], "template changed")
    return actions
