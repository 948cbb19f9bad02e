"""The sandbox scheduler over several simulated nodes: resource fit per node, required pod anti-affinity
(both ways), and kube-scheduler's FailedScheduling message with per-reason node counts."""

from __future__ import annotations

from typing import Any

import pytest
from bloomz_sandbox.node.scheduling import (
    NodeState,
    anti_affinity_reasons,
    choose_node,
    label_selector_matches,
    nodes_unavailable_message,
    parse_amounts,
    scheduler_message,
)

CAPACITY = parse_amounts({"cpu": "16", "memory": "64Gi", "habana.ai/gaudi": 8, "pods": 110})
GROUP = {"inference.bloomz.dev/name": "big", "inference.bloomz.dev/replica-index": "0"}


def member(
    name: str, cards: int = 8, labels: dict[str, str] | None = None, namespace: str = "default"
) -> Any:
    """A group member as the operator builds it: anti-affinity against its own group on the hostname."""
    return {
        "metadata": {"name": name, "namespace": namespace, "labels": {**GROUP, **(labels or {})}},
        "spec": {
            "containers": [{"name": "runtime", "resources": {"limits": {"habana.ai/gaudi": cards}}}],
            "affinity": {
                "podAntiAffinity": {
                    "requiredDuringSchedulingIgnoredDuringExecution": [
                        {"labelSelector": {"matchLabels": GROUP}, "topologyKey": "kubernetes.io/hostname"}
                    ]
                }
            },
        },
    }


def plain(name: str, cards: int = 0, labels: dict[str, str] | None = None) -> Any:
    limits = {"habana.ai/gaudi": cards} if cards else {}
    return {
        "metadata": {"name": name, "namespace": "default", "labels": labels or {}},
        "spec": {"containers": [{"name": "c", "resources": {"limits": limits}}]},
    }


def node(name: str, *pods: Any) -> NodeState:
    return NodeState(name, {"kubernetes.io/hostname": name}, CAPACITY, list(pods))


def test_the_single_node_message_is_unchanged() -> None:
    assert nodes_unavailable_message([["Insufficient habana.ai/gaudi"]]) == scheduler_message(
        ["Insufficient habana.ai/gaudi"]
    )


def test_the_message_counts_nodes_per_reason_like_kube_scheduler() -> None:
    message = nodes_unavailable_message(
        [["Insufficient habana.ai/gaudi"], ["node(s) didn't match pod anti-affinity rules"]]
    )
    assert message == (
        "0/2 nodes are available: 1 Insufficient habana.ai/gaudi, "
        "1 node(s) didn't match pod anti-affinity rules."
    )
    assert nodes_unavailable_message([["Too many pods"], ["Too many pods"]]) == (
        "0/2 nodes are available: 2 Too many pods."
    )


def test_group_members_go_to_distinct_nodes() -> None:
    nodes = [node("n1", member("big-0-0")), node("n2")]
    assert choose_node(member("big-0-1"), nodes) == ("n2", "")


def test_a_member_with_no_node_left_gets_the_scheduler_message() -> None:
    # n1 holds the leader (anti-affinity), n2 is full of another resource's cards.
    nodes = [node("n1", member("big-0-0", cards=0)), node("n2", plain("other", cards=8))]
    assert choose_node(member("big-0-1"), nodes) == (
        None,
        "0/2 nodes are available: 1 Insufficient habana.ai/gaudi, "
        "1 node(s) didn't match pod anti-affinity rules.",
    )


def test_other_groups_and_other_namespaces_may_share_a_node() -> None:
    other_group = member("big-1-0", cards=4, labels={"inference.bloomz.dev/replica-index": "1"})
    assert anti_affinity_reasons(member("big-0-0", cards=4), node("n1", other_group), []) == []
    elsewhere = member("big-0-1", cards=4, namespace="team-b")
    nodes = [node("n1", elsewhere)]
    assert choose_node(member("big-0-0", cards=4), nodes) == ("n1", "")


def test_existing_pods_anti_affinity_keeps_a_matching_newcomer_away() -> None:
    newcomer = plain("sidecar", labels=GROUP)  # no affinity of its own, but the bound member selects it
    nodes = [node("n1", member("big-0-0", cards=0))]
    assert anti_affinity_reasons(newcomer, nodes[0], nodes) == [
        "node(s) didn't satisfy existing pods anti-affinity rules"
    ]


def test_a_node_without_the_topology_key_does_not_constrain() -> None:
    unlabeled = NodeState("n1", {}, CAPACITY, [member("big-0-0", cards=0)])
    assert anti_affinity_reasons(member("big-0-1", cards=0), unlabeled, [unlabeled]) == []


def test_single_node_resources_fill_the_first_node_first() -> None:
    nodes = [node("n1", plain("a", cards=4)), node("n2")]
    assert choose_node(plain("b", cards=4), nodes) == ("n1", "")
    assert choose_node(plain("c", cards=8), nodes) == ("n2", "")


@pytest.mark.parametrize(
    ("selector", "matches"),
    [
        (None, False),
        ({}, True),
        ({"matchLabels": {"app": "x"}}, True),
        ({"matchLabels": {"app": "y"}}, False),
        ({"matchExpressions": [{"key": "tier", "operator": "In", "values": ["a", "b"]}]}, True),
        ({"matchExpressions": [{"key": "tier", "operator": "NotIn", "values": ["a"]}]}, False),
        ({"matchExpressions": [{"key": "zone", "operator": "NotIn", "values": ["a"]}]}, True),
        ({"matchExpressions": [{"key": "tier", "operator": "Exists"}]}, True),
        ({"matchExpressions": [{"key": "tier", "operator": "DoesNotExist"}]}, False),
        ({"matchLabels": {"app": "x"}, "matchExpressions": [{"key": "zone", "operator": "Exists"}]}, False),
    ],
)
def test_label_selectors(selector: Any, matches: bool) -> None:
    assert label_selector_matches(selector, {"app": "x", "tier": "a"}) is matches


def test_an_unknown_selector_operator_is_an_error() -> None:
    with pytest.raises(ValueError, match="Gt"):
        label_selector_matches({"matchExpressions": [{"key": "a", "operator": "Gt", "values": ["1"]}]}, {})


def test_the_first_failing_check_decides_a_nodes_reason() -> None:
    # Both anti-affinity directions fail on n1 (the members select each other): the pod's own is reported.
    nodes = [node("n1", member("big-0-0", cards=0))]
    assert anti_affinity_reasons(member("big-0-1", cards=0), nodes[0], nodes) == [
        "node(s) didn't match pod anti-affinity rules"
    ]
    # A node short of cards reports only that, whatever the affinity says.
    full = [node("n1", member("big-0-0", cards=8))]
    assert choose_node(member("big-0-1"), full) == (
        None,
        "0/1 nodes are available: 1 Insufficient habana.ai/gaudi.",
    )
