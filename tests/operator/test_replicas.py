"""The replica model: a replica is a group of `spec.nodes` pods (one on a single node), keyed by template
hash and replica index; the planner and the status judge it through the same functions."""

from __future__ import annotations

from typing import Any

import pytest
from bloomz_operator import replicas
from bloomz_operator.builders import Owner
from bloomz_operator.constants import LABEL_GROUP_MEMBER, LABEL_REPLICA_INDEX, LABEL_ROLE, LABEL_TEMPLATE_HASH
from bloomz_operator.groups import build_replicas, current_template_hash, pod_template
from bloomz_operator.planning import DeletePod, plan_replicas
from bloomz_operator.replicas import ReplicaFailure
from bloomz_operator.settings import Settings
from bloomz_operator.spec import parse_spec
from cluster_fakes import creates, name, names, observed

OWNER = Owner(name="r", namespace="ns", uid="u")
SINGLE = {"model": "m/a", "cards": 8}
PAIR = {"model": "m/a", "cards": 16, "cardsPerNode": 8}


def want(raw: dict[str, Any], count: int = 1) -> list[list[dict[str, Any]]]:
    return build_replicas(OWNER, parse_spec({**raw, "replicas": count}), Settings())


def test_the_key_is_the_template_hash_and_the_replica_index() -> None:
    (leader, worker), (other, _) = want(PAIR, 2)
    hash_ = leader["metadata"]["labels"]["inference.bloomz.dev/template-hash"]
    assert replicas.key_of(leader) == replicas.key_of(worker) == (hash_, 0)
    assert replicas.key_of(other) == (hash_, 1)
    stray = observed(leader)
    stray["metadata"]["labels"][LABEL_REPLICA_INDEX] = "x"
    assert replicas.key_of(stray) == (hash_, name(leader))


def test_pods_are_grouped_by_replica_in_observed_order() -> None:
    (l0, w0), (l1, w1) = want(PAIR, 2)
    grouped = replicas.group([w1, l0, l1, w0])
    assert [names(pods) for pods in grouped.values()] == [[name(w1), name(l1)], [name(l0), name(w0)]]
    assert replicas.group([]) == {}


def test_a_single_pod_is_its_own_leader() -> None:
    ((pod,),) = want(SINGLE)
    assert LABEL_ROLE not in pod["metadata"]["labels"] and LABEL_GROUP_MEMBER not in pod["metadata"]["labels"]
    assert replicas.leaders([pod]) == [pod]
    assert replicas.serves([observed(pod)], 1) and replicas.serves([observed(pod)])
    assert not replicas.is_orphaned([observed(pod)])


@pytest.mark.parametrize(
    ("leader", "worker", "size", "serving"),
    [
        ({}, {}, 2, True),
        ({}, {}, None, True),
        ({}, {"ready": False}, 2, True),  # a worker's readiness is the leader's business
        ({"ready": False}, {}, 2, False),
        ({"phase": "Pending", "ready": False}, {}, 2, False),
        ({}, {"phase": "Failed", "ready": False}, 2, False),
        ({}, {"phase": "Succeeded", "ready": False}, None, False),
        ({}, {"terminating": True}, 2, False),
        ({"terminating": True}, {}, None, False),
        ({}, {}, 3, False),  # incomplete for its size
    ],
)
def test_a_replica_serves_complete_alive_and_with_its_leader_ready(
    leader: dict[str, Any], worker: dict[str, Any], size: int | None, serving: bool
) -> None:
    ((l0, w0),) = want(PAIR)
    assert replicas.serves([observed(l0, **leader), observed(w0, **worker)], size) is serving


def test_workers_alone_never_serve_and_are_orphaned() -> None:
    ((_, w0),) = want(PAIR)
    assert not replicas.serves([observed(w0)])
    assert not replicas.serves([observed(w0)], 1)
    assert replicas.is_orphaned([observed(w0)])


def test_going_gone_and_ended() -> None:
    ((l0, w0),) = want(PAIR)
    running, ending = observed(l0), observed(w0, terminating=True)
    assert replicas.is_going([running, ending]) and not replicas.is_gone([running, ending])
    assert replicas.is_gone([ending]) and not replicas.is_going([running])
    failed, done = observed(l0, phase="Failed", ready=False), observed(w0, phase="Succeeded", ready=False)
    assert replicas.has_ended([failed, done])
    assert not replicas.has_ended([failed, running])
    # A pod that ended and is being deleted still holds its room until it is gone.
    assert not replicas.has_ended([failed, observed(w0, phase="Failed", ready=False, terminating=True)])


def test_a_broken_replica_names_its_first_broken_member_leader_first() -> None:
    (group,) = want(PAIR)
    l0, w0 = group
    both = [observed(l0, phase="Failed", ready=False), observed(w0, terminating=True)]
    assert replicas.failure_of(3, group, both) == ReplicaFailure(
        3, name(l0), "leader", "PodFailed", f"pod {name(l0)}: pod Failed"
    )
    assert replicas.failure_of(0, group, [observed(l0), observed(w0)]) is None
    assert replicas.failure_of(0, group, []) is None
    assert replicas.failure_of(0, group, [observed(l0, terminating=True)]) is None  # still going away
    assert replicas.find_broken([group], [observed(w0)]) == [
        ReplicaFailure(0, name(l0), "leader", "MemberLost", f"pod {name(l0)} is gone")
    ]


def test_leader_first_drains_the_leader_then_the_workers() -> None:
    ((l0, w0),) = want(PAIR)
    assert replicas.leader_first([observed(l0), observed(w0)]) == [observed(l0)]
    assert replicas.leader_first([observed(l0, terminating=True), observed(w0)]) == []
    ended = observed(l0, phase="Failed", ready=False)
    assert replicas.leader_first([ended, observed(w0)]) == [ended, observed(w0)]
    assert replicas.leader_first([ended, observed(w0, terminating=True)]) == [ended]


def test_a_group_whose_pods_all_ended_holds_no_room_and_goes_at_once() -> None:
    """Like a single pod that ended: its devices are free, so its replacement need not wait for it."""
    old, new = want(PAIR | {"model": "m/old"}), want(PAIR)
    seen = [observed(p, phase="Failed", ready=False) for p in old[0]]
    actions = plan_replicas(new, seen)
    assert [a for a in actions if isinstance(a, DeletePod)] == [
        DeletePod(name(p), "pod Failed: replacing it") for p in old[0]
    ]
    assert creates(actions) == names(new[0])


def test_the_template_is_built_once_and_copied_into_every_pod() -> None:
    spec = parse_spec({**PAIR, "replicas": 2, "apiKeySecret": "keys"})
    template = pod_template(OWNER, spec, Settings())
    assert template.hash == current_template_hash(spec, Settings()) and template.nodes == 2
    assert template.worker is not None
    pods = build_replicas(OWNER, spec, Settings(), template)
    assert pods == build_replicas(OWNER, spec, Settings())
    (leader_container,) = pods[1][0]["spec"]["containers"]
    (template_container,) = template.leader["containers"]
    assert leader_container["args"][: len(template_container["args"])] == template_container["args"]
    assert "--hosts" not in template_container["args"]  # the hosts are a replica's own
    (worker_container,) = template.worker["containers"]
    # sshd binds the pod's own address, which only the downward API knows.
    assert {"name": "POD_IP", "valueFrom": {"fieldRef": {"fieldPath": "status.podIP"}}} in worker_container[
        "env"
    ]
    ssh = {v["name"]: v for v in template.worker["volumes"]}["ssh"]["secret"]
    assert ssh["secretName"] == "r-ssh" and ssh["items"]
    single = pod_template(OWNER, parse_spec(SINGLE), Settings())
    assert single.worker is None and single.nodes == 1


def test_old_replicas_of_one_index_go_in_the_same_order_however_they_were_listed() -> None:
    a, b = want({**SINGLE, "model": "m/a"}), want({**SINGLE, "model": "m/b"})
    first, second = sorted((a[0][0], b[0][0]), key=lambda pod: pod["metadata"]["labels"][LABEL_TEMPLATE_HASH])
    new = want({**SINGLE, "model": "m/new"})
    for seen in ([observed(first), observed(second)], [observed(second), observed(first)]):
        assert plan_replicas(new, seen) == [DeletePod(name(first), "template changed")]
