"""The sandbox's Job controller (pure plan) and the kubelet's termination message from the log."""

from __future__ import annotations

from typing import Any

from bloomz_sandbox.controllers.jobs import CONTROLLER_UID_LABEL, plan_job, pod_from_job
from bloomz_sandbox.controllers.polling import orphans
from bloomz_sandbox.node.pod_status import Termination, fallback_message

JOB: dict[str, Any] = {
    "metadata": {"name": "dl", "namespace": "ns", "uid": "u1"},
    "spec": {
        "backoffLimit": 1,
        "podFailurePolicy": {
            "rules": [
                {"action": "FailJob", "onExitCodes": {"containerName": "c", "operator": "In", "values": [2]}}
            ]
        },
        "template": {
            "metadata": {"labels": {"a": "b"}},
            "spec": {"restartPolicy": "Never", "containers": []},
        },
    },
}


def pod(phase: str, code: int | None = None) -> dict[str, Any]:
    status: dict[str, Any] = {"phase": phase}
    if code is not None:
        status["containerStatuses"] = [{"name": "c", "state": {"terminated": {"exitCode": code}}}]
    return {"metadata": {"name": f"dl-{phase}-{code}"}, "status": status}


def reasons(status: dict[str, Any]) -> list[tuple[str, str]]:
    return [(c["type"], c["reason"]) for c in status.get("conditions") or ()]


def test_a_job_gets_one_pod_labelled_and_owned() -> None:
    first = plan_job(JOB, [], 0.0)
    assert len(first.create) == 1 and first.status["active"] == 1
    created = first.create[0]
    assert created["metadata"]["labels"]["batch.kubernetes.io/job-name"] == "dl"
    assert created["metadata"]["labels"]["a"] == "b"
    assert created["metadata"]["ownerReferences"][0]["uid"] == "u1"
    assert created == pod_from_job(JOB)
    assert plan_job(JOB, [pod("Running")], 0.0).create == []


def test_success_completes_the_job() -> None:
    steps = plan_job(JOB, [pod("Succeeded", 0)], 0.0)
    assert steps.create == [] and steps.status["succeeded"] == 1
    assert ("Complete", "CompletionsReached") in reasons(steps.status)


def test_a_permanent_exit_code_fails_at_once_other_failures_are_retried_up_to_the_limit() -> None:
    permanent = plan_job(JOB, [pod("Failed", 2)], 0.0)
    assert permanent.create == [] and reasons(permanent.status) == [("Failed", "PodFailurePolicy")]
    retried = plan_job(JOB, [pod("Failed", 1)], 0.0)
    assert len(retried.create) == 1 and reasons(retried.status) == []
    exhausted = plan_job(JOB, [pod("Failed", 1), pod("Failed", 1)], 0.0)
    assert exhausted.create == [] and reasons(exhausted.status) == [("Failed", "BackoffLimitExceeded")]
    # A finished Job stays as it is (no new pod after its pods are gone).
    finished = {**JOB, "status": exhausted.status}
    assert plan_job(finished, [], 1.0).create == []


def test_fallback_to_logs_on_error_keeps_the_last_lines_of_a_failed_container() -> None:
    spec = {"name": "c", "terminationMessagePolicy": "FallbackToLogsOnError"}
    log = b"".join(f"line {i}\n".encode() for i in range(200))
    message = fallback_message(spec, 2, log)
    assert message.splitlines()[-1] == "line 199" and len(message.splitlines()) == 80
    assert fallback_message(spec, 0, log) == ""
    assert fallback_message({"name": "c"}, 2, log) == ""
    assert Termination(2, 0.0, 1.0, message="why").as_status()["message"] == "why"


def test_pods_of_a_deleted_job_are_orphans_and_no_other_pod_is() -> None:
    """A pod created from a list taken just before its Job went: deleted like the garbage collector
    deletes a dependent whose owner is gone; pods this controller did not make are never touched."""
    mine = pod_from_job(JOB)
    unlabelled = pod_from_job(JOB)
    del unlabelled["metadata"]["labels"][CONTROLLER_UID_LABEL]
    of_a_deployment = pod_from_job(JOB)
    of_a_deployment["metadata"]["ownerReferences"][0]["kind"] = "Deployment"
    bare = pod_from_job(JOB)
    del bare["metadata"]["ownerReferences"]
    pods = [mine, unlabelled, of_a_deployment, bare]
    assert orphans("Job", ["u1"], pods) == []
    assert orphans("Job", ["u2"], pods) == [mine]
    assert orphans("Job", [], pods) == [mine]
