"""Small read-only views of observed Pod objects (plain dicts as the API returns them)."""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from typing import Any

from .constants import LABEL_GROUP_MEMBER, LABEL_REPLICA_INDEX, LABEL_ROLE, LABEL_TEMPLATE_HASH, ROLE_WORKER

Pod = Mapping[str, Any]


def name_of(pod: Pod) -> str:
    return str(pod.get("metadata", {}).get("name", ""))


def labels_of(pod: Pod) -> Mapping[str, str]:
    return pod.get("metadata", {}).get("labels") or {}


def hash_of(pod: Pod) -> str | None:
    return labels_of(pod).get(LABEL_TEMPLATE_HASH)


def index_of(pod: Pod) -> int | None:
    try:
        return int(labels_of(pod).get(LABEL_REPLICA_INDEX, ""))
    except ValueError:
        return None


def phase_of(pod: Pod) -> str:
    return str((pod.get("status") or {}).get("phase") or "Pending")


def is_terminating(pod: Pod) -> bool:
    return bool(pod.get("metadata", {}).get("deletionTimestamp"))


def is_finished(pod: Pod) -> bool:
    # restartPolicy Always: a pod only ends Failed/Succeeded when evicted or its node is lost.
    return phase_of(pod) in ("Failed", "Succeeded")


def condition(pod: Pod, type_: str) -> Mapping[str, Any] | None:
    for cond in (pod.get("status") or {}).get("conditions") or ():
        if cond.get("type") == type_:
            return cond
    return None


def is_ready(pod: Pod) -> bool:
    cond = condition(pod, "Ready")
    return phase_of(pod) == "Running" and cond is not None and cond.get("status") == "True"


def pod_ip(pod: Pod) -> str | None:
    return (pod.get("status") or {}).get("podIP") or None


def container_statuses(pod: Pod) -> list[Mapping[str, Any]]:
    status = pod.get("status") or {}
    return [*(status.get("initContainerStatuses") or ()), *(status.get("containerStatuses") or ())]


def owned_by(pods: Iterable[Pod], owner_uid: str) -> list[Pod]:
    """The pods whose ownerReferences name this owner (client-side: never trust a server-side selector)."""
    return [
        pod
        for pod in pods
        if any(ref.get("uid") == owner_uid for ref in pod.get("metadata", {}).get("ownerReferences") or ())
    ]


def role_of(pod: Pod) -> str | None:
    """ "leader" or "worker" for a pod of a multi-node group; None for a single-node replica's pod."""
    return labels_of(pod).get(LABEL_ROLE)


def is_worker(pod: Pod) -> bool:
    return role_of(pod) == ROLE_WORKER


def member_of(pod: Pod) -> int:
    """A pod's place in its group (0 = the leader, and the only member of a single-node replica)."""
    try:
        return int(labels_of(pod).get(LABEL_GROUP_MEMBER, "0"))
    except ValueError:
        return 0
