"""The planner driven to convergence on a simulated cluster, for tables of rollouts and failures.

Every pass checks the rules the planner promises: the same observation plans the same actions; pods
(or groups) are only created while the total, terminating ones included, stays within replicas +
maxSurge; at least replicas - 1 (replicas, with a surge) keep serving while a template rolls out; and
the cluster converges to exactly the desired pods, all ready, with nothing left to do. A group that is
scaled down or replaced goes leader first (it drains while its workers still run its ranks) and its
workers on a later pass, once the leader is gone; only a broken group of the current template goes whole."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

import pytest
from bloomz_operator.builders import Owner
from bloomz_operator.constants import LABEL_GROUP_MEMBER, LABEL_REPLICA_INDEX, LABEL_TEMPLATE_HASH
from bloomz_operator.groups import build_replicas
from bloomz_operator.planning import DeletePod, plan_replicas
from bloomz_operator.replicas import ReplicaFailure, find_broken
from bloomz_operator.settings import Settings
from bloomz_operator.spec import parse_spec
from cluster_fakes import SimCluster, build_pods, creates, deletes, name, names, observed

OWNER = Owner(name="b", namespace="ns", uid="u")
MAX_TICKS = 60


def labels(pod: dict[str, Any]) -> dict[str, str]:
    return dict(pod["metadata"].get("labels") or {})


def unit_key(pod: dict[str, Any]) -> tuple[str, str]:
    return labels(pod).get(LABEL_TEMPLATE_HASH, ""), labels(pod).get(LABEL_REPLICA_INDEX, "")


def serves(pod: dict[str, Any]) -> bool:
    ready = any(c["type"] == "Ready" and c["status"] == "True" for c in pod["status"].get("conditions", []))
    return ready and pod["status"]["phase"] == "Running" and "deletionTimestamp" not in pod["metadata"]


def serving_units(pods: Sequence[dict[str, Any]], size: int) -> int:
    """Replicas that answer: a unit with all its pods there, none going away or ended, its leader ready."""
    units: dict[tuple[str, str], list[dict[str, Any]]] = {}
    for pod in pods:
        units.setdefault(unit_key(pod), []).append(pod)
    count = 0
    for members in units.values():
        whole = len(members) == size and all(
            "deletionTimestamp" not in p["metadata"] and p["status"]["phase"] in ("Pending", "Running")
            for p in members
        )
        leaders = [p for p in members if labels(p).get(LABEL_GROUP_MEMBER, "0") == "0"]
        count += whole and bool(leaders) and all(serves(p) for p in leaders)
    return count


@dataclass(frozen=True)
class Shape:
    """Single-node replicas (one pod each) or groups of `nodes` pods."""

    nodes: int

    def spec(self, model: str, replicas: int) -> dict[str, Any]:
        cards = 8 * self.nodes
        return {"model": model, "cards": cards, "cardsPerNode": 8, "replicas": replicas}

    def desired(self, model: str, replicas: int) -> list[list[dict[str, Any]]]:
        spec = parse_spec(self.spec(model, replicas))
        if self.nodes == 1:
            return [[pod] for pod in build_pods(OWNER, spec, Settings())]
        return build_replicas(OWNER, spec, Settings())

    def plan(
        self, groups: list[list[dict[str, Any]]], observed: list[dict[str, Any]], surge: int
    ) -> list[Any]:
        return plan_replicas(groups, observed, max_surge=surge)


SINGLE, PAIR = Shape(1), Shape(2)


@dataclass(frozen=True)
class Rollout:
    shape: Shape
    old_replicas: int
    new_replicas: int
    new_model: str  # "m/old" keeps the template
    surge: int = 0
    start_ticks: int = 1
    stop_ticks: int = 1
    old_ready: bool = True

    def __str__(self) -> str:
        change = "template" if self.new_model != "m/old" else "same"
        return (
            f"{self.shape.nodes}node-{self.old_replicas}to{self.new_replicas}-{change}-surge{self.surge}"
            f"-start{self.start_ticks}-stop{self.stop_ticks}{'' if self.old_ready else '-oldstuck'}"
        )


ROLLOUTS = [
    Rollout(SINGLE, 1, 1, "m/new"),
    Rollout(SINGLE, 1, 1, "m/new", surge=1, start_ticks=3),
    Rollout(SINGLE, 2, 2, "m/new"),
    Rollout(SINGLE, 3, 3, "m/new", start_ticks=2, stop_ticks=3),
    Rollout(SINGLE, 3, 3, "m/new", surge=1, stop_ticks=2),
    Rollout(SINGLE, 3, 3, "m/new", surge=2, start_ticks=3),
    Rollout(SINGLE, 4, 4, "m/new", surge=5),
    Rollout(SINGLE, 3, 2, "m/new"),  # template change with scale-down
    Rollout(SINGLE, 4, 1, "m/new", surge=1, stop_ticks=2),
    Rollout(SINGLE, 2, 3, "m/new", start_ticks=2),  # with scale-up
    Rollout(SINGLE, 3, 1, "m/old"),
    Rollout(SINGLE, 1, 3, "m/old", start_ticks=2),
    Rollout(SINGLE, 3, 3, "m/new", old_ready=False),  # old pods that never served
    Rollout(SINGLE, 0, 2, "m/new"),
    Rollout(PAIR, 2, 2, "m/new", start_ticks=2),
    Rollout(PAIR, 2, 2, "m/new", surge=1, stop_ticks=2),
    Rollout(PAIR, 3, 2, "m/new"),
    Rollout(PAIR, 1, 2, "m/new", surge=1),
    Rollout(PAIR, 2, 2, "m/new", old_ready=False),
    Rollout(PAIR, 3, 3, "m/new", stop_ticks=3),  # each leader drains over several passes
    Rollout(PAIR, 3, 1, "m/old", stop_ticks=2),  # scale-down: leaders, then their workers
    Rollout(PAIR, 2, 0, "m/new", surge=1),
]


def assert_leader_first(actions: Sequence[Any], seen: Sequence[dict[str, Any]]) -> None:
    """A worker is deleted only once its group's leader is gone or ended, or with the whole broken group."""
    by_name = {name(p): p for p in seen}
    for action in actions:
        if not isinstance(action, DeletePod) or action.reason.endswith("recreating it"):
            continue
        pod = by_name[action.name]
        if labels(pod).get(LABEL_GROUP_MEMBER, "0") == "0":
            continue
        draining = [
            p
            for p in seen
            if unit_key(p) == unit_key(pod)
            and labels(p).get(LABEL_GROUP_MEMBER) == "0"
            and p["status"]["phase"] not in ("Failed", "Succeeded")
        ]
        assert not draining, (action, [name(p) for p in draining])


def run_to_convergence(
    rollout: Rollout,
    cluster: SimCluster,
    check: Callable[[list[Any], int], None] | None = None,
    min_ticks: int = 0,
) -> list[list[dict[str, Any]]]:
    shape, surge = rollout.shape, rollout.surge
    want = shape.desired(rollout.new_model, rollout.new_replicas)
    wanted = sorted(name(p) for g in want for p in g)
    for _ in range(MAX_TICKS):
        seen = cluster.observe()
        actions = shape.plan(want, seen, surge)
        assert shape.plan(want, seen, surge) == actions  # idempotent
        assert_leader_first(actions, seen)
        cluster.apply(actions)
        if creates(actions):
            # Every unit that holds devices (terminating ones too; a Failed pod has released them).
            units = {unit_key(p) for p in cluster.pods.values() if p["status"]["phase"] != "Failed"}
            assert len(units) <= rollout.new_replicas + surge, actions
        if check is not None:
            check(actions, serving_units(list(cluster.pods.values()), shape.nodes))
        settled = sorted(cluster.pods) == wanted and all(serves(p) for p in seen)
        if not actions and settled and cluster.tick_count >= min_ticks:
            break
        cluster.tick()
    else:
        raise AssertionError(f"no convergence after {MAX_TICKS} ticks: {sorted(cluster.pods)}")
    assert serving_units(cluster.observe(), shape.nodes) == rollout.new_replicas
    return want


@pytest.mark.parametrize("rollout", ROLLOUTS, ids=str)
def test_a_rollout_keeps_the_budget_and_the_service_and_converges(rollout: Rollout) -> None:
    cluster = SimCluster(start_ticks=rollout.start_ticks, stop_ticks=rollout.stop_ticks)
    for group in rollout.shape.desired("m/old", rollout.old_replicas):
        for pod in group:
            if rollout.old_ready:
                cluster.add(pod)
            else:
                cluster.add(pod, phase="Pending", ready=False)
    serving_at_start = serving_units(cluster.observe(), rollout.shape.nodes)
    floor = min(serving_at_start, rollout.new_replicas) - (0 if rollout.surge else 1)

    def check(actions: list[Any], serving: int) -> None:
        assert serving >= floor, (actions, serving, floor)

    run_to_convergence(rollout, cluster, check)


FAILURES = [
    (Rollout(SINGLE, 2, 2, "m/old"), 1, "-0"),  # a serving pod fails
    (Rollout(SINGLE, 2, 2, "m/new"), 2, "-0"),  # the new pod fails while loading
    (Rollout(SINGLE, 3, 3, "m/new", surge=1), 3, "-2"),  # an old pod fails mid-rollout
    (Rollout(PAIR, 2, 2, "m/old"), 1, "-1-1"),  # a worker of a serving group fails
    (Rollout(PAIR, 2, 2, "m/new", surge=1), 2, "-0-1"),  # a worker of a new group fails
]


@pytest.mark.parametrize(("rollout", "tick", "suffix"), FAILURES, ids=[str(f[0]) for f in FAILURES])
def test_failed_members_are_replaced_and_the_rollout_still_converges(
    rollout: Rollout, tick: int, suffix: str
) -> None:
    failed: list[str] = []

    def fail(pod_name: str) -> bool:
        if pod_name.endswith(suffix) and not failed:
            failed.append(pod_name)
            return True
        return False

    cluster = SimCluster(failures=dict.fromkeys(range(tick, MAX_TICKS), fail), stop_ticks=2)
    for group in rollout.shape.desired("m/old", rollout.old_replicas):
        for pod in group:
            cluster.add(pod)
    budget_checked = []

    def check(actions: list[Any], serving: int) -> None:
        budget_checked.append(actions)
        for gone in deletes(actions):
            assert gone in cluster.pods  # only existing pods are deleted

    run_to_convergence(rollout, cluster, check, min_ticks=tick + 1)
    assert failed, "the failure was injected"
    assert any(failed[0] in deletes(a) for a in budget_checked)


@pytest.mark.parametrize("shape", [SINGLE, PAIR], ids=["pods", "groups"])
def test_terminating_members_hold_their_room_until_gone(shape: Shape) -> None:
    want = shape.desired("m/new", 1)
    cluster = SimCluster(stop_ticks=4)
    for pod in want[0]:
        cluster.add(pod, terminating=True)
    for _ in range(3):
        assert shape.plan(want, cluster.observe(), 0) == []  # nothing while its devices are taken
        cluster.tick()
    cluster.tick()
    assert sorted(creates(shape.plan(want, cluster.observe(), 0))) == sorted(name(p) for p in want[0])


@pytest.mark.parametrize("shape", [SINGLE, PAIR], ids=["pods", "groups"])
def test_a_surge_is_used_but_never_exceeded(shape: Shape) -> None:
    old = shape.desired("m/old", 3)
    want = shape.desired("m/new", 3)
    cluster = SimCluster()
    for group in old:
        for pod in group:
            cluster.add(pod)
    for surge in (1, 2, 3):
        actions = shape.plan(want, cluster.observe(), surge)
        assert sorted(creates(actions)) == sorted(name(p) for g in want[:surge] for p in g)
        assert deletes(actions) == []


def test_pods_scaled_down_in_a_pass_still_hold_their_room() -> None:
    """Scaling 3 -> 1 while replica 0 is missing: 1 and 2 go first; 0 comes once their devices are free."""
    want = SINGLE.desired("m/old", 1)
    extra = [g[0] for g in SINGLE.desired("m/old", 3)[1:]]
    cluster = SimCluster(stop_ticks=2)
    for pod in extra:
        cluster.add(pod)
    first = SINGLE.plan(want, cluster.observe(), 0)
    assert sorted(deletes(first)) == sorted(name(p) for p in extra) and creates(first) == []
    cluster.apply(first)
    cluster.tick()
    assert SINGLE.plan(want, cluster.observe(), 0) == []  # still terminating
    cluster.tick()
    assert creates(SINGLE.plan(want, cluster.observe(), 0)) == [name(want[0][0])]


# --- single passes: which members go, why, and how many -------------------------------------------------


def reasons(actions: list[Any]) -> list[tuple[str, str]]:
    return [(a.name, a.reason) for a in actions if isinstance(a, DeletePod)]


def pod_names(groups: list[list[dict[str, Any]]], *indices: int) -> list[str]:
    return [name(p) for i in indices for p in groups[i]]


def leader_names(groups: list[list[dict[str, Any]]], *indices: int) -> list[str]:
    """What goes first of each unit: the only pod, or a group's leader (its workers once it is gone)."""
    return [name(groups[i][0]) for i in indices]


def stage(shape: Shape, *, old: int, ready_old: Sequence[int] = (), new: int, ready_new: Sequence[int] = ()):
    """(desired new groups, observed pods): old groups 0..old-1, the given ones ready, others Pending."""
    old_groups, new_groups = shape.desired("m/old", old), shape.desired("m/new", new)
    seen = []
    for i, group in enumerate(old_groups):
        seen += [observed(p) if i in ready_old else observed(p, phase="Pending", ready=False) for p in group]
    for i in ready_new:
        seen += [observed(p) for p in new_groups[i]]
    return old_groups, new_groups, seen


@pytest.mark.parametrize("shape", [SINGLE, PAIR], ids=["pods", "groups"])
@pytest.mark.parametrize(("surge", "deleted"), [(0, 3), (1, 2), (2, 1)])
def test_not_ready_old_members_go_as_far_as_their_room_is_needed(
    shape: Shape, surge: int, deleted: int
) -> None:
    old, new, seen = stage(shape, old=3, new=3)
    actions = shape.plan(new, seen, surge)
    assert sorted(creates(actions)) == sorted(pod_names(new, *range(surge)))
    assert reasons(actions) == [(n, "template changed") for n in leader_names(old, *range(deleted))]


@pytest.mark.parametrize("shape", [SINGLE, PAIR], ids=["pods", "groups"])
def test_a_not_ready_old_member_goes_once_every_new_one_exists(shape: Shape) -> None:
    old, new, seen = stage(shape, old=2, new=2, ready_new=(0,))
    actions = shape.plan(new, seen, 0)  # new 1 is missing and one room is needed: old 0 goes, old 1 stays
    assert reasons(actions) == [(n, "template changed") for n in leader_names(old, 0)]
    _, new, seen = stage(shape, old=1, new=2, ready_new=(0, 1))
    assert reasons(shape.plan(new, seen, 0)) == [(n, "template changed") for n in leader_names(old, 0)]


@pytest.mark.parametrize("shape", [SINGLE, PAIR], ids=["pods", "groups"])
def test_a_serving_old_member_never_goes_in_the_pass_that_frees_another(shape: Shape) -> None:
    old, new, seen = stage(shape, old=2, ready_old=(1,), new=2)
    actions = shape.plan(new, seen, 0)
    assert reasons(actions) == [(n, "template changed") for n in leader_names(old, 0)]


@pytest.mark.parametrize("shape", [SINGLE, PAIR], ids=["pods", "groups"])
def test_scale_down_reasons_and_the_old_template(shape: Shape) -> None:
    old, new, seen = stage(shape, old=3, ready_old=(0, 1, 2), new=1)
    assert reasons(shape.plan(new, seen, 0)) == [
        (n, "scale down (old template)") for n in leader_names(old, 1, 2)
    ]
    current = shape.desired("m/new", 3)
    seen = [observed(p) for g in current for p in g]
    assert reasons(shape.plan(new, seen, 0)) == [(n, "scale down") for n in leader_names(current, 1, 2)]


def test_the_lowest_replica_index_is_replaced_first() -> None:
    """Index 2 before index 10, although "b-...-10" sorts before "b-...-2" as a name."""
    old, new = SINGLE.desired("m/old", 11), SINGLE.desired("m/new", 11)
    seen = [observed(new[i][0]) for i in range(11) if i not in (2, 10)]
    seen = [observed(old[10][0]), observed(old[2][0]), *seen]
    assert reasons(SINGLE.plan(new, seen, 0)) == [(name(old[2][0]), "template changed")]


def test_a_finished_pod_is_replaced_with_its_phase_as_the_reason() -> None:
    want = SINGLE.desired("m/new", 1)
    for phase in ("Failed", "Succeeded"):
        actions = SINGLE.plan(want, [observed(want[0][0], phase=phase, ready=False)], 0)
        assert actions == [DeletePod(name(want[0][0]), f"pod {phase}: replacing it")]


@pytest.mark.parametrize(
    ("member", "sick"),
    [
        (1, {"phase": "Failed", "ready": False}),  # a worker ended
        (0, {"phase": "Running", "ready": False}),  # the leader does not serve
    ],
)
def test_old_groups_that_cannot_serve_all_go_when_room_is_needed(member: int, sick: dict[str, Any]) -> None:
    old, new = PAIR.desired("m/old", 2), PAIR.desired("m/new", 2)
    seen = [observed(p, **sick) if m == member else observed(p) for g in old for m, p in enumerate(g)]
    went = reasons(PAIR.plan(new, seen, 0))
    # Both, not one at a time; each through its leader (it may still hold requests), a Failed worker too.
    assert went == [(name(g[0]), "template changed") for g in old]


def test_an_old_group_partly_going_away_is_waited_for() -> None:
    old, new = PAIR.desired("m/old", 1), PAIR.desired("m/new", 1)
    leader, worker = old[0]
    seen = [observed(leader), observed(worker, terminating=True), *(observed(p) for p in new[0])]
    assert PAIR.plan(new, seen, 0) == []


def test_a_terminating_group_is_skipped_and_the_rest_still_scaled_down() -> None:
    want = PAIR.desired("m/new", 1)
    bigger = PAIR.desired("m/new", 2)
    seen = [*(observed(p, terminating=True) for p in bigger[0]), *(observed(p) for p in bigger[1])]
    assert reasons(PAIR.plan(want, seen, 0)) == [(name(bigger[1][0]), "scale down")]


def test_a_pod_without_a_replica_index_is_scaled_down() -> None:
    want = PAIR.desired("m/new", 1)
    stray = observed(want[0][0])
    stray["metadata"]["name"] = "stray"
    del stray["metadata"]["labels"]["inference.bloomz.dev/replica-index"]
    actions = PAIR.plan(want, [stray, *(observed(p) for p in want[0])], 0)
    assert reasons(actions) == [("stray", "scale down")]


def test_a_broken_group_is_reported_by_the_member_that_broke_it() -> None:
    groups = PAIR.desired("m/new", 2)
    (l0, w0), (l1, w1) = groups
    n = name
    cases = [
        ([observed(l0)], ReplicaFailure(0, n(w0), "worker", "MemberLost", f"pod {n(w0)} is gone")),
        (
            [observed(l0, terminating=True), observed(w0)],
            ReplicaFailure(0, n(l0), "leader", "MemberDeleted", f"pod {n(l0)} was deleted"),
        ),
        (
            [observed(l0, phase="Failed", ready=False), observed(w0)],
            ReplicaFailure(0, n(l0), "leader", "PodFailed", f"pod {n(l0)}: pod Failed"),
        ),
        (
            [observed(l0), observed(w0, phase="Failed", ready=False, reason="Evicted", message="low memory")],
            ReplicaFailure(0, n(w0), "worker", "Evicted", f"pod {n(w0)}: low memory"),
        ),
    ]
    for seen, failure in cases:
        assert find_broken(groups, seen) == [failure]
    # A group with nothing left is not broken (it is simply recreated); the next one still is checked.
    assert find_broken(groups, [observed(l1)]) == [
        ReplicaFailure(1, n(w1), "worker", "MemberLost", f"pod {n(w1)} is gone")
    ]


def test_the_lowest_group_index_is_replaced_first() -> None:
    old, new = PAIR.desired("m/old", 11), PAIR.desired("m/new", 11)
    seen = [observed(p) for i in (10, 2) for p in old[i]]
    seen += [observed(p) for i in range(11) if i not in (2, 10) for p in new[i]]
    assert reasons(PAIR.plan(new, seen, 0)) == [(name(old[2][0]), "template changed")]


def test_groups_scaled_to_zero_all_go_leaders_first() -> None:
    old = PAIR.desired("m/old", 2)
    cluster = SimCluster(stop_ticks=2)
    for group in old:
        for pod in group:
            cluster.add(pod)
    first = PAIR.plan([], cluster.observe(), 0)
    assert reasons(first) == [(name(g[0]), "scale down (old template)") for g in old]
    cluster.apply(first)
    cluster.tick()
    assert PAIR.plan([], cluster.observe(), 0) == []  # the leaders still drain: their workers stay
    cluster.tick()
    workers = PAIR.plan([], cluster.observe(), 0)
    assert reasons(workers) == [(name(g[1]), "its leader is gone") for g in old]
    cluster.apply(workers)
    cluster.tick()
    cluster.tick()
    assert cluster.pods == {} and PAIR.plan([], cluster.observe(), 0) == []


def test_a_group_whose_leader_ended_goes_whole() -> None:
    old, new = PAIR.desired("m/old", 1), PAIR.desired("m/new", 1)
    leader, worker = old[0]
    seen = [observed(leader, phase="Failed", ready=False), observed(worker)]
    assert reasons(PAIR.plan(new, seen, 0)) == [(n, "template changed") for n in names(old[0])]


def test_serving_groups_of_several_old_templates_go_by_index_first() -> None:
    a, b = PAIR.desired("m/a", 2), PAIR.desired("m/b", 2)
    first, second = sorted(
        (a, b), key=lambda groups: labels(groups[0][0])["inference.bloomz.dev/template-hash"]
    )
    new = PAIR.desired("m/new", 2)
    seen = [*(observed(p) for p in first[1]), *(observed(p) for p in second[0])]
    assert reasons(PAIR.plan(new, seen, 0)) == [(name(second[0][0]), "template changed")]
