"""End to end in the sandbox: the model cache. The operator installed from its chart (its RBAC enforced),
a local Hub serving the tiny checkpoint, real download Jobs run as local processes by the Job controller
and the pod runner, real runtime processes, real kubectl.

Order matters: a resource with spec.cache -> one download Job -> ModelCached True with the bytes -> the
runtime pod starts offline -> Ready with a latency; a second resource on the same PVC and model shares the
download; an unknown repository -> ModelCached False with the Hub's 404 and no runtime pod.
"""

from __future__ import annotations

import json
import shutil
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import yaml
from bloomz_sandbox.stack import Sandbox, SandboxOptions

pytestmark = pytest.mark.slow

REPO = Path(__file__).resolve().parents[2]
EXAMPLE = REPO / "examples" / "bloomz-cpu-cache.yaml"
HUB_REPO = "sandbox/bloomz-tiny"
FIRST, SECOND, MISSING = "cached-a", "cached-b", "cached-missing"
CLAIM = "shared-models"
WAIT_S = 420.0  # generous: 2 shared cores, other test suites running at the same time
OPERATOR_USER = "system:serviceaccount:bloomz-system:bloomz-operator"


@pytest.fixture(scope="module")
def sandbox(tmp_path_factory: pytest.TempPathFactory, tiny_checkpoint: Path) -> Iterator[Sandbox]:
    workdir = tmp_path_factory.mktemp("sandbox-cache")
    shutil.copytree(tiny_checkpoint, workdir / "hub" / HUB_REPO)
    stack = Sandbox(SandboxOptions(workdir=workdir, backoff_max_seconds=5.0))
    stack.start()
    try:
        yield stack
    finally:
        stack.stop()


def apply(sandbox: Sandbox, name: str, model: str, *, size: str | None, benchmark: bool) -> None:
    body = yaml.safe_load(EXAMPLE.read_text())
    body["metadata"]["name"] = name
    body["spec"].update(model=model, modelRevision="main")
    body["spec"]["benchmark"]["enabled"] = benchmark
    body["spec"]["cache"] = {"claimName": CLAIM, **({"size": size} if size else {})}
    path = sandbox.workdir / f"{name}.yaml"
    path.write_text(yaml.safe_dump(body))
    sandbox.kubectl("apply", "--validate=false", "-f", str(path))


def condition(sandbox: Sandbox, name: str, kind: str) -> dict[str, Any]:
    resource = sandbox.get_resource(name) or {}
    found = [c for c in (resource.get("status") or {}).get("conditions") or () if c["type"] == kind]
    return found[0] if found else {}


def jobs(sandbox: Sandbox) -> list[dict[str, Any]]:
    return list(json.loads(sandbox.kubectl("get", "jobs", "-o", "json").stdout)["items"])


def runtime_pods(sandbox: Sandbox, name: str) -> list[dict[str, Any]]:
    return sandbox.list_pods(instance=name)


def test_a_cached_resource_downloads_once_then_starts_offline_and_is_ready(sandbox: Sandbox) -> None:
    apply(sandbox, FIRST, HUB_REPO, size="1Gi", benchmark=True)
    # No runtime pod while the model is not cached (checked on every poll until it is).
    seen_early_pod: list[str] = []

    def cached() -> dict[str, Any]:
        cond = condition(sandbox, FIRST, "ModelCached")
        if cond.get("status") != "True" and runtime_pods(sandbox, FIRST):
            seen_early_pod.append(cond.get("reason", ""))
        return cond if cond.get("status") == "True" else {}

    cond = sandbox.wait_for("ModelCached True", cached, WAIT_S)
    assert not seen_early_pod
    status = sandbox.get_resource(FIRST)["status"]  # type: ignore[index]
    size = sum(p.stat().st_size for p in (sandbox.workdir / "hub" / HUB_REPO).iterdir() if p.is_file())
    assert status["modelCache"]["bytesDone"] == status["modelCache"]["bytesTotal"] == size
    assert cond["reason"] == "Downloaded" and f"{HUB_REPO}@main in PVC {CLAIM}" in cond["message"]
    (job,) = jobs(sandbox)
    assert job["metadata"]["name"] == status["modelCache"]["job"]
    assert job["metadata"]["ownerReferences"][0]["name"] == FIRST
    # The download pod ran the runtime's entry point against the local Hub and printed its progress.
    (download,) = [
        p["metadata"]["name"]
        for p in sandbox.list_pods()
        if p["metadata"]["labels"].get("batch.kubernetes.io/job-name") == job["metadata"]["name"]
    ]
    log = sandbox.kubectl("logs", download).stdout
    assert '"event":"done"' in log and '"event":"progress"' in log
    pvc = json.loads(sandbox.kubectl("get", "pvc", CLAIM, "-o", "json").stdout)
    assert pvc["metadata"]["ownerReferences"][0]["name"] == FIRST
    files = sum(1 for p in (sandbox.workdir / "hub" / HUB_REPO).iterdir() if p.is_file())
    downloads = [r for r in sandbox.hub.requests if r[0] == "GET" and "/resolve/" in r[1]]  # type: ignore[union-attr]
    assert len(downloads) == files

    def ready() -> dict[str, Any] | None:
        resource = sandbox.get_resource(FIRST) or {}
        latency = (resource.get("status") or {}).get("latency") or {}
        ok = condition(sandbox, FIRST, "Ready").get("status") == "True" and latency.get("seconds")
        return resource if ok else None

    sandbox.wait_for("Ready with a latency", ready, WAIT_S)
    (pod,) = runtime_pods(sandbox, FIRST)
    env = {e["name"]: e.get("value") for e in pod["spec"]["containers"][0]["env"]}
    assert env["HF_HUB_OFFLINE"] == "1" and env["HF_HOME"] == "/model-cache/huggingface"


def test_a_second_resource_on_the_same_pvc_and_model_shares_the_download(sandbox: Sandbox) -> None:
    before = len(sandbox.hub.requests)  # type: ignore[union-attr]
    apply(sandbox, SECOND, HUB_REPO, size=None, benchmark=False)
    sandbox.wait_for(
        "the second resource's pod Ready",
        lambda: condition(sandbox, SECOND, "Ready").get("status") == "True",
        WAIT_S,
    )
    assert condition(sandbox, SECOND, "ModelCached")["status"] == "True"
    assert len(jobs(sandbox)) == 1  # no second Job
    assert not [r for r in sandbox.hub.requests[before:] if "/resolve/" in r[1]]  # type: ignore[union-attr]
    sandbox.kubectl("delete", "bloomz", SECOND, "--wait=false")


def test_an_unknown_repository_fails_with_the_hubs_404_and_starts_no_runtime_pod(sandbox: Sandbox) -> None:
    apply(sandbox, MISSING, "nobody/missing-model", size=None, benchmark=False)
    cond = sandbox.wait_for(
        "ModelCached RepoNotFound",
        lambda: (c := condition(sandbox, MISSING, "ModelCached")).get("reason") == "RepoNotFound" and c,
        WAIT_S,
    )
    assert cond["status"] == "False" and "404" in cond["message"]
    assert (sandbox.get_resource(MISSING) or {})["status"]["phase"] == "Failed"
    assert runtime_pods(sandbox, MISSING) == []

    def job_reasons() -> list[str]:
        (job,) = [
            j
            for j in jobs(sandbox)
            if j["metadata"]["annotations"]["inference.bloomz.dev/model"] == "nobody/missing-model"
        ]
        return [c["reason"] for c in job.get("status", {}).get("conditions") or ()]

    # The operator reads the pod's permanent exit code and may report before the Job controller marks the
    # Job: wait for the controller's verdict too.
    sandbox.wait_for("the Job failed by its pod failure policy", lambda: job_reasons() != [], WAIT_S)
    assert job_reasons() == ["PodFailurePolicy"]
    # Everything above ran with the chart's RBAC: nothing the operator asked for was refused.
    refused = [r for r in sandbox.apiserver.audit_log if r.user == OPERATOR_USER and r.code in (401, 403)]
    assert refused == []
    for name in (FIRST, MISSING):
        sandbox.kubectl("delete", "bloomz", name, "--wait=false")
    sandbox.wait_for(
        "no runtime pod left",
        lambda: not runtime_pods(sandbox, FIRST) + runtime_pods(sandbox, MISSING),
        WAIT_S,
    )
