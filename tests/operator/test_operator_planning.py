"""Planner: (desired, observed) -> create / delete actions, for every case of the reconciliation rules."""

from __future__ import annotations

from typing import Any

from bloomz_operator.builders import Owner
from bloomz_operator.planning import DeletePod
from bloomz_operator.settings import Settings
from bloomz_operator.spec import parse_spec
from cluster_fakes import build_pods, creates, deletes, name, observed, plan_pods

OWNER = Owner(name="b", namespace="ns", uid="u")


def desired(replicas: int = 1, cards: int = 8, model: str = "bigscience/bloomz-7b1") -> list[dict[str, Any]]:
    return build_pods(OWNER, parse_spec({"model": model, "cards": cards, "replicas": replicas}), Settings())


def test_nothing_observed_creates_every_replica() -> None:
    want = desired(3)
    actions = plan_pods(want, [])
    assert creates(actions) == [name(p) for p in want]
    assert deletes(actions) == []
    assert actions[0].body is want[0]  # type: ignore[union-attr]


def test_converged_state_needs_nothing() -> None:
    want = desired(2)
    assert plan_pods(want, [observed(p) for p in want]) == []
    # Pending or loading pods of the current template are left alone too.
    assert plan_pods(want, [observed(p, phase="Pending", ready=False) for p in want]) == []


def test_idempotent_after_a_restart_or_a_stale_view() -> None:
    want = desired(2)
    first = plan_pods(want, [observed(want[0])])
    assert creates(first) == [name(want[1])]
    # The same observation planned again (operator restart before the watch caught up) asks for the same
    # deterministic name: the API answers 409 and nothing is created twice.
    assert plan_pods(want, [observed(want[0])]) == first


def test_deleted_pod_is_replaced() -> None:
    want = desired(2)
    assert creates(plan_pods(want, [observed(want[1])])) == [name(want[0])]


def test_failed_pod_is_deleted_then_recreated() -> None:
    want = desired(1)
    actions = plan_pods(want, [observed(want[0], phase="Failed", ready=False)])
    assert deletes(actions) == [name(want[0])] and creates(actions) == []
    assert "Failed" in actions[0].reason  # type: ignore[union-attr]
    # While it terminates, its name and devices are still taken.
    assert plan_pods(want, [observed(want[0], phase="Failed", ready=False, terminating=True)]) == []
    # Once gone, it is created again.
    assert creates(plan_pods(want, [])) == [name(want[0])]


def test_scale_down_removes_extras() -> None:
    big = desired(3)
    small = desired(1)
    actions = plan_pods(small, [observed(p) for p in big])
    assert deletes(actions) == [name(big[1]), name(big[2])]
    assert creates(actions) == []


def test_scale_to_zero_removes_everything() -> None:
    pods = [observed(p) for p in desired(2)]
    assert sorted(deletes(plan_pods([], pods))) == sorted(name(p) for p in pods)


def test_scale_up_creates_the_missing_indices() -> None:
    want = desired(3)
    assert creates(plan_pods(want, [observed(want[0])])) == [name(want[1]), name(want[2])]


def test_rollout_one_replica_deletes_before_creating() -> None:
    old = [observed(p) for p in desired(1, cards=8)]
    new = desired(1, cards=4)
    step1 = plan_pods(new, old)
    assert deletes(step1) == [name(old[0])] and creates(step1) == []  # never 16 cards at once
    terminating = [observed(desired(1, cards=8)[0], terminating=True)]
    assert plan_pods(new, terminating) == []  # wait until its devices are free
    assert creates(plan_pods(new, [])) == [name(new[0])]


def test_rollout_two_replicas_goes_one_at_a_time_and_waits_for_ready() -> None:
    old_pods = desired(2, model="bigscience/bloomz-7b1")
    new = desired(2, model="bigscience/bloomz-3b")
    old = [observed(p) for p in old_pods]
    # 1: room is needed -> delete the first old pod only.
    assert deletes(plan_pods(new, old)) == [name(old_pods[0])]
    # 2: it is gone -> create the first new pod; the second old pod keeps serving.
    step2 = plan_pods(new, [old[1]])
    assert creates(step2) == [name(new[0])] and deletes(step2) == []
    # 3: the new pod loads (not ready) -> wait.
    assert plan_pods(new, [observed(new[0], ready=False), old[1]]) == []
    # 4: the new pod is ready -> replace the second old pod.
    step4 = plan_pods(new, [observed(new[0]), old[1]])
    assert deletes(step4) == [name(old_pods[1])] and creates(step4) == []
    # 5: gone -> create the second new pod.
    assert creates(plan_pods(new, [observed(new[0])])) == [name(new[1])]


def test_rollout_never_exceeds_the_card_budget() -> None:
    old_pods = desired(3, cards=8)
    new = desired(3, cards=4)
    state = [observed(p) for p in old_pods]
    for _ in range(20):
        actions = plan_pods(new, state)
        if not actions:
            break
        by_name = {name(p): p for p in state}
        for action in actions:
            if isinstance(action, DeletePod):
                del by_name[action.name]
            else:
                by_name[action.name] = observed(dict(action.body))
        state = list(by_name.values())
        cards = sum(int(p["spec"]["containers"][0]["resources"]["limits"]["habana.ai/gaudi"]) for p in state)
        assert cards <= 8 * 3
        assert len(state) <= 3
    assert sorted(name(p) for p in state) == sorted(name(p) for p in new)


def test_not_ready_old_pods_are_replaced_at_once() -> None:
    # Old pods that serve nothing (e.g. unschedulable with too many cards) need no careful rollout.
    old_pods = desired(2, cards=8)
    new = desired(2, cards=4)
    stuck = [observed(p, phase="Pending", ready=False) for p in old_pods]
    actions = plan_pods(new, stuck)
    assert sorted(deletes(actions)) == sorted(name(p) for p in old_pods)
    assert creates(actions) == []


def test_max_surge_creates_before_deleting() -> None:
    old_pods = desired(1, model="bigscience/bloomz-7b1")
    new = desired(1, model="bigscience/bloomz-3b")
    old = [observed(p) for p in old_pods]
    step1 = plan_pods(new, old, max_surge=1)
    assert creates(step1) == [name(new[0])] and deletes(step1) == []
    # While the new pod loads, the old one keeps serving.
    assert plan_pods(new, [*old, observed(new[0], ready=False)], max_surge=1) == []
    # Once the new pod serves, the old one goes.
    assert deletes(plan_pods(new, [*old, observed(new[0])], max_surge=1)) == [name(old_pods[0])]


def test_terminating_current_pod_is_waited_for() -> None:
    want = desired(1)
    assert plan_pods(want, [observed(want[0], terminating=True)]) == []
