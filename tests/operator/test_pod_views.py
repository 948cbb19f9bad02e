"""The read-only views of observed pods, on bare, partial and complete pod objects."""

from __future__ import annotations

from typing import Any

import pytest
from bloomz_operator import pods as podview
from bloomz_operator.constants import LABEL_GROUP_MEMBER, LABEL_REPLICA_INDEX, LABEL_ROLE, LABEL_TEMPLATE_HASH

FULL: dict[str, Any] = {
    "metadata": {
        "name": "b-h-1-2",
        "labels": {
            LABEL_TEMPLATE_HASH: "h",
            LABEL_REPLICA_INDEX: "1",
            LABEL_GROUP_MEMBER: "2",
            LABEL_ROLE: "worker",
        },
        "deletionTimestamp": "2026-01-01T00:00:00Z",
        "ownerReferences": [{"uid": "other"}, {"uid": "me"}],
    },
    "status": {
        "phase": "Running",
        "podIP": "10.0.0.9",
        "conditions": [{"type": "PodScheduled", "status": "True"}, {"type": "Ready", "status": "True"}],
        "initContainerStatuses": [{"name": "init"}],
        "containerStatuses": [{"name": "runtime"}],
    },
}
BARE: dict[str, Any] = {}
EMPTY: dict[str, Any] = {"metadata": {"labels": None}, "status": None}


def test_a_full_pod() -> None:
    assert podview.name_of(FULL) == "b-h-1-2"
    assert podview.hash_of(FULL) == "h" and podview.index_of(FULL) == 1 and podview.member_of(FULL) == 2
    assert podview.role_of(FULL) == "worker" and podview.is_worker(FULL)
    assert podview.is_terminating(FULL) and not podview.is_finished(FULL)
    assert podview.phase_of(FULL) == "Running" and podview.is_ready(FULL)
    assert podview.pod_ip(FULL) == "10.0.0.9"
    assert podview.condition(FULL, "PodScheduled") == {"type": "PodScheduled", "status": "True"}
    assert podview.condition(FULL, "Initialized") is None
    assert [s["name"] for s in podview.container_statuses(FULL)] == ["init", "runtime"]


@pytest.mark.parametrize("pod", [BARE, EMPTY], ids=["bare", "nulls"])
def test_a_bare_pod_reads_as_a_pending_single_pod(pod: dict[str, Any]) -> None:
    assert podview.name_of(pod) == ""
    assert podview.labels_of(pod) == {}
    assert podview.hash_of(pod) is None and podview.index_of(pod) is None
    assert podview.member_of(pod) == 0 and podview.role_of(pod) is None and not podview.is_worker(pod)
    assert podview.phase_of(pod) == "Pending"
    assert not podview.is_terminating(pod) and not podview.is_finished(pod) and not podview.is_ready(pod)
    assert podview.pod_ip(pod) is None and podview.container_statuses(pod) == []
    assert podview.condition(pod, "Ready") is None


@pytest.mark.parametrize(
    ("labels", "index", "member"),
    [({LABEL_REPLICA_INDEX: "x", LABEL_GROUP_MEMBER: "y"}, None, 0), ({LABEL_REPLICA_INDEX: "0"}, 0, 0)],
)
def test_unreadable_labels(labels: dict[str, str], index: int | None, member: int) -> None:
    pod = {"metadata": {"labels": labels}}
    assert (podview.index_of(pod), podview.member_of(pod)) == (index, member)


@pytest.mark.parametrize(
    ("phase", "ready", "finished", "is_ready"),
    [
        ("Running", "True", False, True),
        ("Running", "False", False, False),
        ("Pending", "True", False, False),
        ("Failed", "True", True, False),
        ("Succeeded", None, True, False),
        ("Unknown", None, False, False),
    ],
)
def test_ready_and_finished(phase: str, ready: str | None, finished: bool, is_ready: bool) -> None:
    conditions = [{"type": "Ready", "status": ready}] if ready else []
    pod = {"status": {"phase": phase, "conditions": conditions, "podIP": ""}}
    assert podview.is_finished(pod) is finished and podview.is_ready(pod) is is_ready
    assert podview.pod_ip(pod) is None


def test_owned_by_reads_owner_references_only() -> None:
    mine = {"metadata": {"name": "a", "ownerReferences": [{"uid": "me"}]}}
    theirs = {"metadata": {"name": "b", "ownerReferences": [{"uid": "them"}]}}
    orphan = {"metadata": {"name": "c", "ownerReferences": None}}
    assert podview.owned_by([mine, theirs, orphan, FULL], "me") == [mine, FULL]
    assert podview.owned_by([], "me") == [] and podview.owned_by([{}], "me") == []
    leader = {"metadata": {"labels": {LABEL_ROLE: "leader"}}}
    assert podview.role_of(leader) == "leader" and not podview.is_worker(leader)
