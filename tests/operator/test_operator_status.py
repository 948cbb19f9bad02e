"""Status: pods -> phase, conditions with the pods' own reasons and messages, counts, events."""

from __future__ import annotations

import copy
import logging
from typing import Any

import pytest
from bloomz_operator.builders import Owner
from bloomz_operator.groups import current_template_hash
from bloomz_operator.reconciler import reconcile
from bloomz_operator.settings import Settings
from bloomz_operator.spec import SpecError, parse_spec
from bloomz_operator.status import compute_status, diagnose, status_events
from cluster_fakes import build_pods

OWNER = Owner(name="b", namespace="ns", uid="u")
SPEC = parse_spec({"model": "bigscience/bloomz-7b1", "cards": 8, "replicas": 1})
HASH = current_template_hash(SPEC, Settings())
NOW = "2026-01-01T00:00:00Z"
UNSCHEDULABLE = "0/3 nodes are available: 3 Insufficient habana.ai/gaudi."


def pod(status: dict[str, Any], *, index: int = 0, node: str | None = "gaudi-0") -> dict[str, Any]:
    spec = parse_spec({"model": "bigscience/bloomz-7b1", "cards": 8, "replicas": index + 1})
    body = copy.deepcopy(build_pods(OWNER, spec, Settings())[index])
    if node:
        body["spec"]["nodeName"] = node
    body["status"] = status
    return body


def pending_unschedulable() -> dict[str, Any]:
    return pod(
        {
            "phase": "Pending",
            "conditions": [
                {
                    "type": "PodScheduled",
                    "status": "False",
                    "reason": "Unschedulable",
                    "message": UNSCHEDULABLE,
                }
            ],
        },
        node=None,
    )


def container(**fields: Any) -> dict[str, Any]:
    return {"name": "runtime", "ready": False, "started": False, "restartCount": 0, **fields}


def running(*, ready: bool, started: bool) -> dict[str, Any]:
    return pod(
        {
            "phase": "Running",
            "podIP": "10.0.0.5",
            "conditions": [
                {"type": "PodScheduled", "status": "True"},
                {"type": "Ready", "status": "True" if ready else "False"},
            ],
            "containerStatuses": [container(ready=ready, started=started, state={"running": {}})],
        }
    )


def waiting(reason: str, message: str = "", **extra: Any) -> dict[str, Any]:
    return pod(
        {
            "phase": "Pending" if "Image" in reason else "Running",
            "conditions": [{"type": "PodScheduled", "status": "True"}, {"type": "Ready", "status": "False"}],
            "containerStatuses": [
                container(state={"waiting": {"reason": reason, "message": message}}, **extra)
            ],
        }
    )


def status_of(*pods: dict[str, Any], replicas: int = 1, previous: Any = ()) -> dict[str, Any]:
    return compute_status(
        replicas=replicas,
        observed=list(pods),
        current_hash=HASH,
        endpoint="b.ns.svc:50051",
        generation=3,
        previous_conditions=previous,
        now=NOW,
    )


def conditions(status: dict[str, Any]) -> dict[str, dict[str, Any]]:
    return {c["type"]: c for c in status["conditions"]}


def test_no_pods_yet_is_pending() -> None:
    status = status_of()
    assert status["phase"] == "Pending"
    assert conditions(status)["Scheduled"]["reason"] == "PodsPending"
    assert (status["replicas"], status["readyReplicas"]) == (0, 0)
    assert status["endpoint"] == "b.ns.svc:50051" and status["observedGeneration"] == 3


def test_unschedulable_carries_the_schedulers_message() -> None:
    status = status_of(pending_unschedulable())
    assert status["phase"] == "Pending"
    scheduled = conditions(status)["Scheduled"]
    assert scheduled["status"] == "False" and scheduled["reason"] == "Unschedulable"
    assert UNSCHEDULABLE in scheduled["message"]
    assert conditions(status)["Ready"]["status"] == "False"


def test_image_pull_backoff_is_failed() -> None:
    status = status_of(waiting("ImagePullBackOff", 'Back-off pulling image "vault/x:1"'))
    assert status["phase"] == "Failed"
    loaded = conditions(status)["ModelLoaded"]
    assert loaded["reason"] == "ImagePullBackOff" and "Back-off pulling image" in loaded["message"]
    assert conditions(status)["Scheduled"]["status"] == "True"


def test_crash_loop_reports_the_last_exit_code() -> None:
    crashing = waiting(
        "CrashLoopBackOff",
        "back-off 5m0s restarting failed container",
        restartCount=4,
        lastState={"terminated": {"exitCode": 137, "reason": "OOMKilled"}},
    )
    status = status_of(crashing)
    assert status["phase"] == "Failed"
    loaded = conditions(status)["ModelLoaded"]
    assert loaded["reason"] == "CrashLoopBackOff"
    assert (
        "exit code 137" in loaded["message"]
        and "OOMKilled" in loaded["message"]
        and "4 restarts" in loaded["message"]
    )
    assert conditions(status)["Ready"]["reason"] == "CrashLoopBackOff"


def test_a_container_being_created_carries_the_kubelets_words() -> None:
    message = 'pulling image "vault.habana.ai/gaudi-docker/1.24.0/ubuntu24.04/habanalabs/pytorch-installer"'
    creating = container(state={"waiting": {"reason": "ContainerCreating", "message": message}})
    status = status_of(pod({"phase": "Pending", "containerStatuses": [creating]}))
    assert status["phase"] != "Failed"
    loaded = conditions(status)["ModelLoaded"]
    assert (loaded["status"], loaded["reason"]) == ("False", "ContainerCreating")
    assert message in loaded["message"]
    plain = diagnose(pod({"phase": "Pending", "containerStatuses": [container()]}))
    assert (plain.reason, plain.failed) == ("ContainerCreating", False)
    assert plain.message.endswith("starting the container (Pending)")


def test_running_not_ready_is_loading() -> None:
    status = status_of(running(ready=False, started=False))
    assert status["phase"] == "Loading"
    loaded = conditions(status)["ModelLoaded"]
    assert (loaded["status"], loaded["reason"]) == ("False", "Loading")
    assert conditions(status)["Scheduled"]["status"] == "True"


def test_started_but_not_ready() -> None:
    status = status_of(running(ready=False, started=True))
    assert conditions(status)["ModelLoaded"]["status"] == "True"
    assert conditions(status)["Ready"]["reason"] == "NotReady"


def test_ready() -> None:
    status = status_of(running(ready=True, started=True))
    assert status["phase"] == "Ready"
    assert all(c["status"] == "True" for c in status["conditions"])
    assert (status["replicas"], status["readyReplicas"]) == (1, 1)
    assert all(c["lastTransitionTime"] == NOW for c in status["conditions"])


def test_one_of_two_ready_is_degraded_and_names_the_problem() -> None:
    crashing = waiting("CrashLoopBackOff", lastState={"terminated": {"exitCode": 1}})
    crashing["metadata"] = copy.deepcopy(pod({}, index=1)["metadata"])
    status = status_of(running(ready=True, started=True), crashing, replicas=2)
    assert status["phase"] == "Degraded"
    assert status["readyReplicas"] == 1
    assert conditions(status)["Ready"]["message"] == "1/2 replicas serving"
    assert conditions(status)["Ready"]["reason"] == "CrashLoopBackOff"


def test_evicted_pod_is_failed() -> None:
    evicted = pod(
        {"phase": "Failed", "reason": "Evicted", "message": "The node was low on resource: memory."}
    )
    status = status_of(evicted)
    assert status["phase"] == "Failed"
    assert "low on resource" in conditions(status)["ModelLoaded"]["message"]
    assert diagnose(evicted).failed


def test_scaled_to_zero_is_stopped() -> None:
    status = status_of(replicas=0)
    assert status["phase"] == "Stopped" and status["replicas"] == 0


def test_old_template_pods_serve_but_do_not_satisfy_the_new_spec() -> None:
    old = running(ready=True, started=True)
    old["metadata"]["labels"]["inference.bloomz.dev/template-hash"] = "old"
    status = status_of(old)
    assert status["readyReplicas"] == 1
    assert status["phase"] == "Degraded"  # serving, but not yet what the spec asks for
    assert conditions(status)["Ready"]["status"] == "False"


def test_transition_time_kept_while_a_condition_holds() -> None:
    first = status_of(running(ready=True, started=True))
    earlier = [{**c, "lastTransitionTime": "2025-12-31T00:00:00Z"} for c in first["conditions"]]
    again = status_of(running(ready=True, started=True), previous=earlier)
    assert all(c["lastTransitionTime"] == "2025-12-31T00:00:00Z" for c in again["conditions"])
    changed = status_of(running(ready=False, started=True), previous=earlier)
    assert conditions(changed)["Ready"]["lastTransitionTime"] == NOW
    assert conditions(changed)["Scheduled"]["lastTransitionTime"] == "2025-12-31T00:00:00Z"


def test_events_on_phase_changes_and_new_failures() -> None:
    pending = status_of(pending_unschedulable())
    events = status_events(None, pending)
    assert [(e.type, e.reason) for e in events] == [("Normal", "PhasePending"), ("Warning", "Unschedulable")]
    assert UNSCHEDULABLE in events[1].message
    assert status_events(pending, status_of(pending_unschedulable())) == []  # nothing new, no event
    ready = status_of(running(ready=True, started=True))
    assert [(e.type, e.reason) for e in status_events(pending, ready)] == [("Normal", "PhaseReady")]
    failed = status_of(waiting("ImagePullBackOff", "nope"))
    kinds = [(e.type, e.reason) for e in status_events(ready, failed)]
    assert ("Warning", "PhaseFailed") in kinds and ("Warning", "ImagePullBackOff") in kinds


def test_a_spec_the_schema_should_have_refused_fails_with_the_reason() -> None:

    from bloomz_operator.spec import parse_spec

    for bad, words in (
        ({"model": "m", "device": "tpu"}, "spec.device"),
        ({"model": "m", "cards": 0}, "spec.cards"),
        ({"model": "m", "replicas": -1}, "spec.replicas"),
        ({"device": "hpu"}, "spec.model"),
        ({"model": "m", "cards": "eight"}, "invalid spec"),
    ):
        with pytest.raises(SpecError, match=words):
            parse_spec(bad)

    class NoAPI:
        def __getattr__(self, name: str) -> None:
            raise AssertionError(f"no API call expected for an invalid spec, got {name}")

    outcome = reconcile(
        NoAPI(),  # type: ignore[arg-type]
        Settings(),
        owner=OWNER,
        spec={"model": "m", "device": "tpu"},
        generation=2,
        old_status=None,
        logger=logging.getLogger("test"),
    )
    assert outcome.status["phase"] == "Failed" and outcome.actions == []
    assert {c["reason"] for c in outcome.status["conditions"]} == {"InvalidSpec"}
    assert "spec.device" in outcome.status["conditions"][0]["message"]
    assert [(e.type, e.reason) for e in outcome.events] == [
        ("Warning", "PhaseFailed"),
        ("Warning", "InvalidSpec"),
    ]
