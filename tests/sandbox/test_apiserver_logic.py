"""Pure parts of the sandbox API server: selectors, patches, tables, and the store without HTTP."""

from __future__ import annotations

import datetime
from pathlib import Path
from typing import Any

import pytest
from bloomz_sandbox.apiserver import load_crds
from bloomz_sandbox.apiserver.defaults import prepare_for_create
from bloomz_sandbox.apiserver.errors import ApiError
from bloomz_sandbox.apiserver.openapi import group_version_document, index_document
from bloomz_sandbox.apiserver.patches import json_patch, merge_patch, strategic_merge_patch
from bloomz_sandbox.apiserver.protobuf import decode_object
from bloomz_sandbox.apiserver.resources import CRD_RESOURCE, ResourceType
from bloomz_sandbox.apiserver.routes import version_priority
from bloomz_sandbox.apiserver.selectors import field_matcher, label_matcher, split_requirements
from bloomz_sandbox.apiserver.store import ObjectStore, WatchEvent
from bloomz_sandbox.apiserver.streams import translate
from bloomz_sandbox.apiserver.tables import age, human_duration, json_path, table, wants_table
from bloomz_sandbox.apiserver.validation import metadata_problems, name_problem

REPO = Path(__file__).resolve().parents[2]
NOW = datetime.datetime(2026, 1, 1, 12, 0, 0, tzinfo=datetime.timezone.utc)


def labelled(**labels: str) -> dict[str, Any]:
    return {"metadata": {"labels": labels}}


# ----- selectors
def test_split_requirements_keeps_set_values_together() -> None:
    assert split_requirements("a in (x, y),b!=c,!d") == ["a in (x, y)", "b!=c", "!d"]


@pytest.mark.parametrize(
    ("selector", "matching", "not_matching"),
    [
        ("app=bloomz", {"app": "bloomz"}, {"app": "other"}),
        ("app==bloomz", {"app": "bloomz"}, {}),
        ("app!=bloomz", {}, {"app": "bloomz"}),
        ("tier in (gpu,tpu)", {"tier": "tpu"}, {"tier": "cpu"}),
        ("tier notin (gpu)", {}, {"tier": "gpu"}),
        ("tier", {"tier": ""}, {}),
        ("!tier", {}, {"tier": "x"}),
        ("a=1,b in (2)", {"a": "1", "b": "2"}, {"a": "1", "b": "3"}),
        ("", {}, None),
    ],
)
def test_label_selectors(
    selector: str, matching: dict[str, str], not_matching: dict[str, str] | None
) -> None:
    matcher = label_matcher(selector)
    assert matcher(labelled(**matching))
    if not_matching is not None:
        assert not matcher(labelled(**not_matching))


def test_field_selectors_compare_dotted_paths_as_strings() -> None:
    pod = {"metadata": {"name": "p", "namespace": "ns"}, "status": {"phase": "Running"}, "spec": {"x": True}}
    assert field_matcher("metadata.name=p,status.phase==Running")(pod)
    assert not field_matcher("status.phase!=Running")(pod)
    assert field_matcher("spec.nodeName=")(pod)  # absent compares as ""
    assert field_matcher("spec.x=true")(pod)


def test_unparsable_selectors_are_bad_requests() -> None:
    with pytest.raises(ApiError) as caught:
        label_matcher("a in b")
    assert caught.value.code == 400
    with pytest.raises(ApiError):
        field_matcher("metadata.name")


# ----- patches
def test_merge_patch_merges_dicts_deletes_nulls_and_replaces_lists() -> None:
    target = {"a": {"b": 1, "c": 2}, "l": [1, 2], "keep": True}
    assert merge_patch(target, {"a": {"b": None, "d": 3}, "l": [3]}) == {
        "a": {"c": 2, "d": 3},
        "l": [3],
        "keep": True,
    }
    assert target == {"a": {"b": 1, "c": 2}, "l": [1, 2], "keep": True}  # not mutated


def test_strategic_merge_patch_merges_keyed_lists() -> None:
    pod = {
        "metadata": {"finalizers": ["a"]},
        "spec": {"containers": [{"name": "runtime", "image": "i:1"}, {"name": "side", "image": "s:1"}]},
        "status": {"conditions": [{"type": "Ready", "status": "False"}]},
    }
    patch = {
        "metadata": {"finalizers": ["b"]},
        "spec": {
            "$setElementOrder/containers": [{"name": "runtime"}, {"name": "side"}],
            "containers": [{"name": "runtime", "image": "i:2"}, {"name": "side", "$patch": "delete"}],
        },
        "status": {
            "conditions": [{"type": "Ready", "status": "True"}, {"type": "PodScheduled", "status": "True"}]
        },
    }
    result = strategic_merge_patch(pod, patch)
    assert result["metadata"]["finalizers"] == ["a", "b"]
    assert result["spec"] == {"containers": [{"name": "runtime", "image": "i:2"}]}
    assert result["status"]["conditions"] == [
        {"type": "Ready", "status": "True"},
        {"type": "PodScheduled", "status": "True"},
    ]


def test_strategic_merge_patch_directives() -> None:
    target = {"metadata": {"finalizers": ["a", "b"]}, "spec": {"x": 1, "y": 2}, "ports": [{"port": 1}]}
    patch = {
        "metadata": {"$deleteFromPrimitiveList/finalizers": ["a"]},
        "spec": {"$retainKeys": ["y", "z"], "z": 3},
        "ports": [{"port": 2}, {"$patch": "replace"}],
    }
    result = strategic_merge_patch(target, patch)
    assert result == {"metadata": {"finalizers": ["b"]}, "spec": {"y": 2, "z": 3}, "ports": [{"port": 2}]}
    assert strategic_merge_patch({"a": {"b": 1}}, {"a": {"$patch": "delete"}}) == {}
    container_ports = {"ports": [{"containerPort": 80, "name": "a"}]}
    merged = strategic_merge_patch(container_ports, {"ports": [{"containerPort": 80, "name": "b"}]})
    assert merged == {"ports": [{"containerPort": 80, "name": "b"}]}


def test_json_patch_operations() -> None:
    doc = {"a": [1, 2], "b": {"c": "d"}}
    result = json_patch(
        doc,
        [
            {"op": "add", "path": "/a/-", "value": 3},
            {"op": "add", "path": "/a/0", "value": 0},
            {"op": "remove", "path": "/a/1"},
            {"op": "replace", "path": "/b/c", "value": "e"},
            {"op": "copy", "from": "/b", "path": "/copied"},
            {"op": "move", "from": "/copied/c", "path": "/moved"},
            {"op": "add", "path": "/x~1y", "value": "escaped"},
            {"op": "test", "path": "/moved", "value": "e"},
        ],
    )
    assert result == {"a": [0, 2, 3], "b": {"c": "e"}, "copied": {}, "moved": "e", "x/y": "escaped"}
    assert doc == {"a": [1, 2], "b": {"c": "d"}}


@pytest.mark.parametrize(
    ("operations", "code"),
    [
        ([{"op": "test", "path": "/a", "value": 2}], 422),
        ([{"op": "remove", "path": "/missing"}], 422),
        ([{"op": "replace", "path": "/missing", "value": 1}], 422),
        ([{"op": "frobnicate", "path": "/a"}], 400),
        ({"op": "add"}, 400),
    ],
)
def test_json_patch_errors(operations: Any, code: int) -> None:
    with pytest.raises(ApiError) as caught:
        json_patch({"a": 1}, operations)
    assert caught.value.code == code


# ----- tables
@pytest.mark.parametrize(
    ("seconds", "shown"),
    [(-5, "<invalid>"), (0, "0s"), (119, "119s"), (150, "2m30s"), (600, "10m"), (3 * 3600 + 60, "3h1m"),
     (30 * 3600, "30h"), (3 * 86400 + 3600, "3d1h"), (20 * 86400, "20d"), (3 * 365 * 86400, "3y")],
)  # fmt: skip
def test_human_duration_like_kubectl(seconds: int, shown: str) -> None:
    assert human_duration(seconds) == shown


def test_json_path_and_age() -> None:
    obj = {"status": {"latency": {"seconds": 0.7}, "conditions": [{"type": "Ready"}]}}
    assert json_path(obj, ".status.latency.seconds") == 0.7
    assert json_path(obj, "{.status.conditions[0].type}") == "Ready"
    assert json_path(obj, ".status.conditions[3].type") is None
    assert json_path(obj, ".spec.device") is None
    assert age("2026-01-01T11:55:00Z", NOW) == "5m"
    assert age(None, NOW) == "<unknown>"


def test_wants_table_follows_kubectl_accept_header() -> None:
    kubectl = (
        "application/json;as=Table;v=v1;g=meta.k8s.io,"
        "application/json;as=Table;v=v1beta1;g=meta.k8s.io,application/json"
    )
    assert wants_table(kubectl)
    assert not wants_table("application/json")
    assert not wants_table("application/json, */*")


def test_crd_table_uses_printer_columns_and_renders_dates_as_ages() -> None:
    resource = ResourceType(
        "g.dev", "v1", "things", "Thing", True, custom=True,
        printer_columns=(
            {"name": "Cards", "type": "integer", "jsonPath": ".spec.cards"},
            {"name": "Latency", "type": "number", "jsonPath": ".status.latency.seconds"},
            {"name": "Model", "type": "string", "jsonPath": ".spec.model", "priority": 1},
            {"name": "Age", "type": "date", "jsonPath": ".metadata.creationTimestamp"},
        ),
    )  # fmt: skip
    obj = {
        "metadata": {"name": "t", "creationTimestamp": "2026-01-01T11:00:00Z"},
        "spec": {"cards": 8, "model": "bigscience/bloomz"},
        "status": {"latency": {"seconds": 3.717}},
    }
    rendered = table(resource, [obj], now=NOW, resource_version="7")
    assert rendered["kind"] == "Table" and rendered["apiVersion"] == "meta.k8s.io/v1"
    names = [c["name"] for c in rendered["columnDefinitions"]]
    assert names == ["Name", "Cards", "Latency", "Model", "Age"]
    assert [c["priority"] for c in rendered["columnDefinitions"]] == [0, 0, 0, 1, 0]
    assert rendered["rows"][0]["cells"] == ["t", 8, 3.717, "bigscience/bloomz", "60m"]
    assert rendered["rows"][0]["object"]["kind"] == "PartialObjectMetadata"
    assert table(resource, [obj], now=NOW, headers=False)["columnDefinitions"] == []


def test_pod_table_reports_ready_status_and_restarts() -> None:
    pods = ResourceType("", "v1", "pods", "Pod", True)
    pod = {
        "metadata": {"name": "p", "creationTimestamp": "2026-01-01T11:59:00Z"},
        "spec": {"containers": [{"name": "runtime"}]},
        "status": {
            "phase": "Running",
            "containerStatuses": [
                {
                    "name": "runtime",
                    "ready": False,
                    "restartCount": 2,
                    "state": {"waiting": {"reason": "CrashLoopBackOff"}},
                }
            ],
        },
    }
    cells = table(pods, [pod], now=NOW)["rows"][0]["cells"]
    assert cells[:5] == ["p", "0/1", "CrashLoopBackOff", 2, "60s"]


def test_version_priority_prefers_ga_then_beta_then_alpha() -> None:
    assert sorted(["v1alpha1", "v2", "v1beta2", "v1", "v1beta1"], key=version_priority) == [
        "v2", "v1", "v1beta2", "v1beta1", "v1alpha1",
    ]  # fmt: skip


# ----- the store
def new_store(**kwargs: Any) -> tuple[ObjectStore, ResourceType]:
    store = ObjectStore(**kwargs)
    namespaces = store.find_type("", "v1", "namespaces")
    pods = store.find_type("", "v1", "pods")
    assert namespaces is not None and pods is not None
    store.create(namespaces, None, {"metadata": {"name": "ns"}})
    return store, pods


def test_store_resumes_watches_from_history_and_expires_old_versions() -> None:
    store, pods = new_store(history_limit=3)
    start = store.revision
    store.create(pods, "ns", {"metadata": {"name": "a"}})
    store.create(pods, "ns", {"metadata": {"name": "b"}})
    events = store.events_since(pods.storage_key, start)
    assert [(e.type, e.obj["metadata"]["name"]) for e in events] == [("ADDED", "a"), ("ADDED", "b")]
    for name in "cde":
        store.create(pods, "ns", {"metadata": {"name": name}})
    with pytest.raises(ApiError) as caught:
        store.events_since(pods.storage_key, start)
    assert caught.value.code == 410
    assert len(store.events_since(pods.storage_key, store.revision - 2)) == 2


def test_store_notifies_listeners_synchronously_and_unsubscribes() -> None:
    store, pods = new_store()
    seen: list[str] = []
    unsubscribe = store.subscribe(lambda event: seen.append(event.type))
    store.create(pods, "ns", {"metadata": {"name": "a"}})
    store.update(pods, "ns", "a", lambda obj: {**obj, "metadata": {**obj["metadata"], "labels": {"x": "y"}}})
    store.delete(pods, "ns", "a")
    unsubscribe()
    store.create(pods, "ns", {"metadata": {"name": "b"}})
    assert seen == ["ADDED", "MODIFIED", "DELETED"]


def test_store_dry_run_changes_nothing() -> None:
    store, pods = new_store()
    revision = store.revision
    created = store.create(pods, "ns", {"metadata": {"name": "a"}}, dry_run=True)
    assert created["metadata"]["name"] == "a" and store.revision == revision
    assert store.list_objects(pods, "ns") == []


def test_store_garbage_collection_keeps_dependents_with_another_live_owner() -> None:
    store, pods = new_store()
    first = store.create(pods, "ns", {"metadata": {"name": "owner-1"}})
    second = store.create(pods, "ns", {"metadata": {"name": "owner-2"}})
    refs = [
        {"uid": first["metadata"]["uid"], "name": "owner-1"},
        {"uid": second["metadata"]["uid"], "name": "owner-2"},
    ]
    store.create(pods, "ns", {"metadata": {"name": "shared", "ownerReferences": refs}})
    store.delete(pods, "ns", "owner-1")
    shared = store.get(pods, "ns", "shared")
    assert [ref["name"] for ref in shared["metadata"]["ownerReferences"]] == ["owner-2"]
    store.delete(pods, "ns", "owner-2")
    assert store.list_objects(pods, "ns") == []


def test_the_project_crd_registers_bloomzinferences_with_its_printer_columns() -> None:
    crds = load_crds([REPO / "crds" / "bloomzinferences.inference.bloomz.dev.yaml"])
    store = ObjectStore()
    store.create(CRD_RESOURCE, None, crds[0])
    resource = store.find_type("inference.bloomz.dev", "v1alpha1", "bloomzinferences")
    assert resource is not None and resource.kind == "BloomzInference" and resource.namespaced
    assert "bloomz" in resource.short_names and resource.has_status_subresource
    columns = [c["name"] for c in table(resource, [], now=NOW)["columnDefinitions"]]
    assert {"Device", "Cards", "Ready", "TPOT-ms", "TTFT-ms", "Latency-s", "Age"} <= set(columns)


def test_openapi_documents_offer_field_validation_and_crd_schemas() -> None:
    schema = {"type": "object", "properties": {"spec": {"type": "object"}}}
    thing = ResourceType("g.dev", "v1", "things", "Thing", True, custom=True, schema=schema)
    node = ResourceType("", "v1", "nodes", "Node", False)
    index = index_document([thing, node])["paths"]
    assert set(index) == {"api/v1", "apis/g.dev/v1"}
    assert index["apis/g.dev/v1"]["serverRelativeURL"].startswith("/openapi/v3/apis/g.dev/v1?hash=")

    document = group_version_document([thing])
    patch = document["paths"]["/apis/g.dev/v1/namespaces/{namespace}/things/{name}"]["patch"]
    assert patch["x-kubernetes-group-version-kind"] == {"group": "g.dev", "version": "v1", "kind": "Thing"}
    assert {"name": "fieldValidation", "in": "query"}.items() <= patch["parameters"][2].items()
    published = document["components"]["schemas"]["dev.g.v1.Thing"]
    assert published["properties"] == schema["properties"]
    assert published["x-kubernetes-group-version-kind"] == [
        {"group": "g.dev", "version": "v1", "kind": "Thing"}
    ]
    assert "/api/v1/nodes/{name}" in group_version_document([node])["paths"]
    assert group_version_document([node])["components"]["schemas"] == {}


def test_watch_translation_follows_namespaces_and_selector_transitions() -> None:
    pods = ResourceType("", "v1", "pods", "Pod", True)
    selected = label_matcher("app=bloomz")

    def event(
        kind: str, labels: dict[str, str], old_labels: dict[str, str] | None, ns: str = "a"
    ) -> WatchEvent:
        obj = {
            "apiVersion": "v1",
            "kind": "Pod",
            "metadata": {"name": "p", "namespace": ns, "labels": labels},
        }
        old = (
            None if old_labels is None else {"metadata": {"name": "p", "namespace": ns, "labels": old_labels}}
        )
        return WatchEvent(kind, pods.storage_key, obj, old, 7)

    def seen(watched: WatchEvent, namespace: str | None = "a") -> list[str]:
        return [kind for kind, _ in translate(watched, pods, namespace, selected)]

    assert seen(event("ADDED", {"app": "bloomz"}, None)) == ["ADDED"]
    assert seen(event("ADDED", {"app": "other"}, None)) == []
    assert seen(event("MODIFIED", {"app": "bloomz"}, {"app": "bloomz"})) == ["MODIFIED"]
    assert seen(event("MODIFIED", {"app": "bloomz"}, {"app": "other"})) == ["ADDED"]
    assert seen(event("MODIFIED", {"app": "other"}, {"app": "bloomz"})) == ["DELETED"]
    assert seen(event("DELETED", {"app": "bloomz"}, None)) == ["DELETED"]
    assert seen(event("ADDED", {"app": "bloomz"}, None, ns="b")) == []
    assert seen(event("ADDED", {"app": "bloomz"}, None, ns="b"), namespace=None) == ["ADDED"]
    services = ResourceType("", "v1", "services", "Service", True)
    assert translate(event("ADDED", {"app": "bloomz"}, None), services, "a", selected) == []


# Bodies captured from kubectl 1.35: create namespace pbns; create secret generic s1 --from-literal=token=xyz;
# create service clusterip svc1 --tcp=80:8080.
KUBECTL_PROTOBUF = {
    "Namespace": "6b3873000a0f0a02763112094e616d657370616365121c0a140a0470626e7312001a0022002a003200380042"
    "0012001a020a001a002200",
    "Secret": "6b3873000a0c0a027631120653656372657412240a120a02733112001a0022002a00320038004200120c0a05746f6b"
    "656e120378797a1a001a002200",
    "Service": "6b3873000a0d0a027631120753657276696365126c0a210a047376633112001a0022002a003200380042005a0b0a"
    "0361707012047376633112430a1b0a0738302d38303830120354435018502207080010903f1a002800120b0a0361707012047376"
    "63311a002209436c757374657249503a00420052005a00600068001a020a001a002200",
}


def test_protobuf_bodies_of_kubectl_typed_clients_decode_to_json() -> None:
    assert decode_object(bytes.fromhex(KUBECTL_PROTOBUF["Namespace"])) == {
        "apiVersion": "v1",
        "kind": "Namespace",
        "metadata": {"name": "pbns"},
    }
    secret = decode_object(bytes.fromhex(KUBECTL_PROTOBUF["Secret"]))
    assert secret["data"] == {"token": "eHl6"}  # base64 of "xyz", as in JSON
    service = decode_object(bytes.fromhex(KUBECTL_PROTOBUF["Service"]))
    assert service["metadata"] == {"name": "svc1", "labels": {"app": "svc1"}}
    assert service["spec"] == {
        "ports": [{"name": "80-8080", "protocol": "TCP", "port": 80, "targetPort": 8080}],
        "selector": {"app": "svc1"},
        "type": "ClusterIP",
    }


def test_protobuf_bodies_of_other_kinds_are_unsupported_media() -> None:
    body = bytearray(bytes.fromhex(KUBECTL_PROTOBUF["Namespace"]))
    body = body.replace(b"Namespace", b"Namespaze")
    with pytest.raises(ApiError) as caught:
        decode_object(bytes(body))
    assert caught.value.code == 415
    with pytest.raises(ApiError) as caught:
        decode_object(b"not protobuf")
    assert caught.value.code == 400


def test_create_defaults_reset_status_like_a_real_server() -> None:
    def prepared(resource: ResourceType, obj: dict[str, Any]) -> dict[str, Any]:
        prepare_for_create(resource, obj, now="2026-01-01T00:00:00Z", cluster_ip=lambda: "10.96.0.7")
        return obj

    pods = ResourceType("", "v1", "pods", "Pod", True, subresources=("status",))
    assert prepared(pods, {"status": {"phase": "Running"}})["status"] == {"phase": "Pending"}
    services = ResourceType("", "v1", "services", "Service", True, subresources=("status",))
    service = prepared(services, {"spec": {"ports": [{"port": 50051, "name": "grpc"}]}})
    assert service["spec"] == {
        "type": "ClusterIP",
        "clusterIP": "10.96.0.7",
        "ports": [{"port": 50051, "name": "grpc", "protocol": "TCP", "targetPort": 50051}],
    }
    assert prepared(services, {"spec": {"clusterIP": "None"}})["spec"]["clusterIP"] == "None"
    things = ResourceType("g.dev", "v1", "things", "Thing", True, subresources=("status",), custom=True)
    assert "status" not in prepared(things, {"spec": {}, "status": {"phase": "Fake"}})
    crd = prepared(
        CRD_RESOURCE, {"spec": {"names": {"plural": "things"}, "versions": [{"name": "v1", "storage": True}]}}
    )
    assert crd["status"]["storedVersions"] == ["v1"]
    assert {c["type"]: c["status"] for c in crd["status"]["conditions"]} == {
        "NamesAccepted": "True",
        "Established": "True",
    }


@pytest.mark.parametrize(
    ("plural", "name", "valid"),
    [
        ("pods", "bloomz-7b1-3f2a-0", True),
        ("pods", "a.b.c", True),
        ("pods", "Upper", False),
        ("pods", "x" * 254, False),
        ("services", "bloomz-7b1", True),
        ("services", "7b1", False),  # a Service name must start with a letter (DNS-1035)
        ("services", "a.b", False),
        ("services", "s" * 64, False),
        ("namespaces", "team-a", True),
        ("namespaces", "team.a", False),
    ],
)
def test_names_follow_kubernetes_rules(plural: str, name: str, valid: bool) -> None:
    resource = ResourceType("", "v1", plural, plural.title(), plural != "namespaces")
    assert (name_problem(resource, name) is None) is valid


def test_label_and_annotation_rules() -> None:
    good = {
        "labels": {
            "app.kubernetes.io/name": "bloomz-runtime",
            "inference.bloomz.dev/template-hash": "1a2b",
            "e": "",
        },
        "annotations": {"inference.bloomz.dev/benchmark": "now, with any value: it is free text"},
    }
    assert metadata_problems(good) == []
    assert len(metadata_problems({"labels": {"a": "has space"}})) == 1
    assert len(metadata_problems({"labels": {"a": "v" * 64}})) == 1
    assert len(metadata_problems({"labels": {"Bad_Prefix/x": "v"}})) == 1
    assert len(metadata_problems({"labels": {"-x": "v"}})) == 1
    assert len(metadata_problems({"annotations": {"a/b/c": "v"}})) == 1
