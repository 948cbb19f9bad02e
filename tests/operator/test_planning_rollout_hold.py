"""A held settings rollout and the rollout gate, one rule per case: which planned actions a hold keeps,
which replica indexes it fills within replicas + maxSurge, and when the gate admits and wakes resources."""

from __future__ import annotations

from typing import Any

from bloomz_operator.builders import Owner
from bloomz_operator.planning import CreatePod, DeletePod, RolloutGate, hold_rollout
from bloomz_operator.settings import Settings
from bloomz_operator.spec import parse_spec
from cluster_fakes import build_pods, name, observed

OWNER = Owner(name="h", namespace="ns", uid="u")


def pods(model: str, replicas: int) -> list[dict[str, Any]]:
    return build_pods(OWNER, parse_spec({"model": model, "cards": 8, "replicas": replicas}), Settings())


def units(model: str, replicas: int) -> list[list[dict[str, Any]]]:
    return [[pod] for pod in pods(model, replicas)]


def created(actions: list[Any]) -> list[str]:
    return [a.name for a in actions if isinstance(a, CreatePod)]


def stray_old(index: int) -> dict[str, Any]:
    """A live old-template pod at a replica index beyond the desired ones (its scale-down is pending)."""
    return observed(pods("m/old", index + 1)[index])


def test_a_free_index_is_filled_only_within_the_budget() -> None:
    new = units("m/new", 2)
    seen = [observed(pods("m/old", 1)[0]), stray_old(5)]  # two units hold devices: the budget is full
    assert hold_rollout([], seen, new) == []  # no surge by default
    assert created(hold_rollout([], seen, new, max_surge=1)) == [name(new[1][0])]
    # Every unit filled counts: with one unit held, two of three free indexes fit.
    three = units("m/new", 3)
    assert created(hold_rollout([], [stray_old(7)], three)) == [name(three[0][0]), name(three[1][0])]


def test_planned_creates_count_and_are_not_repeated() -> None:
    new = units("m/new", 2)
    assert created(hold_rollout([CreatePod(new[0][0])], [], new)) == [name(new[0][0]), name(new[1][0])]
    # A stray unit and the planned create fill the budget of two.
    assert created(hold_rollout([CreatePod(new[0][0])], [stray_old(5)], new)) == [name(new[0][0])]


def test_template_deletions_and_held_creates_are_dropped_and_the_rest_kept() -> None:
    old, new = pods("m/old", 2), units("m/new", 2)
    seen = [observed(old[0]), observed(old[1], terminating=True)]
    actions = [
        DeletePod(name(old[0]), "template changed"),
        CreatePod(new[0][0]),  # index 0: an old pod still serves there
        DeletePod("x", "scale down"),
        CreatePod(new[1][0]),  # index 1: its old pod is going away, so the new one may come
    ]
    assert hold_rollout(actions, seen, new) == [DeletePod("x", "scale down"), CreatePod(new[1][0])]


def test_one_desired_unit_and_none() -> None:
    (only,) = units("m/new", 1)
    assert created(hold_rollout([], [], [only])) == [name(only[0])]
    scale_down = [DeletePod("x", "scale down")]
    assert hold_rollout(scale_down, [stray_old(3)], []) == scale_down


def test_the_gate_wakes_nobody_before_a_slot_frees() -> None:
    gate = RolloutGate(max_at_once=5, per_minute=1)
    assert gate.admit("a", 0.0) and not gate.admit("b", 1.0)
    assert gate.to_wake(61.0) == []  # a start left the window, but no rollout finished


def test_the_per_minute_window_is_60_seconds_back_from_now() -> None:
    gate = RolloutGate(max_at_once=5, per_minute=1)
    assert gate.admit("a", 100.0)
    assert not gate.admit("b", 130.0) and not gate.admit("b", 159.9)
    assert gate.admit("b", 160.0)


def test_an_admitted_waiter_is_no_longer_woken() -> None:
    gate = RolloutGate(max_at_once=2, per_minute=100)
    assert gate.admit("a", 0.0) and gate.admit("x", 0.0)
    assert not gate.admit("b", 1.0) and not gate.admit("c", 2.0)
    gate.finish("a")
    assert gate.to_wake(3.0) == ["b"]
    assert gate.admit("b", 3.0)
    gate.finish("x")
    assert gate.to_wake(4.0) == ["c"]


def test_a_slot_taken_before_the_wake_up_wakes_nobody() -> None:
    gate = RolloutGate(max_at_once=1, per_minute=100)
    assert gate.admit("a", 0.0) and not gate.admit("b", 1.0)
    gate.finish("a")
    assert gate.admit("c", 2.0)  # a new resource came first
    assert gate.to_wake(3.0) == []


def test_waiters_wake_by_waiting_time_not_by_name() -> None:
    gate = RolloutGate(max_at_once=1, per_minute=100)
    assert gate.admit("m", 0.0)
    assert not gate.admit("z", 1.0) and not gate.admit("a", 2.0)
    gate.finish("m")
    assert gate.to_wake(3.0) == ["z"]
