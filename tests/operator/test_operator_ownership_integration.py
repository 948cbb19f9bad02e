"""The real operator (Kopf in a thread) against the sandbox API emulator, objects planted under its names.

A Service and an SSH Secret that someone else created before the resource existed: the operator must not
delete, replace or reuse them, must say so in Ready=False/ResourceExists and an Event, and must create no
pod that would sit behind the foreign Service or trust the foreign key.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import kubernetes
import pytest
from bloomz_operator.constants import GROUP, PLURAL, VERSION
from bloomz_sandbox.apiserver import SandboxAPIServer
from test_operator_integration import (
    CRD,
    NS,
    Cluster,
    running_operator,
    tiny_group_resource,
    tiny_resource,
    wait_for,
)

pytestmark = pytest.mark.slow
PLANTED_KEY = "c3NoLWVkMjU1MTkgQUFBQUMzTnphQzFsWkRJMU5URTVBQUFBSUZha2UgYXR0YWNrZXI="


@pytest.fixture(scope="module")
def cluster(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Cluster]:
    server = SandboxAPIServer(crd_paths=[CRD], record_requests=True)
    with server, pytest.MonkeyPatch.context() as mp:
        kubeconfig: Path = server.write_kubeconfig(tmp_path_factory.mktemp("kube") / "config")
        mp.setenv("KUBECONFIG", str(kubeconfig))
        client = server.api_client()
        yield Cluster(
            server=server,
            kubeconfig=kubeconfig,
            core=kubernetes.client.CoreV1Api(client),
            custom=kubernetes.client.CustomObjectsApi(client),
            runtime_port=1,  # no pod turns ready here: nothing is measured
        )


def resource_names(cluster: Cluster) -> set[str]:
    listed = cluster.custom.list_namespaced_custom_object(GROUP, VERSION, NS, PLURAL)
    return {item["metadata"]["name"] for item in listed["items"]}


def conflict_reported(cluster: Cluster, name: str, what: str) -> bool:
    ready = cluster.condition(name, "Ready")
    return bool(ready and ready["reason"] == "ResourceExists" and what in ready["message"])


def events_about(cluster: Cluster, name: str, reason: str) -> list[str]:
    return [
        e.message
        for e in cluster.core.list_namespaced_event(NS).items
        if e.reason == reason and e.involved_object.name == name
    ]


def test_planted_service_and_ssh_secret_are_left_alone(cluster: Cluster) -> None:
    single, multi = "taken", "taken-groups"
    service = {
        "metadata": {"name": single, "labels": {"team": "other"}},
        "spec": {"selector": {"app": "other"}, "ports": [{"port": 80}]},
    }
    cluster.core.create_namespaced_service(NS, service)
    secret = {"metadata": {"name": f"{multi}-ssh"}, "data": {"authorized_keys": PLANTED_KEY}}
    cluster.core.create_namespaced_secret(NS, secret)
    service_uid = cluster.core.read_namespaced_service(single, NS).metadata.uid
    secret_uid = cluster.core.read_namespaced_secret(f"{multi}-ssh", NS).metadata.uid

    with running_operator(cluster):
        cluster.custom.create_namespaced_custom_object(GROUP, VERSION, NS, PLURAL, tiny_resource(single, 1))
        cluster.custom.create_namespaced_custom_object(GROUP, VERSION, NS, PLURAL, tiny_group_resource(multi))
        wait_for("the Service conflict", lambda: conflict_reported(cluster, single, f"Service {single}"))
        wait_for("the Secret conflict", lambda: conflict_reported(cluster, multi, f"Secret {multi}-ssh"))
        wait_for("the events", lambda: events_about(cluster, single, "ResourceExists"))
        assert any(f"Secret {multi}-ssh" in m for m in events_about(cluster, multi, "ResourceExists"))
        assert cluster.resource(single)["status"]["phase"] == "Failed"
        # Nothing was created behind the foreign Service or with the foreign key.
        assert not cluster.pods(single) and not cluster.pods(multi)
        kept = cluster.core.read_namespaced_service(single, NS)
        assert (kept.metadata.uid, kept.spec.selector, kept.metadata.owner_references) == (
            service_uid,
            {"app": "other"},
            None,
        )
        kept_secret = cluster.core.read_namespaced_secret(f"{multi}-ssh", NS)
        assert (kept_secret.metadata.uid, kept_secret.data) == (secret_uid, {"authorized_keys": PLANTED_KEY})

        # Deleting the resources leaves the planted objects in place.
        for name in (single, multi):
            cluster.custom.delete_namespaced_custom_object(GROUP, VERSION, NS, PLURAL, name)
            wait_for("the resource gone", lambda n=name: n not in resource_names(cluster))
        assert cluster.core.read_namespaced_service(single, NS).metadata.uid == service_uid
        assert cluster.core.read_namespaced_secret(f"{multi}-ssh", NS).metadata.uid == secret_uid
