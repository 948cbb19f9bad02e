"""The model cache (`spec.cache`): the PVC, the download Job, and the `ModelCached` condition.

Rules (pure functions first, then `ensure_model_cached`, the only one that calls the API):
- The PVC is `cache.claimName`, used as it is; or, with `cache.size`, one the operator creates, owned by the
  resource. A PVC of that name that it did not create is then never used nor deleted: a `ResourceExists`
  conflict.
- One download Job per (namespace, PVC, model, revision), named `bloomz-download-<digest>`: resources that
  share the PVC and the model share the download. The first resource creates the Job and controls it
  (ownerReference); the others only read it and wait (a Job with our labels, controlled by a
  BloomzInference, for the same key). Nobody deletes it: it goes with its owner (garbage collection), and
  if that happens while another resource still waits, that one creates it again and the download resumes
  from the files already on the PVC.
- The Job runs the runtime image: `python3 -m bloomz_runtime.download` with `HF_HOME` on the PVC (and
  `HF_ENDPOINT` = the `hubEndpoint` setting). Progress is read from the pod's last log line (JSON); the
  failure reason from its termination message: with `terminationMessagePolicy: FallbackToLogsOnError` the
  kubelet copies a failed container's last log lines there, so the reason stays in the pod status (no log
  access needed once it has failed, no file to write: any image works).
- Runtime pods are created only once ModelCached is True (the reconciler holds every pod action until
  then); they mount the PVC read-only with `HF_HUB_OFFLINE=1`, so their startup budget covers loading only.
  A True condition for the same key is kept without reading the Job again (it may be gone).
"""

from __future__ import annotations

import hashlib
import json
import logging
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from . import pods as podview
from .builders import Owner, common_labels, owner_reference, security_contexts
from .cachemount import cache_volume, hf_home
from .constants import GROUP, KIND, LABEL_MANAGED_BY, MANAGER_NAME
from .kubeapi import KubeAPI
from .ownership import Conflict, conflict, controller_of
from .settings import Settings
from .spec import CacheSpec, InferenceSpec

CONDITION = "ModelCached"
DEFAULT_REVISION = "main"
JOB_PREFIX = "bloomz-download-"
LABEL_CACHE_KEY = f"{GROUP}/model-cache"
ANNOTATION_MODEL = f"{GROUP}/model"
ANNOTATION_REVISION = f"{GROUP}/revision"
ANNOTATION_CLAIM = f"{GROUP}/claim"
JOB_NAME_LABEL = "batch.kubernetes.io/job-name"  # set on a Job's pods by the Job controller
DOWNLOAD_CONTAINER = "download"
# Exit code 2 of the download: a failure a retry cannot fix (401/403/404, disk full): fail the Job at once.
PERMANENT_EXIT_CODE = 2
BACKOFF_LIMIT = 3  # network failures are retried this often


def revision_of(spec: InferenceSpec) -> str:
    return spec.model_revision or DEFAULT_REVISION


def cache_key(namespace: str, claim: str, model: str, revision: str) -> str:
    """The sharing key: one download per PVC, model and revision."""
    return hashlib.sha256(f"{namespace}/{claim}\0{model}\0{revision}".encode()).hexdigest()[:12]


def job_name(key: str) -> str:
    return f"{JOB_PREFIX}{key}"


def build_cache_pvc(owner: Owner, cache: CacheSpec) -> dict[str, Any]:
    spec: dict[str, Any] = {
        "accessModes": [cache.access_mode],
        "resources": {"requests": {"storage": cache.size}},
    }
    if cache.storage_class_name:
        spec["storageClassName"] = cache.storage_class_name
    return {
        "apiVersion": "v1",
        "kind": "PersistentVolumeClaim",
        "metadata": {
            "name": cache.claim_name,
            "namespace": owner.namespace,
            "labels": common_labels(owner.name),
            "ownerReferences": [owner_reference(owner)],
        },
        "spec": spec,
    }


def download_args(model: str, revision: str | None) -> list[str]:
    args = ["-m", "bloomz_runtime.download", "--model", model]
    return [*args, "--revision", revision] if revision else args


def build_download_job(owner: Owner, spec: InferenceSpec, settings: Settings) -> dict[str, Any]:
    """The Job that fills the cache (one per key; see the module docstring for who owns it)."""
    assert spec.cache is not None
    cache, claim = spec.cache, spec.cache.claim_name
    volume, mount = cache_volume(cache, read_only=False)
    revision = revision_of(spec)
    key = cache_key(owner.namespace, claim, spec.model, revision)
    device = settings.device(spec.device)
    env = [
        {"name": "HF_HOME", "value": hf_home(cache)},
        {"name": "HF_HUB_OFFLINE", "value": "0"},  # whatever the image sets: this pod is the one that fetches
        {"name": "PYTHONUNBUFFERED", "value": "1"},
    ]
    if settings.hub_endpoint:
        env.append({"name": "HF_ENDPOINT", "value": settings.hub_endpoint})
    # A Hub token for gated models comes the way every other runtime variable does: spec.env.
    env += [dict(item) for item in spec.env if str(item.get("name", "")).startswith("HF_")]
    pod_security, container_security = security_contexts(spec, settings)
    labels = {LABEL_MANAGED_BY: MANAGER_NAME, LABEL_CACHE_KEY: key}
    container = {
        "name": DOWNLOAD_CONTAINER,
        "image": spec.image or device.image,
        "imagePullPolicy": settings.image_pull_policy,
        "command": ["python3"],
        "args": download_args(spec.model, spec.model_revision),
        "env": env,
        "resources": {"requests": {"cpu": "500m", "memory": "1Gi"}, "limits": {"memory": "4Gi"}},
        "volumeMounts": [mount],
        "terminationMessagePolicy": "FallbackToLogsOnError",
        "securityContext": container_security,
    }
    pod_spec: dict[str, Any] = {
        "automountServiceAccountToken": False,
        "securityContext": pod_security,
        "restartPolicy": "Never",
        "containers": [container],
        "volumes": [volume],
    }
    if settings.image_pull_secrets:
        pod_spec["imagePullSecrets"] = [{"name": name} for name in settings.image_pull_secrets]
    return {
        "apiVersion": "batch/v1",
        "kind": "Job",
        "metadata": {
            "name": job_name(key),
            "namespace": owner.namespace,
            "labels": labels,
            "annotations": {
                ANNOTATION_MODEL: spec.model,
                ANNOTATION_REVISION: revision,
                ANNOTATION_CLAIM: claim,
            },
            "ownerReferences": [owner_reference(owner)],
        },
        "spec": {
            "backoffLimit": BACKOFF_LIMIT,
            "podFailurePolicy": {
                "rules": [
                    {
                        "action": "FailJob",
                        "onExitCodes": {
                            "containerName": DOWNLOAD_CONTAINER,
                            "operator": "In",
                            "values": [PERMANENT_EXIT_CODE],
                        },
                    }
                ]
            },
            "template": {"metadata": {"labels": labels}, "spec": pod_spec},
        },
    }


def shareable(job: Mapping[str, Any], key: str) -> bool:
    """A download Job another resource may wait on: ours by its labels, for this key, controlled by a
    BloomzInference (anything else with that name is a conflict)."""
    meta = job.get("metadata") or {}
    labels = meta.get("labels") or {}
    ref = controller_of(job) or {}
    return (
        labels.get(LABEL_MANAGED_BY) == MANAGER_NAME
        and labels.get(LABEL_CACHE_KEY) == key
        and ref.get("kind") == KIND
        and str(ref.get("apiVersion", "")).startswith(f"{GROUP}/")
    )


@dataclass(frozen=True)
class DownloadState:
    phase: str  # Pending, Downloading, Succeeded, Failed
    bytes_done: int = 0
    bytes_total: int = 0
    reason: str = ""
    message: str = ""


def last_event(text: str) -> dict[str, Any] | None:
    """The last JSON line the download printed (progress, done or failed), if any."""
    for line in reversed(text.strip().splitlines()):
        line = line.strip()
        if line.startswith("{"):
            try:
                event = json.loads(line)
            except ValueError:
                continue
            if isinstance(event, dict) and "event" in event:
                return event
    return None


def _job_condition(job: Mapping[str, Any], kind: str) -> Mapping[str, Any] | None:
    for cond in (job.get("status") or {}).get("conditions") or ():
        if cond.get("type") == kind and cond.get("status") == "True":
            return dict(cond)
    return None


def _termination(pod: Mapping[str, Any]) -> Mapping[str, Any]:
    for status in (pod.get("status") or {}).get("containerStatuses") or ():
        if status.get("name") == DOWNLOAD_CONTAINER:
            return dict((status.get("state") or {}).get("terminated") or {})
    return {}


def download_state(
    job: Mapping[str, Any], pods: Sequence[Mapping[str, Any]], log_tail: str = ""
) -> DownloadState:
    """Where the download stands, from the Job, its pods (newest last) and the newest pod's log tail."""
    latest = pods[-1] if pods else None
    event = last_event(log_tail) or {}
    done, total = int(event.get("bytesDone") or 0), int(event.get("bytesTotal") or 0)
    # A pod that succeeded is the download done, before the Job controller marks the Job Complete.
    if _job_condition(job, "Complete") is not None or any(
        (pod.get("status") or {}).get("phase") == "Succeeded" for pod in pods
    ):
        return DownloadState("Succeeded", done or total, total)
    failed = _job_condition(job, "Failed")
    if failed is None and latest is not None and _termination(latest).get("exitCode") == PERMANENT_EXIT_CODE:
        failed = {}  # the Job fails on that exit code (podFailurePolicy): no need to wait for it to say so
    if failed is not None:
        # The reason the download printed (kept in the termination message), else the Job's own.
        failed_pods = [p for p in pods if _termination(p).get("exitCode")]
        message = str(_termination(failed_pods[-1]).get("message") or "") if failed_pods else ""
        printed = last_event(message) or (event if event.get("event") == "failed" else {})
        if printed.get("event") == "failed":
            status = f"{printed['status']} " if printed.get("status") else ""
            reason = str(printed.get("reason") or "DownloadFailed")
            return DownloadState(
                "Failed", reason=reason, message=f"{status}{printed.get('message', '')}".strip()
            )
        reason = str(failed.get("reason") or "DownloadFailed")
        return DownloadState("Failed", reason=reason, message=str(failed.get("message") or "the Job failed"))
    if latest is not None and (latest.get("status") or {}).get("phase") == "Running":
        return DownloadState("Downloading", done, total)
    return DownloadState("Pending", done, total)


def human_bytes(count: int) -> str:
    value = float(count)
    for unit in ("B", "KiB", "MiB", "GiB", "TiB"):
        if value < 1024 or unit == "TiB":
            return f"{value:.0f} {unit}" if unit == "B" else f"{value:.1f} {unit}"
        value /= 1024
    return f"{count} B"  # pragma: no cover - the loop always returns


def condition_of(state: DownloadState, what: str, job: str) -> dict[str, str]:
    """ModelCached from a download state; `what` names the model, revision and PVC."""
    if state.phase == "Succeeded":
        size = f"{human_bytes(state.bytes_total)} of " if state.bytes_total else ""
        return {"status": "True", "reason": "Downloaded", "message": f"{size}{what} cached (Job {job})"}
    if state.phase == "Failed":
        return {"status": "False", "reason": state.reason, "message": f"{what}: {state.message} (Job {job})"}
    if state.phase == "Downloading" and state.bytes_total:
        percent = 100 * min(state.bytes_done, state.bytes_total) // state.bytes_total
        progress = f"{human_bytes(state.bytes_done)} of {human_bytes(state.bytes_total)} ({percent} %)"
        return {"status": "False", "reason": "Downloading", "message": f"{what}: {progress} (Job {job})"}
    if state.phase == "Downloading":
        return {"status": "False", "reason": "Downloading", "message": f"{what}: starting (Job {job})"}
    return {"status": "False", "reason": "DownloadPending", "message": f"{what}: Job {job} waits for its pod"}


def with_transition(
    cond: Mapping[str, str], previous_conditions: Sequence[Mapping[str, Any]], now: str
) -> dict[str, Any]:
    before = next((c for c in previous_conditions if c.get("type") == CONDITION), {})
    same = before.get("status") == cond["status"] and before.get("lastTransitionTime")
    return {"type": CONDITION, **cond, "lastTransitionTime": before["lastTransitionTime"] if same else now}


@dataclass(frozen=True)
class CacheGate:
    """What the reconciler needs: may runtime pods start, the condition, the status block, a conflict."""

    ready: bool
    condition: dict[str, str]
    status: dict[str, Any]
    conflict: Conflict | None = None
    failed: bool = False


def ensure_model_cached(
    api: KubeAPI,
    settings: Settings,
    owner: Owner,
    spec: InferenceSpec,
    old_status: Mapping[str, Any] | None,
    logger: logging.Logger | logging.LoggerAdapter[Any],
) -> CacheGate:
    """Create the PVC and the download Job as needed and report where the download stands."""
    assert spec.cache is not None
    cache, revision = spec.cache, revision_of(spec)
    claim = cache.claim_name
    key = cache_key(owner.namespace, claim, spec.model, revision)
    name = job_name(key)
    what = f"{spec.model}@{revision} in PVC {claim}"
    block: dict[str, Any] = {
        "key": key,
        "claimName": claim,
        "job": name,
        "model": spec.model,
        "revision": revision,
    }
    old = old_status or {}
    before: Mapping[str, Any] = next(
        (c for c in old.get("conditions") or () if c.get("type") == CONDITION), {}
    )
    if before.get("status") == "True" and (old.get("modelCache") or {}).get("key") == key:
        return CacheGate(
            True, {k: str(before[k]) for k in ("status", "reason", "message")}, dict(old["modelCache"])
        )

    pvc = api.read_pvc(owner.namespace, claim)
    if cache.size is not None:
        clash = conflict(pvc, owner.uid, "PersistentVolumeClaim", claim) if pvc is not None else None
        if clash is not None:
            return _blocked(clash, what, name, block)
        if pvc is None and api.create_pvc(owner.namespace, build_cache_pvc(owner, cache)):
            logger.info(f"created PersistentVolumeClaim {claim} ({cache.size}) for the model cache")
    elif pvc is None:
        message = f"{what}: PersistentVolumeClaim {claim} does not exist (create it, or set spec.cache.size)"
        return CacheGate(False, {"status": "False", "reason": "ClaimNotFound", "message": message}, block)

    job = api.read_job(owner.namespace, name)
    if job is None:
        job = build_download_job(owner, spec, settings)
        if api.create_job(owner.namespace, job):
            logger.info(f"created Job {name}: downloading {what}")
    elif not shareable(job, key):
        return _blocked(
            conflict(job, owner.uid, "Job", name) or Conflict("Job", name, None), what, name, block
        )
    uid = str((job.get("metadata") or {}).get("uid") or "")
    pods = podview.owned_by(api.list_job_pods(owner.namespace, name), uid) if uid else []
    pods.sort(key=lambda pod: str(pod["metadata"].get("creationTimestamp") or ""))
    log_tail = ""
    if pods and (pods[-1].get("status") or {}).get("phase") in ("Running", "Succeeded", "Failed"):
        log_tail = api.read_pod_log_tail(owner.namespace, pods[-1]["metadata"]["name"], DOWNLOAD_CONTAINER)
    state = download_state(job, pods, log_tail)
    block.update(bytesDone=state.bytes_done, bytesTotal=state.bytes_total)
    return CacheGate(
        state.phase == "Succeeded", condition_of(state, what, name), block, failed=state.phase == "Failed"
    )


def _blocked(clash: Conflict, what: str, job: str, block: dict[str, Any]) -> CacheGate:
    cond = {"status": "False", "reason": "ResourceExists", "message": f"{what}: {clash.message}"}
    return CacheGate(False, cond, block, conflict=clash)
