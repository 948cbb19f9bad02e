"""The model cache's pure parts: spec parsing, the PVC and Job builders, the sharing key, the download
state read from a Job, its pods and the log, the ModelCached condition; the runtime pods' offline mount."""

from __future__ import annotations

import json
from typing import Any

import pytest
from bloomz_operator.builders import Owner, build_pod_spec
from bloomz_operator.cache import (
    ANNOTATION_REVISION,
    LABEL_CACHE_KEY,
    PERMANENT_EXIT_CODE,
    DownloadState,
    build_cache_pvc,
    build_download_job,
    cache_key,
    condition_of,
    download_state,
    job_name,
    last_event,
    shareable,
    with_transition,
)
from bloomz_operator.settings import Settings
from bloomz_operator.spec import SpecError, parse_spec

OWNER = Owner(name="bloomz", namespace="ml", uid="uid-1")
SETTINGS = Settings(hub_endpoint="http://hub.internal:8080")


def cached_spec(**cache: Any) -> dict[str, Any]:
    return {
        "model": "bigscience/bloomz-7b1",
        "device": "cpu",
        "modelRevision": "v1.0",
        "cache": {"claimName": "models", **cache},
    }


def test_spec_cache_defaults_and_refusals() -> None:
    parsed = parse_spec(cached_spec(size="40Gi"))
    assert parsed.cache is not None
    assert (parsed.cache.claim_name, parsed.cache.size, parsed.cache.access_mode) == (
        "models",
        "40Gi",
        "ReadWriteMany",
    )
    assert parsed.cache.mount_path == "/model-cache"
    with pytest.raises(SpecError, match="exclude each other"):
        parse_spec({**cached_spec(), "storage": {"pvc": {"claimName": "x"}}})
    with pytest.raises(SpecError, match="Hub id"):
        parse_spec({**cached_spec(), "model": "/models/bloomz"})
    with pytest.raises(SpecError, match="claimName"):
        parse_spec({**cached_spec(), "cache": {"size": "1Gi"}})


def test_one_key_per_pvc_model_and_revision() -> None:
    key = cache_key("ml", "models", "m", "main")
    assert key == cache_key("ml", "models", "m", "main") and len(key) == 12
    others = [("ml", "other", "m", "main"), ("ml", "models", "m", "v2"), ("ml", "models", "n", "main")]
    others.append(("ai", "models", "m", "main"))
    assert len({key, *(cache_key(*o) for o in others)}) == 5
    assert job_name(key) == f"bloomz-download-{key}" and len(job_name(key)) <= 63


def test_the_created_pvc_is_owned_and_sized() -> None:
    spec = parse_spec(cached_spec(size="40Gi", storageClassName="fast", accessMode="ReadWriteOnce"))
    assert spec.cache is not None
    pvc = build_cache_pvc(OWNER, spec.cache)
    assert pvc["metadata"]["name"] == "models"
    assert pvc["metadata"]["ownerReferences"][0]["uid"] == "uid-1"
    assert pvc["spec"] == {
        "accessModes": ["ReadWriteOnce"],
        "resources": {"requests": {"storage": "40Gi"}},
        "storageClassName": "fast",
    }


def test_the_download_job_runs_the_runtime_image_against_the_hub_endpoint() -> None:
    spec = parse_spec(
        {**cached_spec(), "env": [{"name": "HF_TOKEN", "value": "t"}, {"name": "X", "value": "y"}]}
    )
    job = build_download_job(OWNER, spec, SETTINGS)
    key = cache_key("ml", "models", "bigscience/bloomz-7b1", "v1.0")
    assert job["metadata"]["name"] == job_name(key)
    assert job["metadata"]["labels"][LABEL_CACHE_KEY] == key
    assert job["metadata"]["annotations"][ANNOTATION_REVISION] == "v1.0"
    pod = job["spec"]["template"]["spec"]
    container = pod["containers"][0]
    assert container["image"] == SETTINGS.device("cpu").image
    assert container["command"] + container["args"] == [
        "python3", "-m", "bloomz_runtime.download", "--model", "bigscience/bloomz-7b1", "--revision", "v1.0",
    ]  # fmt: skip
    env = {e["name"]: e["value"] for e in container["env"]}
    assert env["HF_ENDPOINT"] == "http://hub.internal:8080" and env["HF_HOME"] == "/model-cache/huggingface"
    assert env["HF_TOKEN"] == "t" and "X" not in env
    assert env["HF_HUB_OFFLINE"] == "0"
    assert container["terminationMessagePolicy"] == "FallbackToLogsOnError"
    assert container["volumeMounts"] == [{"name": "model-cache", "mountPath": "/model-cache"}]
    assert pod["volumes"] == [{"name": "model-cache", "persistentVolumeClaim": {"claimName": "models"}}]
    assert pod["restartPolicy"] == "Never" and pod["automountServiceAccountToken"] is False
    rule = job["spec"]["podFailurePolicy"]["rules"][0]
    assert rule["action"] == "FailJob" and rule["onExitCodes"]["values"] == [PERMANENT_EXIT_CODE]
    # Without a revision the Job fetches the default branch (no flag), and the key says "main".
    plain = build_download_job(OWNER, parse_spec({**cached_spec(), "modelRevision": None}), Settings())
    assert "--revision" not in plain["spec"]["template"]["spec"]["containers"][0]["args"]
    assert "HF_ENDPOINT" not in json.dumps(plain)
    assert plain["metadata"]["name"] == job_name(cache_key("ml", "models", "bigscience/bloomz-7b1", "main"))


def test_runtime_pods_mount_the_cache_read_only_and_stay_offline() -> None:
    pod = build_pod_spec(parse_spec(cached_spec()), Settings())
    container = pod["containers"][0]
    env = {e["name"]: e.get("value") for e in container["env"]}
    assert env["HF_HUB_OFFLINE"] == "1" and env["HF_HOME"] == "/model-cache/huggingface"
    assert {"name": "model-cache", "mountPath": "/model-cache", "readOnly": True} in container["volumeMounts"]
    assert {"name": "model-cache", "persistentVolumeClaim": {"claimName": "models", "readOnly": True}} in pod[
        "volumes"
    ]
    assert "--revision" in container["args"]  # the runtime resolves the same revision from the cache


def test_only_our_jobs_for_the_same_key_are_shared() -> None:
    job = build_download_job(OWNER, parse_spec(cached_spec()), SETTINGS)
    key = job["metadata"]["labels"][LABEL_CACHE_KEY]
    assert shareable(job, key)
    assert not shareable(job, "other")
    planted = json.loads(json.dumps(job))
    planted["metadata"]["ownerReferences"] = []
    assert not shareable(planted, key)
    other_kind = json.loads(json.dumps(job))
    other_kind["metadata"]["ownerReferences"][0]["kind"] = "Deployment"
    assert not shareable(other_kind, key)


def pod(phase: str, exit_code: int | None = None, message: str = "", created: str = "1") -> dict[str, Any]:
    status: dict[str, Any] = {"phase": phase}
    if exit_code is not None:
        terminated = {"exitCode": exit_code, **({"message": message} if message else {})}
        status["containerStatuses"] = [{"name": "download", "state": {"terminated": terminated}}]
    return {"metadata": {"name": f"p{created}", "creationTimestamp": created}, "status": status}


def job_with(condition: str | None, reason: str = "") -> dict[str, Any]:
    conditions = [{"type": condition, "status": "True", "reason": reason}] if condition else []
    return {"status": {"conditions": conditions}}


PROGRESS = '{"event":"progress","bytesDone":512,"bytesTotal":2048,"files":3}\n'
FAILED = '{"event":"failed","reason":"RepoNotFound","status":404,"message":"Repository Not Found"}'


def test_download_state_from_the_job_its_pods_and_the_log() -> None:
    assert download_state(job_with(None), []) == DownloadState("Pending")
    assert download_state(job_with(None), [pod("Running")], "noise\n" + PROGRESS) == DownloadState(
        "Downloading", 512, 2048
    )
    done = '{"event":"done","bytesDone":2048,"bytesTotal":2048,"files":3}'
    assert download_state(job_with("Complete"), [pod("Succeeded", 0)], done) == DownloadState(
        "Succeeded", 2048, 2048
    )
    assert download_state(job_with(None), [pod("Succeeded", 0)], done).phase == "Succeeded"
    # The reason comes from the failed pod's termination message (its last log lines).
    failed = download_state(job_with("Failed", "PodFailurePolicy"), [pod("Failed", 2, PROGRESS + FAILED)])
    assert (failed.phase, failed.reason, failed.message) == (
        "Failed",
        "RepoNotFound",
        "404 Repository Not Found",
    )
    early = download_state(job_with(None), [pod("Failed", PERMANENT_EXIT_CODE, FAILED)])
    assert (early.phase, early.reason) == ("Failed", "RepoNotFound")
    assert download_state(job_with(None), [pod("Failed", 1, FAILED)]).phase == "Pending"  # retried
    # No message (an image that printed nothing): the Job's own reason.
    bare = download_state(job_with("Failed", "BackoffLimitExceeded"), [pod("Failed", 1)])
    assert (bare.phase, bare.reason) == ("Failed", "BackoffLimitExceeded")
    assert last_event("not json\n{broken\n") is None


def test_the_model_cached_condition_reads_like_kubectl_describe() -> None:
    what = "m@main in PVC models"
    downloading = condition_of(DownloadState("Downloading", 3 * 2**30, 12 * 2**30), what, "job-1")
    assert downloading == {
        "status": "False",
        "reason": "Downloading",
        "message": "m@main in PVC models: 3.0 GiB of 12.0 GiB (25 %) (Job job-1)",
    }
    cached = condition_of(DownloadState("Succeeded", 2048, 2048), what, "job-1")
    assert cached["status"] == "True" and cached["message"].startswith("2.0 KiB of m@main")
    failed = condition_of(
        DownloadState("Failed", reason="GatedRepo", message="401 restricted"), what, "job-1"
    )
    assert (failed["reason"], failed["message"]) == (
        "GatedRepo",
        "m@main in PVC models: 401 restricted (Job job-1)",
    )
    assert condition_of(DownloadState("Pending"), what, "job-1")["reason"] == "DownloadPending"
    first = with_transition(downloading, [], "t1")
    assert with_transition(downloading, [first], "t2")["lastTransitionTime"] == "t1"
    assert with_transition(cached, [first], "t3")["lastTransitionTime"] == "t3"


@pytest.mark.parametrize(
    "extra",
    [
        {"device": "cpu", "cache": {"claimName": "models", "size": "40Gi", "storageClassName": "fast"}},
        {
            "device": "hpu",
            "cards": 8,
            "cache": {"claimName": "models", "size": "1Ti", "accessMode": "ReadWriteOnce"},
        },
        {"device": "cuda", "cards": 2, "cache": {"claimName": "models", "mountPath": "/hub"}},
        {"device": "hpu", "cards": 16, "cache": {"claimName": "models", "size": "1Ti"}},  # a two-node group
    ],
    ids=["cpu", "hpu-rwo", "cuda-existing-claim", "hpu-multinode"],
)
def test_the_job_the_pvc_and_cached_pods_match_the_kubernetes_schemas(extra: dict[str, Any]) -> None:
    """Strict: an unknown key anywhere (the pod failure policy, the termination message policy, a token taken
    from a Secret) is refused by the Kubernetes 1.31 schemas."""
    import kubernetes_validate
    from bloomz_operator.groups import build_replicas

    token = {"name": "HF_TOKEN", "valueFrom": {"secretKeyRef": {"name": "hf", "key": "token"}}}
    spec = parse_spec({**cached_spec(), **extra, "env": [token]})
    assert spec.cache is not None
    settings = Settings(hub_endpoint="https://hf-mirror.internal", image_pull_secrets=("registry",))
    job = build_download_job(OWNER, spec, settings)
    assert token in job["spec"]["template"]["spec"]["containers"][0]["env"]
    objects = [job]
    if spec.cache.size is not None:  # an existing claim is the user's: no PVC is built
        objects.append(build_cache_pvc(OWNER, spec.cache))
    pods = [pod for replica in build_replicas(OWNER, spec, settings) for pod in replica]
    assert len(pods) == max(1, spec.cards // spec.cards_per_node)
    for pod in pods:
        assert any("persistentVolumeClaim" in v for v in pod["spec"]["volumes"])
    for obj in objects + pods:
        kubernetes_validate.validate(obj, "1.31.0", strict=True)
