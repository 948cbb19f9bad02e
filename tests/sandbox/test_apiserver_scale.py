"""The emulator's `/scale` subresource for custom resources that declare it (the project's own CRD), driven by
real clients: `kubectl scale`, the kubernetes library and raw HTTP (PUT, merge and JSON patches, errors)."""

from __future__ import annotations

import json
import os
import subprocess
import urllib.error
import urllib.request
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import kubernetes.client as k8s
import pytest
from bloomz_sandbox.apiserver import SandboxAPIServer

REPO = Path(__file__).resolve().parents[2]
KUBECTL = REPO / ".tools" / "bin" / "kubectl"
CRD = REPO / "crds" / "bloomzinferences.inference.bloomz.dev.yaml"
GROUP, VERSION, PLURAL = "inference.bloomz.dev", "v1alpha1", "bloomzinferences"
BASE = f"/apis/{GROUP}/{VERSION}/namespaces/default/{PLURAL}"


@pytest.fixture(scope="module")
def api() -> Iterator[SandboxAPIServer]:
    with SandboxAPIServer(crd_paths=[CRD]) as server:
        yield server


@pytest.fixture
def custom(api: SandboxAPIServer) -> k8s.CustomObjectsApi:
    return k8s.CustomObjectsApi(api.api_client())


def call(
    api: SandboxAPIServer, method: str, path: str, body: Any = None, content_type: str = "application/json"
) -> tuple[int, Any]:
    data = None if body is None else json.dumps(body).encode()
    request = urllib.request.Request(api.url + path, data=data, method=method)
    if data is not None:
        request.add_header("Content-Type", content_type)
    try:
        with urllib.request.urlopen(request, timeout=30) as response:
            return response.status, json.loads(response.read())
    except urllib.error.HTTPError as error:
        return error.code, json.loads(error.read() or b"null")


def make(custom: k8s.CustomObjectsApi, name: str, replicas: int = 1) -> dict[str, Any]:
    body = {
        "apiVersion": f"{GROUP}/{VERSION}",
        "kind": "BloomzInference",
        "metadata": {"name": name},
        "spec": {"model": "/models/tiny", "device": "cpu", "replicas": replicas},
    }
    created: dict[str, Any] = custom.create_namespaced_custom_object(GROUP, VERSION, "default", PLURAL, body)
    custom.patch_namespaced_custom_object_status(
        GROUP, VERSION, "default", PLURAL, name, {"status": {"replicas": 1, "selector": "a=b,c=d"}}
    )
    return created


def test_discovery_serves_the_scale_subresource_as_autoscaling_v1(api: SandboxAPIServer) -> None:
    code, body = call(api, "GET", f"/apis/{GROUP}/{VERSION}")
    assert code == 200
    entry = next(r for r in body["resources"] if r["name"] == f"{PLURAL}/scale")
    assert (entry["group"], entry["version"], entry["kind"]) == ("autoscaling", "v1", "Scale")
    assert sorted(entry["verbs"]) == ["get", "patch", "update"]


def test_kubectl_scale_writes_spec_replicas_and_bumps_the_generation(
    api: SandboxAPIServer, custom: k8s.CustomObjectsApi, tmp_path: Path
) -> None:
    created = make(custom, "scaled")
    kubeconfig = api.write_kubeconfig(tmp_path / "kubeconfig")
    result = subprocess.run(
        [str(KUBECTL), "scale", "bloomz/scaled", "--replicas=3", "--cache-dir", str(tmp_path / "cache")],
        capture_output=True,
        text=True,
        timeout=60,
        env={**os.environ, "KUBECONFIG": str(kubeconfig)},
    )
    assert result.returncode == 0, result.stderr
    assert "bloomzinference.inference.bloomz.dev/scaled scaled" in result.stdout
    after = custom.get_namespaced_custom_object(GROUP, VERSION, "default", PLURAL, "scaled")
    assert after["spec"]["replicas"] == 3 and after["spec"]["model"] == "/models/tiny"
    assert after["metadata"]["generation"] == created["metadata"]["generation"] + 1
    assert after["status"] == {"replicas": 1, "selector": "a=b,c=d"}  # the scale never writes status

    code, scale = call(api, "GET", f"{BASE}/scaled/scale")
    assert code == 200
    assert scale["apiVersion"] == "autoscaling/v1" and scale["kind"] == "Scale"
    assert scale["spec"] == {"replicas": 3}
    assert scale["status"] == {"replicas": 1, "selector": "a=b,c=d"}
    assert scale["metadata"]["resourceVersion"] == after["metadata"]["resourceVersion"]


def test_put_and_patches_of_the_scale(api: SandboxAPIServer, custom: k8s.CustomObjectsApi) -> None:
    make(custom, "verbs")
    code, scale = call(api, "GET", f"{BASE}/verbs/scale")
    scale["spec"]["replicas"] = 0
    code, body = call(api, "PUT", f"{BASE}/verbs/scale", scale)
    assert code == 200 and body["spec"]["replicas"] == 0
    code, body = call(api, "PUT", f"{BASE}/verbs/scale", scale)  # its resourceVersion is stale now
    assert code == 409 and body["reason"] == "Conflict"

    patch = [{"op": "replace", "path": "/spec/replicas", "value": 2}]
    code, body = call(api, "PATCH", f"{BASE}/verbs/scale", patch, "application/json-patch+json")
    assert code == 200 and body["spec"]["replicas"] == 2
    merge = {"spec": {"replicas": 4}}
    code, body = call(api, "PATCH", f"{BASE}/verbs/scale?dryRun=All", merge, "application/merge-patch+json")
    assert code == 200 and body["spec"]["replicas"] == 4
    current = custom.get_namespaced_custom_object(GROUP, VERSION, "default", PLURAL, "verbs")
    assert current["spec"]["replicas"] == 2  # the dry run changed nothing

    code, body = call(
        api, "PATCH", f"{BASE}/verbs/scale", {"spec": {"replicas": -1}}, "application/merge-patch+json"
    )
    assert code == 422 and "greater than or equal to 0" in body["message"]
    code, body = call(
        api, "PATCH", f"{BASE}/verbs/scale", {"spec": {"replicas": "2"}}, "application/merge-patch+json"
    )
    assert code == 422 and "must be an integer" in body["message"]
    code, body = call(api, "PATCH", f"{BASE}/verbs/scale", merge, "application/strategic-merge-patch+json")
    assert code == 415


def test_scale_of_a_missing_object_or_a_resource_without_it_is_not_found(api: SandboxAPIServer) -> None:
    assert call(api, "GET", f"{BASE}/absent/scale")[0] == 404
    assert call(api, "GET", "/api/v1/namespaces/default/pods/absent/scale")[0] == 404
