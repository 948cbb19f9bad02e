"""The planner driven to convergence on a simulated cluster, for tables of rollouts and failures.

Every pass checks the rules the planner promises: the same observation plans the same actions; pods
(or groups) are only created while the total, terminating ones included, stays within replicas +
maxSurge; at least replicas - 1 (replicas, with a surge) keep serving while a template rolls out; and
the cluster converges to exactly the desired pods, all ready, with nothing left to do."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

import pytest
from bloomz_operator.builders import Owner, build_pods
from bloomz_operator.constants import LABEL_GROUP_MEMBER, LABEL_REPLICA_INDEX, LABEL_TEMPLATE_HASH
from bloomz_operator.groups import build_groups
from bloomz_operator.planning import plan_groups, plan_pods
from bloomz_operator.settings import Settings
from bloomz_operator.spec import parse_spec
from cluster_fakes import SimCluster, creates, deletes, name

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
    """Single-node replicas (plan_pods) or groups of `nodes` pods (plan_groups)."""

    nodes: int

    def spec(self, model: str, replicas: int) -> dict[str, Any]:
        cards = 8 * self.nodes
        return {"model": model, "cards": cards, "cardsPerNode": 8, "replicas": replicas}

    def desired(self, model: str, replicas: int) -> list[list[dict[str, Any]]]:
        spec = parse_spec(self.spec(model, replicas))
        if self.nodes == 1:
            return [[pod] for pod in build_pods(OWNER, spec, Settings())]
        return build_groups(OWNER, spec, Settings())

    def plan(
        self, groups: list[list[dict[str, Any]]], observed: list[dict[str, Any]], surge: int
    ) -> list[Any]:
        if self.nodes == 1:
            return plan_pods([g[0] for g in groups], observed, max_surge=surge)
        return plan_groups(groups, observed, max_surge=surge)


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
]


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
