"""The sandbox Kubernetes API emulator against real clients: kubernetes library, raw HTTP, kubectl, Kopf."""

from __future__ import annotations

import http.client
import json
import os
import signal
import socket
import subprocess
import sys
import threading
import time
import urllib.error
import urllib.request
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import kubernetes.client as k8s
import pytest
import yaml
from bloomz_sandbox.apiserver import SandboxAPIServer
from helpers import wait_for
from kubernetes.client.exceptions import ApiException

REPO = Path(__file__).resolve().parents[2]
KUBECTL = REPO / ".tools" / "bin" / "kubectl"
GROUP, VERSION, PLURAL = "test.bloomz.dev", "v1alpha1", "gadgets"

# A CRD shaped like BloomzInference (status subresource, printer columns), independent of crds/.
GADGET_CRD: dict[str, Any] = {
    "apiVersion": "apiextensions.k8s.io/v1",
    "kind": "CustomResourceDefinition",
    "metadata": {"name": f"{PLURAL}.{GROUP}"},
    "spec": {
        "group": GROUP,
        "scope": "Namespaced",
        "names": {
            "kind": "Gadget",
            "plural": PLURAL,
            "singular": "gadget",
            "shortNames": ["gd"],
            "categories": ["all", "bloomz"],
        },
        "versions": [
            {
                "name": VERSION,
                "served": True,
                "storage": True,
                "subresources": {"status": {}},
                "schema": {
                    "openAPIV3Schema": {
                        "type": "object",
                        "properties": {
                            "spec": {
                                "type": "object",
                                "x-kubernetes-preserve-unknown-fields": True,
                                "properties": {
                                    "device": {
                                        "type": "string",
                                        "description": "the device kind: hpu, cuda or cpu",
                                    }
                                },
                            },
                            "status": {"type": "object", "x-kubernetes-preserve-unknown-fields": True},
                        },
                    }
                },
                "additionalPrinterColumns": [
                    {"name": "Device", "type": "string", "jsonPath": ".spec.device"},
                    {"name": "Cards", "type": "integer", "jsonPath": ".spec.cards"},
                    {"name": "Ready", "type": "integer", "jsonPath": ".status.readyReplicas"},
                    {"name": "Latency", "type": "number", "jsonPath": ".status.latency.seconds"},
                    {"name": "Model", "type": "string", "jsonPath": ".spec.model", "priority": 1},
                    {"name": "Age", "type": "date", "jsonPath": ".metadata.creationTimestamp"},
                ],
            }
        ],
    },
}


@pytest.fixture(scope="module")
def api(tmp_path_factory: pytest.TempPathFactory) -> Iterator[SandboxAPIServer]:
    crd_file = tmp_path_factory.mktemp("crds") / "gadgets.yaml"
    crd_file.write_text(yaml.safe_dump(GADGET_CRD))
    server = SandboxAPIServer(crd_paths=[crd_file], namespaces=("default", "other"), bookmark_interval_s=0.5)
    with server:
        yield server


@pytest.fixture(scope="module")
def core(api: SandboxAPIServer) -> k8s.CoreV1Api:
    return k8s.CoreV1Api(api.api_client())


@pytest.fixture(scope="module")
def custom(api: SandboxAPIServer) -> k8s.CustomObjectsApi:
    return k8s.CustomObjectsApi(api.api_client())


@pytest.fixture
def ns(core: k8s.CoreV1Api, request: pytest.FixtureRequest) -> Iterator[str]:
    """A fresh namespace per test, deleted (with its content) afterwards."""
    name = "t-" + request.node.name.replace("_", "-").lower()[:50].strip("-")
    core.create_namespace({"metadata": {"name": name}})
    yield name
    try:
        core.delete_namespace(name)
    except ApiException as error:
        if error.status != 404:
            raise


def call(
    api: SandboxAPIServer, method: str, path: str, body: Any = None, content_type: str = "application/json"
) -> tuple[int, dict[str, str], Any]:
    data = None if body is None else (body if isinstance(body, bytes) else json.dumps(body).encode())
    request = urllib.request.Request(api.url + path, data=data, method=method)
    if data is not None:
        request.add_header("Content-Type", content_type)
    try:
        with urllib.request.urlopen(request, timeout=30) as response:
            return response.status, dict(response.headers), json.loads(response.read() or b"null")
    except urllib.error.HTTPError as error:
        return error.code, dict(error.headers), json.loads(error.read() or b"null")


def gadget(name: str, **spec: Any) -> dict[str, Any]:
    return {"apiVersion": f"{GROUP}/{VERSION}", "kind": "Gadget", "metadata": {"name": name}, "spec": spec}


def pod(
    name: str, labels: dict[str, str] | None = None, owner: dict[str, Any] | None = None
) -> dict[str, Any]:
    meta: dict[str, Any] = {"name": name, "labels": labels or {}}
    if owner is not None:
        meta["ownerReferences"] = [
            {
                "apiVersion": owner["apiVersion"],
                "kind": owner["kind"],
                "name": owner["metadata"]["name"],
                "uid": owner["metadata"]["uid"],
                "controller": True,
                "blockOwnerDeletion": True,
            }
        ]
    return {"metadata": meta, "spec": {"containers": [{"name": "runtime", "image": "img:1"}]}}


def create_gadget(custom: k8s.CustomObjectsApi, ns: str, name: str, **spec: Any) -> dict[str, Any]:
    result: dict[str, Any] = custom.create_namespaced_custom_object(
        GROUP, VERSION, ns, PLURAL, gadget(name, **spec)
    )
    return result


def get_gadget(custom: k8s.CustomObjectsApi, ns: str, name: str) -> dict[str, Any]:
    result: dict[str, Any] = custom.get_namespaced_custom_object(GROUP, VERSION, ns, PLURAL, name)
    return result


class WatchStream:
    """A raw watch request read line by line in a thread (so a missing event fails instead of hanging)."""

    def __init__(self, api: SandboxAPIServer, path: str, headers: dict[str, str] | None = None) -> None:
        self.connection = http.client.HTTPConnection(api.host, api.port, timeout=60)
        self.connection.request("GET", path, headers=headers or {})
        self.response = self.connection.getresponse()
        self.events: list[dict[str, Any]] = []
        self.ended = threading.Event()
        self._thread = threading.Thread(target=self._read, daemon=True)
        self._thread.start()

    def _read(self) -> None:
        try:
            for line in self.response:
                if line.strip():
                    self.events.append(json.loads(line))
        except (OSError, ValueError, AttributeError):  # closed by close() from the test's thread
            pass
        finally:
            self.ended.set()

    def wait_for(self, predicate: Any, timeout: float = 30) -> list[dict[str, Any]]:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if predicate(self.events):
                return self.events
            time.sleep(0.02)
        raise AssertionError(f"watch events never satisfied the condition: {self.events}")

    def close(self) -> None:
        sock = self.connection.sock
        if sock is not None:  # unblocks the reading thread at once
            sock.shutdown(socket.SHUT_RDWR)
        self.ended.wait(30)
        self.connection.close()


def summary(events: list[dict[str, Any]]) -> list[tuple[str, str]]:
    return [(e["type"], e["object"]["metadata"].get("name", "")) for e in events if e["type"] != "BOOKMARK"]


# ----- discovery
def test_discovery_lists_core_builtin_and_crd_resources(api: SandboxAPIServer) -> None:
    status, _, versions = call(api, "GET", "/api")
    assert status == 200 and versions["kind"] == "APIVersions" and versions["versions"] == ["v1"]
    _, _, core_list = call(api, "GET", "/api/v1")
    assert core_list["groupVersion"] == "v1"
    core_names = {r["name"] for r in core_list["resources"]}
    assert {"pods", "pods/status", "services", "events", "namespaces", "nodes"} <= core_names

    _, _, groups = call(api, "GET", "/apis")
    by_name = {g["name"]: g for g in groups["groups"]}
    assert by_name[GROUP]["preferredVersion"]["groupVersion"] == f"{GROUP}/{VERSION}"
    assert {"events.k8s.io", "apiextensions.k8s.io"} <= set(by_name)
    _, _, group = call(api, "GET", f"/apis/{GROUP}")
    assert group["kind"] == "APIGroup" and group["versions"][0]["version"] == VERSION

    _, _, resources = call(api, "GET", f"/apis/{GROUP}/{VERSION}")
    entries = {r["name"]: r for r in resources["resources"]}
    assert entries[PLURAL]["kind"] == "Gadget" and entries[PLURAL]["namespaced"] is True
    assert entries[PLURAL]["shortNames"] == ["gd"] and entries[PLURAL]["categories"] == ["all", "bloomz"]
    assert {"create", "get", "list", "watch", "patch", "update", "delete"} <= set(entries[PLURAL]["verbs"])
    assert f"{PLURAL}/status" in entries

    assert call(api, "GET", "/version")[2]["major"] == "1"
    assert call(api, "GET", "/openapi/v2")[0] == 404
    _, _, openapi_index = call(api, "GET", "/openapi/v3")
    assert {"api/v1", f"apis/{GROUP}/{VERSION}"} <= set(openapi_index["paths"])
    _, _, gadget_doc = call(
        api, "GET", openapi_index["paths"][f"apis/{GROUP}/{VERSION}"]["serverRelativeURL"]
    )
    patch = gadget_doc["paths"][f"/apis/{GROUP}/{VERSION}/namespaces/{{namespace}}/{PLURAL}/{{name}}"][
        "patch"
    ]
    assert "fieldValidation" in [p["name"] for p in patch["parameters"]]
    assert call(api, "GET", "/apis/nothing.example.com/v1")[0] == 404


def test_posted_crd_registers_and_deleted_crd_unregisters(api: SandboxAPIServer, ns: str) -> None:
    crd = json.loads(json.dumps(GADGET_CRD).replace(PLURAL, "doodads").replace("Gadget", "Doodad"))
    crd["spec"]["names"]["shortNames"] = ["dd"]
    assert call(api, "POST", "/apis/apiextensions.k8s.io/v1/customresourcedefinitions", crd)[0] == 201
    _, _, resources = call(api, "GET", f"/apis/{GROUP}/{VERSION}")
    assert "doodads" in {r["name"] for r in resources["resources"]}
    path = f"/apis/{GROUP}/{VERSION}/namespaces/{ns}/doodads"
    doodad = {"apiVersion": f"{GROUP}/{VERSION}", "kind": "Doodad", "metadata": {"name": "d1"}, "spec": {}}
    assert call(api, "POST", path, doodad)[0] == 201
    status, _, fetched_crd = call(
        api, "GET", f"/apis/apiextensions.k8s.io/v1/customresourcedefinitions/doodads.{GROUP}"
    )
    assert status == 200
    assert {c["type"] for c in fetched_crd["status"]["conditions"]} == {"Established", "NamesAccepted"}

    assert (
        call(api, "DELETE", f"/apis/apiextensions.k8s.io/v1/customresourcedefinitions/doodads.{GROUP}")[0]
        == 200
    )
    assert call(api, "GET", path)[0] == 404
    _, _, resources = call(api, "GET", f"/apis/{GROUP}/{VERSION}")
    assert "doodads" not in {r["name"] for r in resources["resources"]}


# ----- CRUD and metadata
def test_create_sets_server_metadata_and_lists_carry_kind(
    custom: k8s.CustomObjectsApi, core: k8s.CoreV1Api, ns: str
) -> None:
    first = create_gadget(custom, ns, "g1", device="cpu")
    meta = first["metadata"]
    assert meta["namespace"] == ns and meta["generation"] == 1
    assert meta["uid"] and meta["creationTimestamp"].endswith("Z")
    second = create_gadget(custom, ns, "g2")
    assert int(second["metadata"]["resourceVersion"]) > int(meta["resourceVersion"])

    listed = custom.list_namespaced_custom_object(GROUP, VERSION, ns, PLURAL)
    assert listed["kind"] == "GadgetList" and listed["apiVersion"] == f"{GROUP}/{VERSION}"
    assert int(listed["metadata"]["resourceVersion"]) >= int(second["metadata"]["resourceVersion"])
    assert [item["metadata"]["name"] for item in listed["items"]] == ["g1", "g2"]
    assert get_gadget(custom, ns, "g1")["spec"] == {"device": "cpu"}

    generated = core.create_namespaced_pod(
        ns, {"metadata": {"generateName": "runtime-"}, "spec": {"containers": []}}
    )
    assert (
        generated.metadata.name.startswith("runtime-") and len(generated.metadata.name) == len("runtime-") + 5
    )
    assert generated.status.phase == "Pending"
    names = [n.metadata.name for n in core.list_namespace().items]
    assert {"default", "other", ns} <= set(names)


def test_errors_are_kubernetes_status_bodies(
    api: SandboxAPIServer, custom: k8s.CustomObjectsApi, ns: str
) -> None:
    create_gadget(custom, ns, "dup")
    path = f"/apis/{GROUP}/{VERSION}/namespaces/{ns}/{PLURAL}"
    status, _, body = call(api, "POST", path, gadget("dup"))
    assert (status, body["kind"], body["reason"], body["code"]) == (409, "Status", "AlreadyExists", 409)
    assert body["details"]["name"] == "dup"

    status, _, body = call(api, "GET", f"{path}/missing")
    assert (status, body["reason"]) == (404, "NotFound")
    assert body["message"] == f'{PLURAL}.{GROUP} "missing" not found'

    status, _, body = call(api, "POST", path, gadget("Not_A_Name"))
    assert (status, body["reason"]) == (422, "Invalid")

    status, _, body = call(api, "POST", f"/apis/{GROUP}/{VERSION}/namespaces/nowhere/{PLURAL}", gadget("x"))
    assert (status, body["reason"]) == (404, "NotFound")

    status, _, body = call(
        api, "POST", path, {**gadget("labelled"), "metadata": {"name": "l", "labels": {"a": "b c"}}}
    )
    assert (status, body["reason"]) == (422, "Invalid") and "metadata.labels" in body["message"]
    bad_label = {"metadata": {"labels": {"x": "-no-"}}}
    status, _, body = call(api, "PATCH", f"{path}/dup", bad_label, "application/merge-patch+json")
    assert (status, body["reason"]) == (422, "Invalid")
    service = {"metadata": {"name": "7b1"}, "spec": {"ports": [{"port": 1}]}}
    assert call(api, "POST", f"/api/v1/namespaces/{ns}/services", service)[0] == 422

    status, _, body = call(api, "PATCH", f"{path}/dup", {"spec": {}}, "text/plain")
    assert status == 415

    with pytest.raises(ApiException) as caught:
        custom.get_namespaced_custom_object(GROUP, VERSION, ns, PLURAL, "missing")
    assert caught.value.status == 404


def test_request_size_limit_is_a_real_servers(api: SandboxAPIServer, ns: str) -> None:
    path = f"/api/v1/namespaces/{ns}/configmaps"
    big = {"metadata": {"name": "big"}, "data": {"blob": "x" * (2 * 1024 * 1024)}}
    assert call(api, "POST", path, big)[0] == 201
    huge = {"metadata": {"name": "huge"}, "data": {"blob": "x" * (4 * 1024 * 1024)}}
    status, _, body = call(api, "POST", path, huge)
    assert (status, body["reason"]) == (413, "RequestEntityTooLarge")


def test_generation_grows_only_with_spec_and_noop_writes_change_nothing(
    custom: k8s.CustomObjectsApi, ns: str
) -> None:
    created = create_gadget(custom, ns, "gen", cards=1)
    labelled = custom.patch_namespaced_custom_object(
        GROUP, VERSION, ns, PLURAL, "gen", {"metadata": {"labels": {"a": "b"}}}
    )
    assert labelled["metadata"]["generation"] == 1
    assert labelled["metadata"]["resourceVersion"] != created["metadata"]["resourceVersion"]
    changed = custom.patch_namespaced_custom_object(GROUP, VERSION, ns, PLURAL, "gen", {"spec": {"cards": 2}})
    assert changed["metadata"]["generation"] == 2
    same = custom.patch_namespaced_custom_object(GROUP, VERSION, ns, PLURAL, "gen", {"spec": {"cards": 2}})
    assert same["metadata"]["resourceVersion"] == changed["metadata"]["resourceVersion"]
    assert same["metadata"]["generation"] == 2


def test_status_subresource_isolates_status_from_spec(custom: k8s.CustomObjectsApi, ns: str) -> None:
    create_gadget(custom, ns, "st", cards=1)
    ignored = custom.patch_namespaced_custom_object(
        GROUP, VERSION, ns, PLURAL, "st", {"spec": {"cards": 3}, "status": {"phase": "Ignored"}}
    )
    assert ignored["spec"]["cards"] == 3 and "status" not in ignored
    written = custom.patch_namespaced_custom_object_status(
        GROUP,
        VERSION,
        ns,
        PLURAL,
        "st",
        {"spec": {"cards": 9}, "status": {"phase": "Ready", "readyReplicas": 1}},
    )
    assert written["status"] == {"phase": "Ready", "readyReplicas": 1}
    assert written["spec"]["cards"] == 3 and written["metadata"]["generation"] == 2

    current = get_gadget(custom, ns, "st")
    current["status"] = {"phase": "Overwritten"}
    current["spec"]["cards"] = 4
    replaced = custom.replace_namespaced_custom_object(GROUP, VERSION, ns, PLURAL, "st", current)
    assert replaced["status"]["phase"] == "Ready" and replaced["spec"]["cards"] == 4


def test_pod_status_only_changes_through_the_status_subresource(core: k8s.CoreV1Api, ns: str) -> None:
    core.create_namespaced_pod(ns, pod("p"))
    core.patch_namespaced_pod("p", ns, {"status": {"phase": "Running"}})
    assert core.read_namespaced_pod("p", ns).status.phase == "Pending"
    core.patch_namespaced_pod_status("p", ns, {"status": {"phase": "Running", "podIP": "127.0.0.5"}})
    running = core.read_namespaced_pod_status("p", ns)
    assert running.status.phase == "Running" and running.status.pod_ip == "127.0.0.5"


def test_stale_resource_version_is_a_conflict(
    api: SandboxAPIServer, custom: k8s.CustomObjectsApi, ns: str
) -> None:
    stale = create_gadget(custom, ns, "cf", cards=1)
    custom.patch_namespaced_custom_object(GROUP, VERSION, ns, PLURAL, "cf", {"spec": {"cards": 2}})
    stale["spec"]["cards"] = 5
    with pytest.raises(ApiException) as caught:
        custom.replace_namespaced_custom_object(GROUP, VERSION, ns, PLURAL, "cf", stale)
    assert caught.value.status == 409 and json.loads(caught.value.body)["reason"] == "Conflict"

    path = f"/apis/{GROUP}/{VERSION}/namespaces/{ns}/{PLURAL}/cf"
    old_rv = stale["metadata"]["resourceVersion"]
    status, _, body = call(
        api,
        "PATCH",
        path,
        {"metadata": {"resourceVersion": old_rv}, "spec": {"cards": 6}},
        "application/merge-patch+json",
    )
    assert (status, body["reason"]) == (409, "Conflict")
    fresh = get_gadget(custom, ns, "cf")
    fresh["spec"]["cards"] = 7
    assert (
        custom.replace_namespaced_custom_object(GROUP, VERSION, ns, PLURAL, "cf", fresh)["spec"]["cards"] == 7
    )


def test_patch_formats(api: SandboxAPIServer, core: k8s.CoreV1Api, ns: str) -> None:
    created = core.create_namespaced_pod(ns, pod("pp"))
    path = f"/api/v1/namespaces/{ns}/pods/pp"
    strategic = {"spec": {"containers": [{"name": "sidecar", "image": "side:1"}]}}
    status, _, body = call(api, "PATCH", path, strategic, "application/strategic-merge-patch+json")
    assert status == 200 and [c["name"] for c in body["spec"]["containers"]] == ["runtime", "sidecar"]
    merge = {"spec": {"containers": [{"name": "only", "image": "o:1"}]}}
    status, _, body = call(api, "PATCH", path, merge, "application/merge-patch+json")
    assert [c["name"] for c in body["spec"]["containers"]] == ["only"]
    operations = [
        {"op": "test", "path": "/spec/containers/0/name", "value": "only"},
        {"op": "add", "path": "/metadata/labels/added", "value": "yes"},
        {"op": "replace", "path": "/spec/containers/0/image", "value": "o:2"},
    ]
    status, _, body = call(api, "PATCH", path, operations, "application/json-patch+json")
    assert status == 200 and body["metadata"]["labels"] == {"added": "yes"}
    assert body["spec"]["containers"][0]["image"] == "o:2"
    failing = [{"op": "test", "path": "/spec/containers/0/name", "value": "nope"}]
    assert call(api, "PATCH", path, failing, "application/json-patch+json")[0] == 422
    assert created.metadata.uid == body["metadata"]["uid"]


def test_label_and_field_selectors(core: k8s.CoreV1Api, ns: str) -> None:
    core.create_namespaced_pod(ns, pod("a", {"app": "bloomz", "tier": "gpu"}))
    core.create_namespaced_pod(ns, pod("b", {"app": "bloomz", "tier": "cpu"}))
    core.create_namespaced_pod(ns, pod("c", {"app": "other"}))
    core.patch_namespaced_pod_status("b", ns, {"status": {"phase": "Running"}})

    def names(**selectors: str) -> list[str]:
        return [p.metadata.name for p in core.list_namespaced_pod(ns, **selectors).items]

    assert names(label_selector="app=bloomz") == ["a", "b"]
    assert names(label_selector="app==bloomz,tier!=gpu") == ["b"]
    assert names(label_selector="tier in (gpu, tpu)") == ["a"]
    assert names(label_selector="app,tier notin (gpu)") == ["b", "c"]
    assert names(label_selector="tier") == ["a", "b"]
    assert names(label_selector="!tier") == ["c"]
    assert names(field_selector="metadata.name=c") == ["c"]
    assert names(field_selector="status.phase=Running") == ["b"]
    assert names(field_selector="status.phase!=Running,metadata.name!=a") == ["c"]
    everywhere = core.list_pod_for_all_namespaces(label_selector="app=bloomz").items
    assert {(p.metadata.namespace, p.metadata.name) for p in everywhere} >= {(ns, "a"), (ns, "b")}


# ----- deletion, finalizers, garbage collection
def test_finalizers_delay_deletion_until_removed(custom: k8s.CustomObjectsApi, ns: str) -> None:
    created = create_gadget(custom, ns, "fin")
    custom.patch_namespaced_custom_object(
        GROUP, VERSION, ns, PLURAL, "fin", {"metadata": {"finalizers": ["test.bloomz.dev/guard"]}}
    )
    marked = custom.delete_namespaced_custom_object(GROUP, VERSION, ns, PLURAL, "fin", grace_period_seconds=5)
    assert marked["metadata"]["deletionTimestamp"] and marked["metadata"]["deletionGracePeriodSeconds"] == 0
    still = get_gadget(custom, ns, "fin")
    assert still["metadata"]["finalizers"] == ["test.bloomz.dev/guard"]

    with pytest.raises(ApiException) as caught:  # no new finalizers on an object being deleted
        custom.patch_namespaced_custom_object(
            GROUP, VERSION, ns, PLURAL, "fin", {"metadata": {"finalizers": ["test.bloomz.dev/guard", "more"]}}
        )
    assert caught.value.status == 422

    custom.patch_namespaced_custom_object(
        GROUP, VERSION, ns, PLURAL, "fin", {"metadata": {"finalizers": None}}
    )
    with pytest.raises(ApiException) as caught:
        get_gadget(custom, ns, "fin")
    assert caught.value.status == 404
    assert created["metadata"]["uid"] == marked["metadata"]["uid"]


def test_deleting_an_owner_collects_its_dependents(
    custom: k8s.CustomObjectsApi, core: k8s.CoreV1Api, ns: str
) -> None:
    owner = create_gadget(custom, ns, "owner")
    core.create_namespaced_pod(ns, pod("owned-0", owner=owner))
    core.create_namespaced_pod(ns, pod("owned-1", owner=owner))
    core.create_namespaced_service(
        ns,
        {
            "metadata": {
                "name": "owner",
                "ownerReferences": pod("x", owner=owner)["metadata"]["ownerReferences"],
            },
            "spec": {"ports": [{"name": "grpc", "port": 50051}]},
        },
    )
    core.create_namespaced_pod(ns, pod("unrelated"))
    custom.delete_namespaced_custom_object(GROUP, VERSION, ns, PLURAL, "owner")
    assert [p.metadata.name for p in core.list_namespaced_pod(ns).items] == ["unrelated"]
    assert core.list_namespaced_service(ns).items == []

    orphan_owner = create_gadget(custom, ns, "orphaner")
    core.create_namespaced_pod(ns, pod("orphan", owner=orphan_owner))
    custom.delete_namespaced_custom_object(
        GROUP, VERSION, ns, PLURAL, "orphaner", propagation_policy="Orphan"
    )
    orphan = core.read_namespaced_pod("orphan", ns)
    assert orphan.metadata.owner_references is None


def test_foreground_deletion_waits_for_dependents(
    custom: k8s.CustomObjectsApi, core: k8s.CoreV1Api, ns: str
) -> None:
    owner = create_gadget(custom, ns, "fg")
    bound = pod("fg-0", owner=owner)
    bound["spec"]["nodeName"] = "sandbox-node"  # deleted gracefully: stays until the "kubelet" ends it
    core.create_namespaced_pod(ns, bound)
    core.create_namespaced_pod(ns, pod("fg-1", owner=owner))
    custom.delete_namespaced_custom_object(GROUP, VERSION, ns, PLURAL, "fg", propagation_policy="Foreground")
    waiting = get_gadget(custom, ns, "fg")
    assert waiting["metadata"]["finalizers"] == ["foregroundDeletion"]
    assert [p.metadata.name for p in core.list_namespaced_pod(ns).items] == ["fg-0"]
    core.delete_namespaced_pod("fg-0", ns, grace_period_seconds=0)
    with pytest.raises(ApiException) as caught:
        get_gadget(custom, ns, "fg")
    assert caught.value.status == 404

    lonely = create_gadget(custom, ns, "alone")  # no dependents: nothing to wait for
    custom.delete_namespaced_custom_object(
        GROUP, VERSION, ns, PLURAL, "alone", propagation_policy="Foreground"
    )
    assert custom.list_namespaced_custom_object(GROUP, VERSION, ns, PLURAL)["items"] == []
    assert lonely["metadata"]["name"] == "alone"


def test_dependents_wait_for_the_owner_finalizers(
    custom: k8s.CustomObjectsApi, core: k8s.CoreV1Api, ns: str
) -> None:
    owner = create_gadget(custom, ns, "slow")
    custom.patch_namespaced_custom_object(
        GROUP, VERSION, ns, PLURAL, "slow", {"metadata": {"finalizers": ["f"]}}
    )
    core.create_namespaced_pod(ns, pod("child", owner=owner))
    custom.delete_namespaced_custom_object(GROUP, VERSION, ns, PLURAL, "slow")
    assert core.read_namespaced_pod("child", ns).metadata.name == "child"
    custom.patch_namespaced_custom_object(
        GROUP, VERSION, ns, PLURAL, "slow", {"metadata": {"finalizers": []}}
    )
    assert core.list_namespaced_pod(ns).items == []


def test_pods_bound_to_a_node_are_deleted_gracefully(core: k8s.CoreV1Api, ns: str) -> None:
    unbound = core.create_namespaced_pod(ns, pod("unbound"))
    core.delete_namespaced_pod("unbound", ns)
    assert unbound.metadata.name not in [p.metadata.name for p in core.list_namespaced_pod(ns).items]

    bound = pod("bound")
    bound["spec"]["nodeName"] = "sandbox-node"
    bound["spec"]["terminationGracePeriodSeconds"] = 20
    core.create_namespaced_pod(ns, bound)
    core.delete_namespaced_pod("bound", ns)
    terminating = core.read_namespaced_pod("bound", ns)
    assert terminating.metadata.deletion_timestamp is not None
    assert terminating.metadata.deletion_grace_period_seconds == 20
    core.patch_namespaced_pod_status("bound", ns, {"status": {"phase": "Running"}})  # still reported on
    core.delete_namespaced_pod("bound", ns, grace_period_seconds=0)  # the kubelet's final word
    assert core.list_namespaced_pod(ns).items == []

    finished = pod("finished")
    finished["spec"]["nodeName"] = "sandbox-node"
    core.create_namespaced_pod(ns, finished)
    core.patch_namespaced_pod_status("finished", ns, {"status": {"phase": "Succeeded"}})
    core.delete_namespaced_pod("finished", ns)
    assert core.list_namespaced_pod(ns).items == []


def test_deleting_a_namespace_deletes_its_content(core: k8s.CoreV1Api, custom: k8s.CustomObjectsApi) -> None:
    core.create_namespace({"metadata": {"name": "doomed"}})
    core.create_namespaced_pod("doomed", pod("p"))
    create_gadget(custom, "doomed", "g")
    core.delete_namespace("doomed")
    assert "doomed" not in [n.metadata.name for n in core.list_namespace().items]
    assert core.list_pod_for_all_namespaces(field_selector="metadata.namespace=doomed").items == []


# ----- watch
def test_watch_streams_every_change_as_json_lines(
    api: SandboxAPIServer, custom: k8s.CustomObjectsApi, ns: str
) -> None:
    create_gadget(custom, ns, "before")
    stream = WatchStream(api, f"/apis/{GROUP}/{VERSION}/namespaces/{ns}/{PLURAL}?watch=true")
    try:
        assert stream.response.headers["Content-Type"].startswith("application/json")
        stream.wait_for(lambda events: summary(events) == [("ADDED", "before")])
        create_gadget(custom, ns, "w")
        custom.patch_namespaced_custom_object_status(
            GROUP, VERSION, ns, PLURAL, "w", {"status": {"phase": "P"}}
        )
        custom.patch_namespaced_custom_object(
            GROUP, VERSION, ns, PLURAL, "w", {"metadata": {"finalizers": ["f"]}}
        )
        custom.delete_namespaced_custom_object(GROUP, VERSION, ns, PLURAL, "w")
        custom.patch_namespaced_custom_object(
            GROUP, VERSION, ns, PLURAL, "w", {"metadata": {"finalizers": None}}
        )
        expected = [("ADDED", "before"), ("ADDED", "w")] + [("MODIFIED", "w")] * 4 + [("DELETED", "w")]
        events = stream.wait_for(lambda events: len(summary(events)) >= len(expected))
        assert summary(events) == expected
        assert events[2]["object"]["status"] == {"phase": "P"}
        assert events[4]["object"]["metadata"]["deletionTimestamp"]
        versions = [int(e["object"]["metadata"]["resourceVersion"]) for e in events]
        assert versions == sorted(versions)
    finally:
        stream.close()


def test_watch_resumes_from_a_resource_version_and_honours_timeout(
    api: SandboxAPIServer, core: k8s.CoreV1Api, ns: str
) -> None:
    start = core.list_namespaced_pod(ns).metadata.resource_version
    core.create_namespaced_pod(ns, pod("r1"))
    core.patch_namespaced_pod("r1", ns, {"metadata": {"labels": {"x": "y"}}})
    core.delete_namespaced_pod("r1", ns)
    stream = WatchStream(
        api, f"/api/v1/namespaces/{ns}/pods?watch=true&resourceVersion={start}&timeoutSeconds=1"
    )
    assert stream.ended.wait(30), "timeoutSeconds did not end the stream"
    assert summary(stream.events) == [("ADDED", "r1"), ("MODIFIED", "r1"), ("DELETED", "r1")]


def test_watch_filters_by_namespace_and_selectors(
    api: SandboxAPIServer, core: k8s.CoreV1Api, ns: str
) -> None:
    everywhere = WatchStream(
        api, "/api/v1/pods?watch=true&labelSelector=app%3Dbloomz&allowWatchBookmarks=true"
    )
    by_name = WatchStream(api, f"/api/v1/namespaces/{ns}/pods?watch=true&fieldSelector=metadata.name%3Dm")
    try:
        core.create_namespaced_pod("other", pod("elsewhere", {"app": "bloomz"}))
        core.create_namespaced_pod(ns, pod("m", {"app": "bloomz"}))
        core.create_namespaced_pod(ns, pod("n", {"app": "bloomz"}))
        core.patch_namespaced_pod("m", ns, {"metadata": {"labels": {"app": "moved"}}})
        everywhere.wait_for(lambda e: ("DELETED", "m") in summary(e))
        assert summary(everywhere.events)[-4:] == [
            ("ADDED", "elsewhere"),
            ("ADDED", "m"),
            ("ADDED", "n"),
            ("DELETED", "m"),  # it left the selector
        ]
        everywhere.wait_for(lambda e: any(event["type"] == "BOOKMARK" for event in e))
        by_name.wait_for(lambda e: summary(e) == [("ADDED", "m"), ("MODIFIED", "m")])
    finally:
        everywhere.close()
        by_name.close()
        core.delete_namespaced_pod("elsewhere", "other")


def test_watch_as_table_for_kubectl_get_w(
    api: SandboxAPIServer, custom: k8s.CustomObjectsApi, ns: str
) -> None:
    create_gadget(custom, ns, "t1", device="cpu", cards=2)
    accept = "application/json;as=Table;v=v1;g=meta.k8s.io,application/json"
    stream = WatchStream(
        api, f"/apis/{GROUP}/{VERSION}/namespaces/{ns}/{PLURAL}?watch=true", {"Accept": accept}
    )
    try:
        stream.wait_for(lambda events: len(events) == 1)
        custom.patch_namespaced_custom_object(GROUP, VERSION, ns, PLURAL, "t1", {"spec": {"cards": 4}})
        first, second = stream.wait_for(lambda events: len(events) == 2)
        assert first["object"]["kind"] == "Table" and first["object"]["rows"][0]["cells"][:3] == [
            "t1",
            "cpu",
            2,
        ]
        assert [c["name"] for c in first["object"]["columnDefinitions"]][:3] == ["Name", "Device", "Cards"]
        assert second["type"] == "MODIFIED" and second["object"]["columnDefinitions"] == []
        assert second["object"]["rows"][0]["cells"][2] == 4
    finally:
        stream.close()


def test_delete_collection_and_dry_run(api: SandboxAPIServer, core: k8s.CoreV1Api, ns: str) -> None:
    for name, tier in (("d1", "gpu"), ("d2", "gpu"), ("d3", "cpu")):
        core.create_namespaced_pod(ns, pod(name, {"tier": tier}))
    status, _, body = call(api, "POST", f"/api/v1/namespaces/{ns}/pods?dryRun=All", pod("dry"))
    assert status == 201 and body["metadata"]["name"] == "dry"
    status, _, body = call(api, "DELETE", f"/api/v1/namespaces/{ns}/pods/d3?dryRun=All")
    assert status == 200
    core.delete_collection_namespaced_pod(ns, label_selector="tier=gpu")
    assert [p.metadata.name for p in core.list_namespaced_pod(ns).items] == ["d3"]


def test_concurrent_writers_are_serialized_and_all_seen_by_a_watch(
    api: SandboxAPIServer, core: k8s.CoreV1Api, ns: str
) -> None:
    core.create_namespaced_config_map(ns, {"metadata": {"name": "counter"}, "data": {}})
    stream = WatchStream(api, f"/api/v1/namespaces/{ns}/configmaps?watch=true")
    try:
        stream.wait_for(lambda events: len(events) == 1)

        def writer(index: int) -> None:
            client = k8s.CoreV1Api(api.api_client())  # one connection pool per thread
            for step in range(20):
                client.patch_namespaced_config_map("counter", ns, {"data": {f"w{index}-{step}": "x"}})

        threads = [threading.Thread(target=writer, args=(i,)) for i in range(4)]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join(timeout=120)
        assert not any(thread.is_alive() for thread in threads), "a writer is still running"
        final = core.read_namespaced_config_map("counter", ns)
        assert len(final.data) == 80
        events = stream.wait_for(lambda events: len(events) == 81)
        versions = [int(e["object"]["metadata"]["resourceVersion"]) for e in events]
        assert versions == sorted(set(versions))
        assert events[-1]["object"]["metadata"]["resourceVersion"] == final.metadata.resource_version
    finally:
        stream.close()


def test_kubernetes_client_watch(core: k8s.CoreV1Api, ns: str) -> None:
    import kubernetes.watch

    core.create_namespaced_pod(ns, pod("kw"))
    watch = kubernetes.watch.Watch()
    seen = []
    for event in watch.stream(core.list_namespaced_pod, ns, timeout_seconds=5):
        seen.append((event["type"], event["object"].metadata.name))
        if len(seen) == 1:
            core.delete_namespaced_pod("kw", ns)
        if len(seen) == 2:
            watch.stop()
    assert seen == [("ADDED", "kw"), ("DELETED", "kw")]


# ----- events, nodes, services
def test_events_nodes_and_services(api: SandboxAPIServer, core: k8s.CoreV1Api, ns: str) -> None:
    core.create_namespaced_event(
        ns,
        {
            "metadata": {"generateName": "bloomz-"},
            "involvedObject": {"kind": "BloomzInference", "name": "x", "namespace": ns},
            "reason": "Ready",
            "message": "all pods ready",
            "type": "Normal",
        },
    )
    assert [e.reason for e in core.list_namespaced_event(ns).items] == ["Ready"]
    new_style = {
        "metadata": {"name": "e2"},
        "reason": "Scheduled",
        "note": "n",
        "type": "Normal",
        "action": "A",
    }
    assert call(api, "POST", f"/apis/events.k8s.io/v1/namespaces/{ns}/events", new_style)[0] == 201
    assert [
        e["reason"] for e in call(api, "GET", f"/apis/events.k8s.io/v1/namespaces/{ns}/events")[2]["items"]
    ] == ["Scheduled"]

    node = {
        "metadata": {"name": "sandbox-node", "labels": {"kubernetes.io/hostname": "sandbox-node"}},
        "status": {"capacity": {"habana.ai/gaudi": "8"}, "allocatable": {"habana.ai/gaudi": "8"}},
    }
    core.create_node(node)
    try:
        listed = core.list_node().items
        assert [n.metadata.name for n in listed] == ["sandbox-node"]
        assert listed[0].status.allocatable == {"habana.ai/gaudi": "8"}
    finally:
        core.delete_node("sandbox-node")

    service = core.create_namespaced_service(
        ns, {"metadata": {"name": "svc"}, "spec": {"ports": [{"name": "grpc", "port": 50051}]}}
    )
    assert service.spec.cluster_ip and service.spec.ports[0].protocol == "TCP"


def test_pod_logs_are_served_and_followed(
    api: SandboxAPIServer, core: k8s.CoreV1Api, ns: str, tmp_path: Path
) -> None:
    log_file = tmp_path / "runtime.log"
    log_file.write_text("loading\nwarming up\n")
    api.serve_pod_logs(
        lambda namespace, name, container: log_file if (name, container) == ("lp", "runtime") else None
    )
    core.create_namespaced_pod(ns, pod("lp"))
    assert core.read_namespaced_pod_log("lp", ns) == "loading\nwarming up\n"
    assert core.read_namespaced_pod_log("lp", ns, tail_lines=1) == "warming up\n"
    with pytest.raises(ApiException) as caught:
        core.read_namespaced_pod_log("lp", ns, container="nope")
    assert caught.value.status == 400

    connection = http.client.HTTPConnection(api.host, api.port, timeout=60)
    connection.request("GET", f"/api/v1/namespaces/{ns}/pods/lp/log?follow=true&tailLines=0")
    response = connection.getresponse()
    received: list[bytes] = []
    done = threading.Event()

    def read() -> None:
        for line in response:
            received.append(line)
        done.set()

    reader = threading.Thread(target=read, daemon=True)
    reader.start()
    with log_file.open("a") as stream:
        stream.write("SERVING\n")
    wait_for("the appended log line", lambda: b"SERVING\n" in received, 30, 0.05)
    assert received == [b"SERVING\n"]
    core.delete_namespaced_pod("lp", ns)
    assert done.wait(30), "following did not end with the pod"
    connection.close()


# ----- kubectl
def kubectl(kubeconfig: Path, *args: str, stdin: str | None = None, check: bool = True) -> str:
    result = subprocess.run(
        [
            str(KUBECTL),
            "--kubeconfig",
            str(kubeconfig),
            "--cache-dir",
            str(kubeconfig.parent / "cache"),
            *args,
        ],
        input=stdin,
        capture_output=True,
        text=True,
        timeout=60,
        env={**os.environ, "KUBECONFIG": str(kubeconfig)},
    )
    if check and result.returncode != 0:
        raise AssertionError(f"kubectl {' '.join(args)} failed: {result.stderr}")
    return result.stdout + result.stderr


def test_kubectl_apply_get_patch_wait_delete(
    api: SandboxAPIServer, custom: k8s.CustomObjectsApi, ns: str, tmp_path: Path
) -> None:
    kubeconfig = api.write_kubeconfig(tmp_path / "kubeconfig", namespace=ns)
    manifest = yaml.safe_dump(gadget("demo", device="cpu", cards=2, model="/models/tiny"))
    assert "gadget.test.bloomz.dev/demo created" in kubectl(kubeconfig, "apply", "-f", "-", stdin=manifest)
    assert "unchanged" in kubectl(kubeconfig, "apply", "--validate=false", "-f", "-", stdin=manifest)
    assert "serverside-applied" in kubectl(kubeconfig, "apply", "--server-side", "-f", "-", stdin=manifest)
    explained = kubectl(kubeconfig, "explain", "gadgets.spec.device")
    assert "KIND:       Gadget" in explained and "the device kind: hpu, cuda or cpu" in explained

    custom.patch_namespaced_custom_object_status(
        GROUP,
        VERSION,
        ns,
        PLURAL,
        "demo",
        {
            "status": {
                "readyReplicas": 1,
                "latency": {"seconds": 0.737},
                "conditions": [{"type": "Ready", "status": "True"}],
            }
        },
    )
    table = kubectl(kubeconfig, "get", "gd").splitlines()
    assert table[0].split() == ["NAME", "DEVICE", "CARDS", "READY", "LATENCY", "AGE"]
    assert table[1].split()[:5] == ["demo", "cpu", "2", "1", "0.737"]
    assert "MODEL" in kubectl(kubeconfig, "get", "gadgets", "-o", "wide").splitlines()[0]

    as_yaml = yaml.safe_load(kubectl(kubeconfig, "get", "gadget", "demo", "-o", "yaml"))
    assert as_yaml["spec"]["cards"] == 2 and as_yaml["metadata"]["namespace"] == ns
    kubectl(kubeconfig, "patch", "gd", "demo", "--type=merge", "-p", '{"spec":{"cards":4}}')
    assert get_gadget(custom, ns, "demo")["metadata"]["generation"] == 2
    assert "condition met" in kubectl(kubeconfig, "wait", "--for=condition=Ready", "gd/demo", "--timeout=30s")

    kubectl(kubeconfig, "create", "configmap", "settings", "--from-literal=logLevel=DEBUG")  # protobuf bodies
    kubectl(kubeconfig, "create", "secret", "generic", "token", "--from-literal=token=xyz")
    assert yaml.safe_load(kubectl(kubeconfig, "get", "cm", "settings", "-o", "yaml"))["data"] == {
        "logLevel": "DEBUG"
    }
    assert yaml.safe_load(kubectl(kubeconfig, "get", "secret", "token", "-o", "yaml"))["data"] == {
        "token": "eHl6"
    }

    kubectl(kubeconfig, "run", "kpod", "--image=busybox")
    pods = kubectl(kubeconfig, "get", "pods").splitlines()
    assert pods[0].split() == ["NAME", "READY", "STATUS", "RESTARTS", "AGE"]
    assert pods[1].split()[:4] == ["kpod", "0/1", "Pending", "0"]
    (tmp_path / "kpod.log").write_text("model loaded\nSERVING\n")
    api.serve_pod_logs(lambda namespace, name, container: tmp_path / f"{name}.log")
    assert kubectl(kubeconfig, "logs", "kpod", "--tail=1") == "SERVING\n"

    assert "deleted" in kubectl(kubeconfig, "delete", "-f", "-", "--timeout=30s", stdin=manifest)
    assert "No resources found" in kubectl(kubeconfig, "get", "gd")


# ----- Kopf
KOPF_HANDLERS = """
import os
import signal
import kopf

@kopf.on.login()
def login(**_):
    return kopf.ConnectionInfo(server=os.environ["SANDBOX_TEST_URL"], token="test")

@kopf.on.create("test.bloomz.dev", "v1alpha1", "gadgets")
def created(patch, **_):
    patch.status["phase"] = "Seen"

@kopf.on.delete("test.bloomz.dev", "v1alpha1", "gadgets")
def deleted(**_):
    pass
"""


def test_kopf_operator_handles_create_and_delete(
    api: SandboxAPIServer, custom: k8s.CustomObjectsApi, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    import kopf
    import kopf.testing

    handlers = tmp_path / "handlers.py"
    handlers.write_text(KOPF_HANDLERS)
    monkeypatch.setenv("SANDBOX_TEST_URL", api.url)
    args = ["run", "--standalone", "--namespace", "default", str(handlers)]
    # A fresh registry: Kopf makes a runner's registry the process-wide default, so handlers of
    # earlier in-process operators (the operator's own tests) would otherwise run here too.
    with kopf.testing.KopfRunner(args, registry=kopf.OperatorRegistry(), timeout=120) as runner:
        create_gadget(custom, "default", "kopf-smoke")

        def current() -> dict[str, Any]:
            return get_gadget(custom, "default", "kopf-smoke")

        wait_for("the handler's status", lambda: current().get("status", {}).get("phase") == "Seen", 60, 0.1)
        seen = current()
        assert seen["status"]["phase"] == "Seen"
        assert seen["metadata"]["finalizers"] == ["kopf.zalando.org/KopfFinalizerMarker"]

        custom.delete_namespaced_custom_object(GROUP, VERSION, "default", PLURAL, "kopf-smoke")
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline:
            if not custom.list_namespaced_custom_object(GROUP, VERSION, "default", PLURAL)["items"]:
                break
            time.sleep(0.1)
        assert custom.list_namespaced_custom_object(GROUP, VERSION, "default", PLURAL)["items"] == []
    assert runner.exit_code == 0 and runner.exception is None
    assert "Traceback" not in runner.output


# ----- lifecycle
def test_command_line_serves_until_sigterm(tmp_path: Path) -> None:
    crd_file = tmp_path / "crd.yaml"
    crd_file.write_text(yaml.safe_dump(GADGET_CRD))
    kubeconfig = tmp_path / "kubeconfig"
    command = [sys.executable, "-m", "bloomz_sandbox.apiserver", "--crd", str(crd_file)]
    command += ["--namespace", "team-a", "--kubeconfig", str(kubeconfig)]
    process = subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    try:
        assert process.stdout is not None
        first = process.stdout.readline()
        assert first.startswith("Kubernetes API emulator listening on http://127.0.0.1:"), first
        assert "kubeconfig written" in process.stdout.readline()
        config = yaml.safe_load(kubeconfig.read_text())
        assert config["contexts"][0]["context"]["namespace"] == "default"
        url = config["clusters"][0]["cluster"]["server"]
        with urllib.request.urlopen(f"{url}/apis/{GROUP}/{VERSION}", timeout=30) as response:
            assert PLURAL in {r["name"] for r in json.load(response)["resources"]}
        with urllib.request.urlopen(f"{url}/api/v1/namespaces", timeout=30) as response:
            assert [n["metadata"]["name"] for n in json.load(response)["items"]] == ["team-a"]
        process.send_signal(signal.SIGTERM)
        assert process.wait(timeout=30) == 0
    finally:
        if process.poll() is None:
            process.kill()
            process.wait(timeout=30)


def test_requests_are_recorded_on_demand() -> None:
    with SandboxAPIServer(record_requests=True) as server:
        k8s.CoreV1Api(server.api_client()).list_namespaced_pod("default", label_selector="a=b")
        assert ("GET", "/api/v1/namespaces/default/pods", "labelSelector=a%3Db") in [
            r[:3] for r in server.requests
        ]
        assert server.requests[-1].user_agent.startswith("OpenAPI-Generator")
    with SandboxAPIServer() as server, pytest.raises(RuntimeError):
        server.requests  # noqa: B018


def test_stop_frees_the_port_and_is_idempotent(tmp_path: Path) -> None:
    server = SandboxAPIServer().start()
    port = server.port
    kubeconfig = yaml.safe_load(server.write_kubeconfig(tmp_path / "kc").read_text())
    assert kubeconfig["clusters"][0]["cluster"]["server"] == f"http://127.0.0.1:{port}"
    stream = WatchStream(server, "/api/v1/pods?watch=true")  # an open watch must not hold the stop
    server.stop()
    server.stop()
    assert stream.ended.wait(30)
    stream.close()
    with socket.socket() as probe:  # nothing listens there any more (as a restarted server would bind)
        probe.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        probe.bind(("127.0.0.1", port))
        probe.listen()

    with server:  # a restarted server keeps its objects
        assert [n.metadata.name for n in k8s.CoreV1Api(server.api_client()).list_namespace().items] == [
            "default"
        ]
