"""Status from members in every state: a table of single pods through `diagnose`, then mixtures through
`compute_status` (failures first, terminating and old-template pods, groups) and the events they post."""

from __future__ import annotations

import copy
from typing import Any

import pytest
from bloomz_operator.builders import Owner
from bloomz_operator.groups import build_replicas
from bloomz_operator.settings import Settings
from bloomz_operator.spec import parse_spec
from bloomz_operator.status import Diagnosis, compute_status, diagnose, diagnose_member, status_events
from cluster_fakes import build_pods

OWNER = Owner(name="b", namespace="ns", uid="u")
NOW, EARLIER = "2026-01-02T00:00:00Z", "2026-01-01T00:00:00Z"


def single(replicas: int = 2, model: str = "m/a") -> list[dict[str, Any]]:
    return build_pods(OWNER, parse_spec({"model": model, "cards": 8, "replicas": replicas}), Settings())


def pairs(replicas: int = 1) -> list[list[dict[str, Any]]]:
    spec = {"model": "m/a", "cards": 16, "cardsPerNode": 8, "replicas": replicas}
    return build_replicas(OWNER, parse_spec(spec), Settings())


def labels(pod: dict[str, Any]) -> dict[str, str]:
    return dict(pod["metadata"]["labels"])


def with_status(
    body: dict[str, Any], phase: str, *, node: str | None = "n0", terminating: bool = False, **status: Any
) -> dict[str, Any]:
    pod = copy.deepcopy(body)
    if node:
        pod["spec"]["nodeName"] = node
    pod["status"] = {"phase": phase, **status}
    if terminating:
        pod["metadata"]["deletionTimestamp"] = EARLIER
    return pod


def cond(type_: str, ok: bool, **extra: Any) -> dict[str, Any]:
    return {"type": type_, "status": "True" if ok else "False", **extra}


def box(name: str = "runtime", **fields: Any) -> dict[str, Any]:
    return {"name": name, "ready": False, "started": False, "restartCount": 0, **fields}


def crash(
    code: int | None = 1, reason: str | None = "Error", restarts: int = 3, message: str | None = None
) -> Any:
    last: dict[str, Any] = {}
    if code is not None:
        last["exitCode"] = code
    if reason:
        last["reason"] = reason
    if message is not None:
        last["message"] = message
    return box(
        restartCount=restarts,
        state={"waiting": {"reason": "CrashLoopBackOff"}},
        lastState={"terminated": last} if last else {},
    )


def serving(body: dict[str, Any], **extra: Any) -> dict[str, Any]:
    return with_status(
        body,
        "Running",
        conditions=[cond("Ready", True)],
        containerStatuses=[box(started=True, ready=True)],
        **extra,
    )


def loading(body: dict[str, Any], **extra: Any) -> dict[str, Any]:
    return with_status(body, "Running", conditions=[cond("Ready", False)], containerStatuses=[box()], **extra)


def crashing(body: dict[str, Any]) -> dict[str, Any]:
    return with_status(body, "Running", conditions=[cond("Ready", False)], containerStatuses=[crash()])


P = single(1)[0]
N = P["metadata"]["name"]
LONG = "x" * 400

# (pod, scheduled, loaded, ready, reason, message, failed)
DIAGNOSES: list[tuple[str, dict[str, Any], Diagnosis]] = [
    (
        "evicted",
        with_status(P, "Failed", reason="Evicted", message="The node was low on memory."),
        Diagnosis(N, True, False, False, "Evicted", f"{N}: The node was low on memory.", failed=True),
    ),
    (
        "failed-bare",
        with_status(P, "Failed", node=None),
        Diagnosis(N, False, False, False, "PodFailed", f"{N}: pod Failed", failed=True),
    ),
    (
        "succeeded",
        with_status(P, "Succeeded"),
        Diagnosis(N, True, False, False, "PodSucceeded", f"{N}: pod Succeeded", failed=True),
    ),
    (
        "unschedulable",
        with_status(
            P,
            "Pending",
            node=None,
            conditions=[cond("PodScheduled", False, reason="Unschedulable", message="0/3")],
        ),
        Diagnosis(N, False, False, False, "Unschedulable", f"{N}: 0/3"),
    ),
    (
        "unschedulable-bare",
        with_status(P, "Pending", node=None, conditions=[cond("PodScheduled", False)]),
        Diagnosis(N, False, False, False, "Unschedulable", f"{N}: Unschedulable"),
    ),
    (
        "scheduling",
        with_status(P, "Pending", node=None),
        Diagnosis(N, False, False, False, "Scheduling", f"{N}: waiting for the scheduler"),
    ),
    (
        "scheduled-by-condition",
        with_status(P, "Pending", node=None, conditions=[cond("PodScheduled", True)]),
        Diagnosis(N, True, False, False, "ContainerCreating", f"{N}: starting the container (Pending)"),
    ),
    (
        "crash-loop",
        with_status(P, "Running", containerStatuses=[crash(message=" worker w.h: does not resolve\n")]),
        Diagnosis(
            N,
            True,
            False,
            False,
            "CrashLoopBackOff",
            f"{N}: container runtime keeps crashing: exit code 1 (Error), 3 restarts: "
            "worker w.h: does not resolve",
            failed=True,
        ),
    ),
    (
        "crash-loop-bare",
        with_status(P, "Running", containerStatuses=[crash(code=None, reason=None, restarts=0)]),
        Diagnosis(
            N,
            True,
            False,
            False,
            "CrashLoopBackOff",
            f"{N}: container runtime keeps crashing: no exit code",
            True,
        ),
    ),
    (
        "crash-loop-exit-0-long-message",
        with_status(P, "Running", containerStatuses=[crash(code=0, reason=None, restarts=1, message=LONG)]),
        Diagnosis(
            N,
            True,
            False,
            False,
            "CrashLoopBackOff",
            f"{N}: container runtime keeps crashing: exit code 0, 1 restarts: {'x' * 300}",
            True,
        ),
    ),
    (
        "image-pull",
        with_status(
            P,
            "Pending",
            containerStatuses=[box(state={"waiting": {"reason": "ImagePullBackOff", "message": "Back-off"}})],
        ),
        Diagnosis(N, True, False, False, "ImagePullBackOff", f"{N}: container runtime: Back-off", True),
    ),
    (
        "config-error-in-an-init-container",
        with_status(
            P,
            "Pending",
            initContainerStatuses=[box("init", state={"waiting": {"reason": "CreateContainerConfigError"}})],
        ),
        Diagnosis(
            N,
            True,
            False,
            False,
            "CreateContainerConfigError",
            f"{N}: container init: CreateContainerConfigError",
            True,
        ),
    ),
    ("serving", serving(P), Diagnosis(N, True, True, True, "Serving", f"{N}: serving")),
    (
        "not-ready",
        with_status(P, "Running", conditions=[cond("Ready", False)], containerStatuses=[box(started=True)]),
        Diagnosis(N, True, True, False, "NotReady", f"{N}: model loaded, readiness probe failing"),
    ),
    (
        "loading",
        loading(P),
        Diagnosis(N, True, False, False, "Loading", f"{N}: loading the model and warming up"),
    ),
    (
        "one-of-two-started",
        with_status(P, "Running", containerStatuses=[box(started=True), box("side")]),
        Diagnosis(N, True, False, False, "Loading", f"{N}: loading the model and warming up"),
    ),
    (
        "running-without-statuses",
        with_status(P, "Running"),
        Diagnosis(N, True, False, False, "Loading", f"{N}: loading the model and warming up"),
    ),
    (
        "pulling",
        with_status(
            P,
            "Pending",
            containerStatuses=[
                box("a", state={"waiting": {}}),
                box(state={"waiting": {"reason": "ContainerCreating", "message": " Pulling image " + LONG}}),
            ],
        ),
        Diagnosis(
            N,
            True,
            False,
            False,
            "ContainerCreating",
            f"{N}: starting the container (Pending): {('Pulling image ' + LONG)[:300]}",
        ),
    ),
    (
        "waiting-reason-only",
        with_status(P, "Pending", containerStatuses=[box(state={"waiting": {"reason": "PodInitializing"}})]),
        Diagnosis(N, True, False, False, "PodInitializing", f"{N}: starting the container (Pending)"),
    ),
]


@pytest.mark.parametrize(("pod", "expected"), [d[1:] for d in DIAGNOSES], ids=[d[0] for d in DIAGNOSES])
def test_diagnose_each_state(pod: dict[str, Any], expected: Diagnosis) -> None:
    assert diagnose(pod) == expected


def test_a_worker_is_done_once_its_sshd_runs() -> None:
    leader, worker = pairs()[0]
    wname = worker["metadata"]["name"]
    assert diagnose_member(loading(worker)) == Diagnosis(
        wname, True, False, False, "StartingSSH", f"{wname}: worker starting sshd"
    )
    for unchanged in (
        with_status(worker, "Pending"),
        with_status(worker, "Pending", node=None),
        crashing(worker),
        serving(worker),
        loading(leader),
    ):
        assert diagnose_member(unchanged) == diagnose(unchanged)


def conditions(status: dict[str, Any]) -> dict[str, tuple[str, str, str]]:
    return {c["type"]: (c["status"], c["reason"], c["message"]) for c in status["conditions"]}


def status_of(pods: list[dict[str, Any]], replicas: int, **kwargs: Any) -> dict[str, Any]:
    current = labels(single(1)[0])["inference.bloomz.dev/template-hash"]
    return compute_status(
        replicas=replicas,
        observed=pods,
        current_hash=current,
        endpoint="e:1",
        generation=3,
        now=NOW,
        **kwargs,
    )


def test_failures_are_reported_before_pods_that_are_merely_loading() -> None:
    a, b = single(2)
    for pods in ([loading(a), crashing(b)], [crashing(b), loading(a)]):
        got = status_of(pods, 2)
        assert got["phase"] == "Failed"
        assert conditions(got)["ModelLoaded"][1] == "CrashLoopBackOff"
        assert conditions(got)["Ready"][:2] == ("False", "CrashLoopBackOff")


def test_one_serving_replica_of_two_is_degraded() -> None:
    a, b = single(2)
    got = status_of([serving(a), crashing(b)], 2)
    assert got["phase"] == "Degraded" and got["readyReplicas"] == 1 and got["replicas"] == 2
    assert conditions(got)["Ready"] == ("False", "CrashLoopBackOff", "1/2 replicas serving")


def test_every_replica_serving_is_ready() -> None:
    a, b = single(2)
    got = status_of([serving(a), serving(b)], 2)
    assert got["phase"] == "Ready"
    assert conditions(got) == {
        "Scheduled": ("True", "AllScheduled", "2 pod(s) scheduled"),
        "ModelLoaded": ("True", "Loaded", "the model is loaded and warmed up in every pod"),
        "Ready": ("True", "Serving", "2/2 replicas serving"),
    }
    assert (got["endpoint"], got["observedGeneration"], got["templateHash"]) == (
        "e:1",
        3,
        labels(a)["inference.bloomz.dev/template-hash"],
    )


def test_missing_pods_are_pending() -> None:
    a, b, _ = single(3)
    got = status_of([serving(a), serving(b)], 3)
    pending = "1 of 3 pod(s) not created yet"
    assert conditions(got)["Scheduled"] == ("False", "PodsPending", pending)
    assert conditions(got)["ModelLoaded"] == ("False", "PodsPending", pending)
    assert conditions(got)["Ready"] == ("False", "PodsPending", "2/3 replicas serving")
    assert got["phase"] == "Degraded"


@pytest.mark.parametrize(
    ("make", "phase"),
    [
        (lambda p: with_status(p, "Pending", node=None), "Pending"),
        (lambda p: with_status(p, "Pending"), "Loading"),
        (loading, "Loading"),
        (crashing, "Failed"),
    ],
)
def test_phase_without_a_serving_replica(make: Any, phase: str) -> None:
    assert status_of([make(single(1)[0])], 1)["phase"] == phase


def test_terminating_pods_count_for_nothing() -> None:
    a, b = single(2)
    got = status_of([serving(a), serving(b, terminating=True)], 2)
    assert (got["replicas"], got["readyReplicas"], got["phase"]) == (1, 1, "Degraded")


def test_serving_pods_of_an_old_template_count_but_do_not_make_it_ready() -> None:
    (old,) = single(1, model="m/old")
    (new,) = single(1)
    got = status_of([serving(old), loading(new)], 1)
    assert got["readyReplicas"] == 1 and got["replicas"] == 2
    assert conditions(got)["Ready"][:2] == ("False", "Loading") and got["phase"] == "Degraded"
    assert status_of([serving(old), serving(new)], 1)["phase"] == "Ready"


def test_scaled_to_zero_is_stopped() -> None:
    got = status_of([], 0)
    assert got["phase"] == "Stopped"
    assert {c["reason"] for c in got["conditions"]} == {"ScaledToZero"}
    assert [c["status"] for c in got["conditions"]] == ["True", "False", "False"]


def test_transition_times_change_only_with_the_status() -> None:
    (a,) = single(1)
    before = [
        {"type": "Scheduled", "status": "True", "lastTransitionTime": EARLIER},
        {"type": "ModelLoaded", "status": "True", "lastTransitionTime": EARLIER},
        {"type": "Ready", "status": "True"},  # no time recorded: now
    ]
    got = status_of([loading(a)], 1, previous_conditions=before)
    times = {c["type"]: c["lastTransitionTime"] for c in got["conditions"]}
    assert times == {"Scheduled": EARLIER, "ModelLoaded": NOW, "Ready": NOW}
    assert "observedGeneration" not in compute_status(
        replicas=1, observed=[], current_hash="h", endpoint="e", generation=None, now=NOW
    )


def group_status(pods: list[dict[str, Any]], replicas: int = 1) -> dict[str, Any]:
    current = labels(pairs()[0][0])["inference.bloomz.dev/template-hash"]
    return compute_status(
        replicas=replicas, observed=pods, current_hash=current, endpoint="e", generation=1, now=NOW, nodes=2
    )


def test_a_group_serves_only_whole_with_its_leader_ready() -> None:
    leader, worker = pairs()[0]
    assert group_status([serving(leader), loading(worker)])["readyReplicas"] == 1
    assert group_status([serving(leader)])["readyReplicas"] == 0  # incomplete
    assert group_status([loading(leader), serving(worker)])["readyReplicas"] == 0
    failed_worker = with_status(worker, "Failed", reason="Evicted")
    got = group_status([serving(leader), failed_worker])
    assert got["readyReplicas"] == 0 and got["phase"] == "Failed"
    assert conditions(got)["ModelLoaded"][1] == "Evicted"
    whole = group_status([serving(leader), loading(worker)])
    assert whole["phase"] == "Ready" and whole["replicas"] == 1


def test_old_single_pods_count_while_groups_roll_in() -> None:
    (old,) = single(1, model="m/old")
    leader, worker = pairs()[0]
    got = group_status([serving(old), loading(leader), loading(worker)])
    assert (got["replicas"], got["readyReplicas"], got["phase"]) == (2, 1, "Degraded")
    assert group_status([loading(old), loading(leader), loading(worker)])["readyReplicas"] == 0


def test_events_on_a_phase_change_and_once_per_new_problem() -> None:
    a, b = single(2)
    ready = status_of([serving(a), serving(b)], 2)
    broken = status_of([crashing(a), crashing(b)], 2)
    first = status_events(None, ready)
    assert [(e.type, e.reason) for e in first] == [("Normal", "PhaseReady")]
    assert first[0].message == "phase None -> Ready: 2/2 replicas serving"
    events = status_events(ready, broken)
    assert [(e.type, e.reason) for e in events] == [
        ("Warning", "PhaseFailed"),
        ("Warning", "CrashLoopBackOff"),
    ]
    assert events[1].message.startswith("ModelLoaded: ")
    assert status_events(broken, broken) == []
    degraded = status_events(ready, status_of([serving(a), loading(b)], 2))
    assert [(e.type, e.reason) for e in degraded] == [("Warning", "PhaseDegraded")]  # Loading is quiet


@pytest.mark.parametrize(
    "reason",
    ["PodsPending", "Scheduling", "Loading", "ScaledToZero", "ContainerCreating", "NotReady", "StartingSSH"],
)
def test_progress_reasons_post_no_warning(reason: str) -> None:
    new = {
        "phase": "X",
        "conditions": [{"type": "Ready", "status": "False", "reason": reason, "message": "m"}],
    }
    assert [e.reason for e in status_events({"phase": "X"}, new)] == []
    loud = {
        "phase": "X",
        "conditions": [{"type": "Ready", "status": "False", "reason": "Other", "message": "m"}],
    }
    assert [e.reason for e in status_events({"phase": "X"}, loud)] == ["Other"]


def test_scaled_to_zero_conditions_read_exactly() -> None:
    got = status_of([], 0)
    assert [c["type"] for c in got["conditions"]] == ["Scheduled", "ModelLoaded", "Ready"]
    assert conditions(got) == {
        "Scheduled": ("True", "ScaledToZero", "no replicas requested"),
        "ModelLoaded": ("False", "ScaledToZero", "no replicas requested"),
        "Ready": ("False", "ScaledToZero", "no replicas requested"),
    }


def test_the_schedulers_own_reason_and_a_kubelet_message_without_a_reason() -> None:
    gated = with_status(
        P, "Pending", node=None, conditions=[cond("PodScheduled", False, reason="SchedulingGated")]
    )
    assert diagnose(gated).reason == "SchedulingGated"
    quiet = with_status(
        P,
        "Pending",
        containerStatuses=[box("a", state={"waiting": {}}), box(state={"waiting": {"message": "m"}})],
    )
    assert diagnose(quiet) == Diagnosis(
        N, True, False, False, "ContainerCreating", f"{N}: starting the container (Pending): m"
    )


def test_groups_missing_stray_and_of_another_size() -> None:
    leader, worker = pairs(2)[0]
    got = group_status([serving(leader), loading(worker)], replicas=2)
    assert conditions(got)["Scheduled"] == ("False", "PodsPending", "1 of 2 pod(s) not created yet")
    strays = []
    for n in ("s1", "s2"):
        stray = loading(single(1)[0])
        stray["metadata"]["name"] = n
        del stray["metadata"]["labels"]["inference.bloomz.dev/replica-index"]
        strays.append(stray)
    assert group_status([serving(leader), loading(worker), *strays])["replicas"] == 3
    spec = {"model": "m/b", "cards": 24, "cardsPerNode": 8, "replicas": 1}
    three = build_replicas(OWNER, parse_spec(spec), Settings())[0]
    assert group_status([serving(p) for p in three])["readyReplicas"] == 1  # an earlier shape still serves


def test_phase_events_name_both_phases() -> None:
    (a,) = single(1)
    before, after = status_of([serving(a)], 1), status_of([crashing(a)], 1)
    assert status_events(before, after)[0].message == "phase Ready -> Failed: 0/1 replicas serving"
    assert [e.message for e in status_events(None, {"phase": "X"})] == ["phase None -> X"]
    no_ready = {
        "phase": "X",
        "conditions": [{"type": "Scheduled", "status": "True", "reason": "r", "message": "m"}],
    }
    assert [e.message for e in status_events({"phase": "Y"}, no_ready)] == ["phase Y -> X"]
