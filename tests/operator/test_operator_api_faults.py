"""The operator against a failing or slow API server, as pure logic: retry backoff, jitter, the API error
condition, the pod selector, and the rate gate for rollouts its own settings cause."""

from __future__ import annotations

import copy
import json
import logging
from dataclasses import replace
from datetime import datetime, timedelta, timezone
from typing import Any, cast

import pytest
from bloomz_operator.backoff import backoff_delay, jittered, stable_fraction
from bloomz_operator.builders import Owner
from bloomz_operator.kubeapi import OWNED_PODS_SELECTOR, KubeAPI, describe_api_error
from bloomz_operator.latency import benchmark_due, format_time
from bloomz_operator.planning import (
    CreatePod,
    DeletePod,
    RolloutGate,
    hold_rollout,
    rollout_finished,
    settings_rollout,
)
from bloomz_operator.reconciler import api_error_reason, failed_pass_status, reconcile
from bloomz_operator.settings import DeviceSettings, Settings, SettingsError, parse_settings
from bloomz_operator.spec import BenchmarkSpec, parse_spec
from cluster_fakes import FakeAPI, build_pods, plan_pods
from kubernetes.client.rest import ApiException

LOG = logging.getLogger("test")
SPEC = {"model": "bigscience/bloomz-7b1", "device": "cpu", "cards": 2, "replicas": 2}
PSS_MESSAGE = (
    'pods "b-1" is forbidden: violates PodSecurity "restricted:latest": allowPrivilegeEscalation != false'
)


# --- backoff and jitter ------------------------------------------------------------------------------------


def test_backoff_doubles_from_base_to_cap_and_stays_in_the_upper_half() -> None:
    ceilings = [backoff_delay(n, base=1.0, cap=60.0, rand=1.0) for n in range(1, 10)]
    assert ceilings == [1.0, 2.0, 4.0, 8.0, 16.0, 32.0, 60.0, 60.0, 60.0]
    floors = [backoff_delay(n, base=1.0, cap=60.0, rand=0.0) for n in range(1, 10)]
    assert floors == [c / 2 for c in ceilings]
    assert backoff_delay(0, base=1.0, cap=60.0, rand=0.5) == 0.0
    assert backoff_delay(10_000, base=1.0, cap=300.0, rand=0.5) == 225.0  # no overflow on a long outage


def test_jitter_spreads_within_ten_percent() -> None:
    assert jittered(10.0, 0.0) == pytest.approx(9.0)
    assert jittered(10.0, 0.5) == pytest.approx(10.0)
    assert jittered(10.0, 1.0) == pytest.approx(11.0)


def test_stable_fraction_is_fixed_by_its_keys_and_spread() -> None:
    assert stable_fraction("uid-1", "t") == stable_fraction("uid-1", "t")
    values = [stable_fraction(f"uid-{i}", "t") for i in range(500)]
    assert all(0.0 <= v < 1.0 for v in values)
    assert len(set(values)) == 500  # distinct per resource
    assert min(values) < 0.05 and max(values) > 0.95


def test_hourly_benchmarks_of_resources_measured_together_come_due_at_different_times() -> None:
    measured_at = datetime(2026, 1, 1, 12, 0, tzinfo=timezone.utc)
    latency = {"measuredAt": format_time(measured_at), "templateHash": "h"}
    bench = BenchmarkSpec(interval_seconds=3600)

    def due_after(uid: str) -> float:
        # The first whole minute after which the measurement is due.
        for minute in range(40, 80):
            now = measured_at + timedelta(minutes=minute)
            if benchmark_due(
                latency=latency, bench=bench, requested=False, current_hash="h", now=now, jitter_key=uid
            ):
                return minute
        raise AssertionError("never due")

    minutes = [due_after(f"uid-{i}") for i in range(100)]
    assert min(minutes) >= 54 and max(minutes) <= 67  # 3600 s +- 10 %
    assert len(set(minutes)) >= 8  # not all in the same minute
    # Without a key (and on request) the interval is exact, as before.
    now = measured_at + timedelta(seconds=3599)
    assert not benchmark_due(latency=latency, bench=bench, requested=False, current_hash="h", now=now)


# --- settings ---------------------------------------------------------------------------------------------


def test_api_and_rollout_settings_have_bounded_defaults_and_refuse_nonsense() -> None:
    defaults = Settings()
    assert defaults.api.request_timeout_seconds > 0 and defaults.api.connect_timeout_seconds > 0
    assert defaults.rollout.max_resources_at_once >= 1
    parsed = parse_settings(
        {"api": {"requestTimeoutSeconds": 5, "retryMaxSeconds": 30}, "rollout": {"maxResourcesPerMinute": 2}}
    )
    assert parsed.api.request_timeout_seconds == 5.0 and parsed.api.retry_max_seconds == 30.0
    assert parsed.rollout.max_resources_per_minute == 2
    assert parsed.rollout.max_resources_at_once == defaults.rollout.max_resources_at_once
    for bad, words in [
        ({"api": {"requestTimeoutSeconds": 0}}, "api.requestTimeoutSeconds: must be > 0"),
        ({"api": {"timeout": 1}}, "api: unknown key(s) timeout"),
        ({"api": {"retryBaseSeconds": 10, "retryMaxSeconds": 5}}, "retryMaxSeconds: must be >="),
        ({"rollout": {"maxResourcesAtOnce": 0}}, "rollout.maxResourcesAtOnce: must be >= 1"),
        ({"rollout": {"maxResourcesAtOnce": 1.5}}, "expected int"),
    ]:
        with pytest.raises(SettingsError, match=words.replace("(", r"\(").replace(")", r"\)")):
            parse_settings(bad)


# --- the API client: bounded calls, the pod selector --------------------------------------------------------


class RecordingCoreV1:
    def __init__(self) -> None:
        self.kwargs: dict[str, Any] = {}

    def list_namespaced_pod(self, namespace: str, **kwargs: Any) -> Any:
        self.kwargs = kwargs

        class Response:
            data = json.dumps({"items": [{"metadata": {"name": "p"}}]}).encode()

        return Response()


def test_every_call_is_bounded_and_pods_are_listed_with_the_operators_selector() -> None:
    api = KubeAPI(
        cast(Any, None), replace(Settings().api, connect_timeout_seconds=3, request_timeout_seconds=7)
    )
    core = RecordingCoreV1()
    api.core._api = core
    assert api.list_pods("ns") == [{"metadata": {"name": "p"}}]
    assert core.kwargs["_request_timeout"] == (3, 7)
    assert (
        core.kwargs["label_selector"] == OWNED_PODS_SELECTOR == "app.kubernetes.io/managed-by=bloomz-operator"
    )
    api.list_pods("ns", "b")
    selector = core.kwargs["label_selector"]
    assert selector == f"{OWNED_PODS_SELECTOR},inference.bloomz.dev/name=b"
    # Every pod built for the resource carries the labels the selector asks for.
    for pod in build_pods(Owner("b", "ns", "u"), parse_spec(SPEC), Settings()):
        for term in selector.split(","):
            key, value = term.split("=")
            assert pod["metadata"]["labels"][key] == value


def forbidden(message: str = PSS_MESSAGE) -> ApiException:
    error = ApiException(status=403, reason="Forbidden")
    error.body = json.dumps({"kind": "Status", "reason": "Forbidden", "message": message, "code": 403})
    return error


def test_api_errors_are_described_with_the_servers_own_message() -> None:
    assert describe_api_error(forbidden()) == f"403 Forbidden: {PSS_MESSAGE}"
    assert api_error_reason(forbidden()) == "Forbidden"
    assert api_error_reason(ApiException(status=500, reason="Internal")) == "APIError500"
    assert api_error_reason(TimeoutError("read timed out")) == "APIUnreachable"
    assert describe_api_error(TimeoutError("read timed out")) == "TimeoutError: read timed out"


# --- the reconciler: a refused write becomes a condition -------------------------------------------------


OWNER = Owner(name="b", namespace="ns", uid="u")


def run_pass(api: FakeAPI, old_status: dict[str, Any] | None = None, **kwargs: Any) -> Any:
    settings = kwargs.pop("settings", Settings())
    return reconcile(
        cast(KubeAPI, api), settings, owner=kwargs.pop("owner", OWNER), spec=SPEC, generation=1,
        old_status=old_status, logger=LOG, **kwargs,
    )  # fmt: skip


def conditions(status: dict[str, Any]) -> dict[str, dict[str, Any]]:
    return {c["type"]: c for c in status["conditions"]}


def test_a_refused_pod_create_is_written_into_the_reconciled_condition_with_the_api_message() -> None:
    api = FakeAPI(refuse=forbidden())
    outcome = run_pass(api)
    cond = conditions(outcome.status)["Reconciled"]
    assert (cond["status"], cond["reason"]) == ("False", "Forbidden")
    assert "violates PodSecurity" in cond["message"] and cond["message"].startswith("creating pod b-")
    assert any(e.reason == "Forbidden" and e.type == "Warning" for e in outcome.events)
    assert outcome.status["phase"] == "Pending"
    # The next pass, still refused: same condition, same transition time, no second warning.
    again = run_pass(api, old_status=outcome.status)
    assert conditions(again.status)["Reconciled"]["lastTransitionTime"] == cond["lastTransitionTime"]
    assert not any(e.reason == "Forbidden" for e in again.events)
    # Admission fixed: pods are created and the condition turns True.
    api.refuse = None
    fixed = run_pass(api, old_status=again.status)
    assert len(api.pods) == 2
    assert conditions(fixed.status)["Reconciled"]["status"] == "True"


def test_server_errors_fail_the_pass_and_the_failure_status_keeps_the_other_conditions() -> None:
    api = FakeAPI(refuse=ApiException(status=500, reason="Internal Server Error"))
    with pytest.raises(ApiException):
        run_pass(api)  # retried as a whole, with backoff, by the handler
    old = run_pass(FakeAPI()).status
    patch = failed_pass_status(TimeoutError("read timed out"), old)
    kept = conditions(patch)
    assert kept["Ready"] == conditions(old)["Ready"]
    assert (kept["Reconciled"]["status"], kept["Reconciled"]["reason"]) == ("False", "APIUnreachable")
    assert "read timed out" in kept["Reconciled"]["message"]


# --- rollouts the operator's settings cause -----------------------------------------------------------------


def ready(pod: dict[str, Any]) -> dict[str, Any]:
    pod = copy.deepcopy(pod)
    running = {"running": {"startedAt": "2026-01-01T00:00:00Z"}}
    pod["status"] = {
        "phase": "Running",
        "conditions": [{"type": "PodScheduled", "status": "True"}, {"type": "Ready", "status": "True"}],
        "containerStatuses": [
            {"name": "runtime", "ready": True, "started": True, "restartCount": 0, "state": running}
        ],
    }
    return pod


def test_a_settings_rollout_is_a_hash_change_without_a_spec_change() -> None:
    assert settings_rollout({"templateHash": "old", "observedGeneration": 3}, 3, "new")
    assert not settings_rollout({"templateHash": "old", "observedGeneration": 2}, 3, "new")  # spec changed
    assert not settings_rollout({"templateHash": "new", "observedGeneration": 3}, 3, "new")
    assert not settings_rollout({}, 3, "new")  # a new resource
    assert not settings_rollout(None, None, "new")


def test_holding_a_rollout_keeps_old_pods_and_still_replaces_failed_ones() -> None:
    spec = parse_spec(SPEC)
    old = [ready(p) for p in build_pods(OWNER, spec, Settings())]
    new_settings = replace(Settings(), devices={**Settings().devices, "cpu": DeviceSettings(image="cpu:2")})
    new = build_pods(OWNER, spec, new_settings)
    actions = plan_pods(new, old)
    assert any(isinstance(a, DeletePod) and a.reason == "template changed" for a in actions)
    units = [[pod] for pod in new]
    assert hold_rollout(actions, old, units) == []
    # A failed old pod is still replaced (the new template fills its place), the other old pod stays.
    failed = copy.deepcopy(old[1])
    failed["status"] = {"phase": "Failed"}
    actions = hold_rollout(plan_pods(new, [old[0], failed]), [old[0], failed], units)
    assert [type(a).__name__ for a in actions] == ["DeletePod"] and actions[0].reason.startswith("pod Failed")
    actions = hold_rollout(plan_pods(new, [old[0]]), [old[0]], units)
    assert [a.name for a in actions if isinstance(a, CreatePod)] == [new[1]["metadata"]["name"]]
    assert not rollout_finished([old[0], ready(new[1])], units)
    assert not rollout_finished([ready(new[1])], units)  # the old pod is gone, its successor not there yet
    assert not rollout_finished([], units)
    assert rollout_finished([ready(p) for p in new], units)
    assert not rollout_finished(new, units)  # not ready yet


def test_the_gate_bounds_resources_rolling_at_once_and_per_minute() -> None:
    gate = RolloutGate(max_at_once=2, per_minute=3)
    assert gate.admit("a", 0.0) and gate.admit("b", 1.0)
    assert not gate.admit("c", 2.0)  # two rolling
    assert gate.admit("a", 3.0)  # admitted resources keep their slot
    gate.finish("a")
    assert gate.admit("c", 4.0)
    gate.finish("b")
    gate.finish("c")
    assert not gate.admit("d", 30.0)  # three started within the last minute
    assert gate.admit("d", 60.5)  # "a" started more than 60 s ago
    assert gate.rolling() == {"d"}


def test_the_gate_wakes_the_longest_waiting_resources_once_a_slot_frees() -> None:
    gate = RolloutGate(max_at_once=1, per_minute=100)
    assert gate.admit("a", 0.0)
    assert not gate.admit("b", 1.0) and not gate.admit("c", 2.0) and not gate.admit("b", 3.0)
    assert gate.to_wake(4.0) == []  # nothing freed
    gate.finish("a")
    assert gate.to_wake(5.0) == ["b"]  # one slot: the longest-waiting resource only
    assert gate.to_wake(5.0) == []  # once per freed slot
    assert gate.admit("b", 6.0) and not gate.admit("c", 6.0)
    gate.finish("c")  # deleted while waiting
    gate.finish("b")
    assert gate.to_wake(7.0) == []


def test_a_settings_change_rolls_one_resource_while_the_next_keeps_serving_its_old_pods() -> None:
    spec = parse_spec(SPEC)
    new_settings = replace(Settings(), devices={**Settings().devices, "cpu": DeviceSettings(image="cpu:2")})
    gate = RolloutGate(max_at_once=1, per_minute=10)
    outcomes = {}
    for owner in (Owner("first", "ns", "u1"), Owner("second", "ns", "u2")):
        api = FakeAPI()
        old_pods = [ready(p) for p in build_pods(owner, spec, Settings())]
        api.pods = {p["metadata"]["name"]: p for p in old_pods}
        old_status = run_pass(api, owner=owner).status  # written by the old operator
        assert old_status["phase"] == "Ready"
        outcomes[owner.name] = run_pass(api, old_status, owner=owner, settings=new_settings, gate=gate)
    rolled, held = outcomes["first"], outcomes["second"]
    assert any(isinstance(a, DeletePod) for a in rolled.actions)
    assert rolled.status["templateHash"] != held.status["templateHash"]
    assert held.actions == [] and held.status["phase"] == "Ready"  # still serving, still about its old pods
    assert gate.rolling() == {"u1"}


def test_kopfs_own_calls_are_bounded_and_pods_are_watched_with_the_selector() -> None:
    import kopf
    from bloomz_operator.handlers import register_handlers
    from bloomz_operator.settings import ApiSettings

    registry = kopf.OperatorRegistry()
    api = ApiSettings(request_timeout_seconds=12, connect_timeout_seconds=4, watch_timeout_seconds=100)
    register_handlers(registry, replace(Settings(), api=api), api_factory=lambda: None)
    (configure,) = [h for h in registry._activities.get_all_handlers() if h.id == "configure"]  # type: ignore[attr-defined]
    kopf_settings = kopf.OperatorSettings()
    cast(Any, configure.fn)(settings=kopf_settings)
    assert kopf_settings.networking.request_timeout == 12 and kopf_settings.networking.connect_timeout == 4
    assert kopf_settings.watching.server_timeout == 100 and kopf_settings.watching.client_timeout == 160
    pods = kopf.Resource("", "v1", "pods")
    assert list(kopf_settings.watching.label_selectors.collect(pods)) == [OWNED_PODS_SELECTOR]


def test_holding_a_rollout_keeps_whole_multi_node_groups() -> None:
    from bloomz_operator.groups import build_replicas
    from bloomz_operator.planning import plan_replicas

    spec = parse_spec({"model": "bigscience/bloomz", "cards": 16, "cardsPerNode": 8, "replicas": 2})
    old = [ready(p) for group in build_replicas(OWNER, spec, Settings()) for p in group]
    hpu = replace(Settings().devices["hpu"], image="gaudi:2")
    new_groups = build_replicas(OWNER, spec, replace(Settings(), devices={**Settings().devices, "hpu": hpu}))
    actions = plan_replicas(new_groups, old)
    assert any(isinstance(a, DeletePod) and a.reason == "template changed" for a in actions)
    assert hold_rollout(actions, old, new_groups) == []
    # Group 1 was evicted and is gone: it comes back whole, on the new template; group 0 keeps serving.
    group0 = [p for p in old if p["metadata"]["labels"]["inference.bloomz.dev/replica-index"] == "0"]
    held = hold_rollout(plan_replicas(new_groups, group0), group0, new_groups)
    assert sorted(a.name for a in held if isinstance(a, CreatePod)) == sorted(
        p["metadata"]["name"] for p in new_groups[1]
    )
    assert not any(isinstance(a, DeletePod) for a in held)
    assert rollout_finished([ready(p) for g in new_groups for p in g], new_groups)
    assert not rollout_finished([ready(p) for p in new_groups[0]], new_groups)
