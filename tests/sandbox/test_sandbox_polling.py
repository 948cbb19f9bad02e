"""The Job and Deployment controllers' shared part: which pods are orphans of which kind, and one
polling round (orphans deleted, then the kind's own reconcile on what was listed)."""

from __future__ import annotations

import json
from types import SimpleNamespace
from typing import Any

import pytest
from bloomz_sandbox.controllers.deployments import DeploymentController, pod_from_template
from bloomz_sandbox.controllers.jobs import JobController, pod_from_job
from bloomz_sandbox.controllers.polling import MADE_BY_LABEL, orphans
from kubernetes import client

TEMPLATE = {"metadata": {"labels": {"app": "x"}}, "spec": {"containers": [{"name": "c", "image": "i"}]}}
JOB = {"metadata": {"name": "j", "namespace": "ns", "uid": "j-1"}, "spec": {"template": TEMPLATE}}
DEPLOYMENT = {"metadata": {"name": "d", "namespace": "ns", "uid": "d-1"}, "spec": {"template": TEMPLATE}}


def _named(pod: dict[str, Any], name: str) -> dict[str, Any]:
    pod["metadata"]["name"] = name
    return pod


def test_each_kind_has_only_its_own_orphans() -> None:
    of_job = _named(pod_from_job(JOB), "j-a")
    of_deployment = _named(pod_from_template(DEPLOYMENT, "h1"), "d-a")
    pods = [of_job, of_deployment]
    assert orphans("Job", [], pods) == [of_job]
    assert orphans("Deployment", [], pods) == [of_deployment]
    assert orphans("Job", ["j-1"], pods) == [] and orphans("Deployment", ["d-1"], pods) == []
    # The uid of an owner of another kind does not keep a pod alive, nor make it an orphan of that kind.
    assert orphans("Job", ["d-1"], pods) == [of_job]
    assert orphans("Deployment", ["j-1"], pods) == [of_deployment]


def test_a_pod_needs_both_the_label_and_an_owner_reference_of_the_kind() -> None:
    # Carrying the Job label but owned by a Deployment: a Deployment's pod, not the Job controller's.
    mixed = _named(pod_from_template(DEPLOYMENT, "h1"), "mixed")
    mixed["metadata"]["labels"][MADE_BY_LABEL["Job"]] = "j-1"
    assert orphans("Job", [], [mixed]) == []
    assert orphans("Deployment", [], [mixed]) == [mixed]
    # One of several owner references naming a gone owner of the kind is enough, as for the real collector.
    shared = _named(pod_from_job(JOB), "shared")
    shared["metadata"]["ownerReferences"].append({"kind": "Job", "uid": "j-2", "name": "other"})
    assert orphans("Job", ["j-1"], [shared]) == [shared]
    assert orphans("Job", ["j-1", "j-2"], [shared]) == []
    no_metadata: dict[str, Any] = {"kind": "Pod"}
    assert orphans("Job", [], [no_metadata]) == [] and orphans("Deployment", [], [no_metadata]) == []
    with pytest.raises(KeyError):
        orphans("StatefulSet", [], [shared])


class FakeApi:
    """Records the calls a polling round makes; lists return what it holds."""

    def __init__(self, owners: list[dict[str, Any]], pods: list[dict[str, Any]]) -> None:
        self.owners, self.pods = owners, pods
        self.deleted: list[tuple[str, str]] = []
        self.created: list[dict[str, Any]] = []

    def listing(self, items: list[dict[str, Any]]) -> Any:
        return lambda **_: SimpleNamespace(data=json.dumps({"items": items}).encode())

    def ignore(self, *_: Any, **__: Any) -> None:
        return None

    def delete_namespaced_pod(self, name: str, namespace: str, **_: Any) -> None:
        self.deleted.append((namespace, name))

    def create_namespaced_pod(self, namespace: str, pod: dict[str, Any], **_: Any) -> None:
        self.created.append(pod)


@pytest.mark.parametrize("kind", ["Job", "Deployment"])
def test_a_round_deletes_the_orphans_then_reconciles_the_live_owners(kind: str) -> None:
    owner = JOB if kind == "Job" else DEPLOYMENT
    gone_owner = {**owner, "metadata": {**owner["metadata"], "uid": "gone"}}
    orphan = pod_from_job(gone_owner) if kind == "Job" else pod_from_template(gone_owner, "h")
    api = FakeApi([owner], [_named(orphan, "o")])
    controller: Any = (JobController if kind == "Job" else DeploymentController)(client.ApiClient())
    controller.core = SimpleNamespace(
        list_pod_for_all_namespaces=api.listing(api.pods),
        delete_namespaced_pod=api.delete_namespaced_pod,
        create_namespaced_pod=api.create_namespaced_pod,
    )
    patch = api.ignore  # status patches are not what this test is about
    controller.batch = SimpleNamespace(
        list_job_for_all_namespaces=api.listing(api.owners), patch_namespaced_job_status=patch
    )
    controller.apps = SimpleNamespace(
        list_deployment_for_all_namespaces=api.listing(api.owners), patch_namespaced_deployment_status=patch
    )
    controller.reconcile_once(0.0)
    assert api.deleted == [("ns", "o")]
    # The live owner had no pod: its controller's own reconcile made one, owned by it.
    assert [p["metadata"]["ownerReferences"][0]["uid"] for p in api.created] == [owner["metadata"]["uid"]]
