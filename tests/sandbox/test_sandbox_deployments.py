"""The sandbox's Deployment controller, pure planning: replicas, template changes, strategies, status."""

from __future__ import annotations

import copy
from typing import Any

from bloomz_sandbox.controllers.deployments import HASH_LABEL, plan, pod_from_template, template_hash
from bloomz_sandbox.controllers.polling import orphans

TEMPLATE = {
    "metadata": {"labels": {"app": "op"}},
    "spec": {"containers": [{"name": "c", "image": "operator"}]},
}


def _deployment(
    replicas: int = 1, strategy: str = "Recreate", template: dict | None = None
) -> dict[str, Any]:
    return {
        "metadata": {"name": "op", "namespace": "ns", "uid": "d-1", "generation": 3},
        "spec": {"replicas": replicas, "strategy": {"type": strategy}, "template": template or TEMPLATE},
    }


def _pod(name: str, deployment: dict, *, ready: bool = True, phase: str = "Running", **meta: Any) -> dict:
    pod = pod_from_template(deployment, template_hash(deployment["spec"]["template"]))
    pod["metadata"].update(name=name, creationTimestamp=f"2026-01-01T00:00:0{name[-1]}Z", **meta)
    pod["status"] = {
        "phase": phase,
        "conditions": [{"type": "Ready", "status": "True" if ready else "False"}],
    }
    return pod


def test_a_new_deployment_creates_its_pods_from_the_template() -> None:
    deployment = _deployment(replicas=2)
    steps = plan(deployment, [])
    assert len(steps.create) == 2 and not steps.delete
    pod = steps.create[0]
    assert pod["metadata"]["generateName"].startswith("op-")
    assert pod["metadata"]["labels"] == {"app": "op", HASH_LABEL: template_hash(TEMPLATE)}
    owner = pod["metadata"]["ownerReferences"][0]
    assert (owner["kind"], owner["uid"], owner["controller"]) == ("Deployment", "d-1", True)
    assert pod["spec"] == TEMPLATE["spec"] and pod["spec"] is not TEMPLATE["spec"]
    assert steps.status["observedGeneration"] == 3 and steps.status["readyReplicas"] == 0
    assert steps.status["conditions"][0]["status"] == "False"


def test_steady_state_does_nothing_and_reports_available() -> None:
    deployment = _deployment()
    steps = plan(deployment, [_pod("op-1", deployment)])
    assert not steps.create and not steps.delete
    assert steps.status["availableReplicas"] == 1 and steps.status["conditions"][0]["status"] == "True"
    assert steps.status["conditions"][1]["reason"] == "NewReplicaSetAvailable"


def test_scaling_up_and_down() -> None:
    deployment = _deployment(replicas=3)
    pods = [_pod("op-1", deployment), _pod("op-2", deployment)]
    assert len(plan(deployment, pods).create) == 1
    deployment["spec"]["replicas"] = 1
    assert plan(deployment, pods).delete == ["op-2"]  # the newest goes


def test_failed_pods_are_replaced_and_foreign_pods_ignored() -> None:
    deployment = _deployment()
    failed = _pod("op-1", deployment, phase="Failed", ready=False)
    foreign = _pod("other-1", deployment)
    foreign["metadata"]["ownerReferences"][0]["uid"] = "someone-else"
    steps = plan(deployment, [failed, foreign])
    assert steps.delete == ["op-1"] and len(steps.create) == 1


def test_recreate_deletes_the_old_pods_before_creating_new_ones() -> None:
    before = _deployment()
    old = _pod("op-1", before)
    after = _deployment(
        template=copy.deepcopy(TEMPLATE) | {"metadata": {"labels": {"app": "op"}, "annotations": {"a": "2"}}}
    )
    steps = plan(after, [old])
    assert steps.delete == ["op-1"] and not steps.create
    old["metadata"]["deletionTimestamp"] = "2026-01-01T00:00:09Z"  # still terminating: wait
    assert not plan(after, [old]).create
    created = plan(after, []).create
    assert len(created) == 1 and created[0]["metadata"]["annotations"] == {"a": "2"}
    assert created[0]["metadata"]["labels"][HASH_LABEL] != old["metadata"]["labels"][HASH_LABEL]


def test_rolling_update_keeps_the_old_pod_until_the_new_one_is_ready() -> None:
    before = _deployment(strategy="RollingUpdate")
    old = _pod("op-1", before)
    after = _deployment(strategy="RollingUpdate", template={**TEMPLATE, "spec": {"containers": []}})
    steps = plan(after, [old])
    assert len(steps.create) == 1 and not steps.delete
    new = _pod("op-2", after, ready=False)
    assert not plan(after, [old, new]).delete
    assert plan(after, [old, _pod("op-2", after)]).delete == ["op-1"]


def test_pods_of_a_deleted_deployment_are_orphans_and_no_other_pod_is() -> None:
    """A pod created from a list taken just before its Deployment went: deleted like the garbage
    collector deletes a dependent whose owner is gone; pods it did not make are never touched."""
    deployment = _deployment()
    mine = _pod("op-1", deployment)
    unlabelled = _pod("op-2", deployment)
    del unlabelled["metadata"]["labels"][HASH_LABEL]
    owned_by_a_job = _pod("job-1", deployment)
    owned_by_a_job["metadata"]["ownerReferences"][0]["kind"] = "Job"
    bare = _pod("bare-1", deployment)
    del bare["metadata"]["ownerReferences"]
    pods = [mine, unlabelled, owned_by_a_job, bare]
    assert orphans("Deployment", ["d-1"], pods) == []
    assert orphans("Deployment", ["d-2"], pods) == [mine]
    assert orphans("Deployment", [], pods) == [mine]
