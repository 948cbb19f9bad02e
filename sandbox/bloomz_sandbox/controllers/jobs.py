"""A small Job controller: one pod at a time from a Job's template, the Job's status from its pods.

What kube-controller-manager's Job controller does for the Jobs the sandbox runs (parallelism 1,
completions 1, `restartPolicy: Never`); ``plan`` (pure) decides, the controller polls the API and applies:
- no active pod, not finished -> create one (``<job>-<random>``, labelled ``batch.kubernetes.io/job-name``
  and ``job-name``, controlled by the Job, so deleting the Job deletes it);
- a Succeeded pod -> ``Complete`` (and ``SuccessCriteriaMet``), ``succeeded: 1``, ``completionTime``;
- a Failed pod whose container exit code matches a ``podFailurePolicy`` ``FailJob`` rule -> ``Failed``
  with reason ``PodFailurePolicy``; more failed pods than ``backoffLimit`` (default 6) -> ``Failed`` with
  reason ``BackoffLimitExceeded``; otherwise a new pod (no back-off delay: the sandbox is for tests).
"""

from __future__ import annotations

import json
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from kubernetes import client

from bloomz_sandbox.controllers.polling import MADE_BY_LABEL, PollingController, ignore
from bloomz_sandbox.node.pod_status import rfc3339

JOB_NAME_LABELS = ("batch.kubernetes.io/job-name", "job-name")
CONTROLLER_UID_LABEL = MADE_BY_LABEL["Job"]
DEFAULT_BACKOFF_LIMIT = 6
JSON = Mapping[str, Any]


@dataclass
class JobPlan:
    create: list[dict[str, Any]] = field(default_factory=list)
    status: dict[str, Any] = field(default_factory=dict)


def _phase(pod: JSON) -> str:
    return str((pod.get("status") or {}).get("phase") or "Pending")


def pod_from_job(job: JSON) -> dict[str, Any]:
    meta = job["metadata"]
    template = (job.get("spec") or {}).get("template") or {}
    template_meta = template.get("metadata") or {}
    labels = {**(template_meta.get("labels") or {}), CONTROLLER_UID_LABEL: meta["uid"]}
    labels.update({label: meta["name"] for label in JOB_NAME_LABELS})
    return {
        "apiVersion": "v1",
        "kind": "Pod",
        "metadata": {
            "generateName": f"{meta['name']}-",
            "namespace": meta.get("namespace"),
            "labels": labels,
            "annotations": dict(template_meta.get("annotations") or {}),
            "ownerReferences": [
                {
                    "apiVersion": "batch/v1",
                    "kind": "Job",
                    "name": meta["name"],
                    "uid": meta["uid"],
                    "controller": True,
                    "blockOwnerDeletion": True,
                }
            ],
        },
        "spec": json.loads(json.dumps(template.get("spec") or {})),
    }


def _exit_codes(pod: JSON) -> dict[str, int]:
    codes = {}
    for status in (pod.get("status") or {}).get("containerStatuses") or ():
        terminated = (status.get("state") or {}).get("terminated")
        if terminated is not None:
            codes[str(status.get("name"))] = int(terminated.get("exitCode", 0))
    return codes


def fails_job(job: JSON, pod: JSON) -> bool:
    """Does a failed pod match a `FailJob` rule of the Job's podFailurePolicy (onExitCodes, In/NotIn)?"""
    rules = ((job.get("spec") or {}).get("podFailurePolicy") or {}).get("rules") or ()
    codes = _exit_codes(pod)
    for rule in rules:
        on = rule.get("onExitCodes")
        if rule.get("action") != "FailJob" or not on:
            continue
        values = set(on.get("values") or ())
        for name, code in codes.items():
            if on.get("containerName") not in (None, name) or code == 0:
                continue
            if (code in values) == (on.get("operator", "In") == "In"):
                return True
    return False


def _condition(kind: str, reason: str, message: str, now: str) -> dict[str, str]:
    return {"type": kind, "status": "True", "reason": reason, "message": message, "lastTransitionTime": now}


def plan_job(job: JSON, pods: Sequence[JSON], now: float) -> JobPlan:
    """What to create for one Job, and its status, given the pods it controls."""
    status = dict(job.get("status") or {})
    finished = any(
        c.get("type") in ("Complete", "Failed") and c.get("status") == "True"
        for c in status.get("conditions") or ()
    )
    active = [p for p in pods if _phase(p) not in ("Succeeded", "Failed")]
    succeeded = [p for p in pods if _phase(p) == "Succeeded"]
    failed = [p for p in pods if _phase(p) == "Failed"]
    result = JobPlan()
    status.update(active=len(active), succeeded=len(succeeded), failed=len(failed))
    status.setdefault("startTime", rfc3339(now))
    if finished:
        result.status = status
        return result
    stamp = rfc3339(now)
    backoff_limit = int((job.get("spec") or {}).get("backoffLimit", DEFAULT_BACKOFF_LIMIT))
    if succeeded:
        done = "Reached expected number of succeeded pods"
        status["conditions"] = [
            _condition("SuccessCriteriaMet", "CompletionsReached", done, stamp),
            _condition("Complete", "CompletionsReached", done, stamp),
        ]
        status["completionTime"] = stamp
    elif any(fails_job(job, pod) for pod in failed):
        name = next(p["metadata"]["name"] for p in failed if fails_job(job, p))
        message = f"Pod {name} failed with an exit code matching a FailJob rule of the pod failure policy"
        status["conditions"] = [_condition("Failed", "PodFailurePolicy", message, stamp)]
    elif len(failed) > backoff_limit:
        status["conditions"] = [
            _condition("Failed", "BackoffLimitExceeded", "Job has reached the specified backoff limit", stamp)
        ]
    elif not active:
        result.create.append(pod_from_job(job))
        status["active"] = 1
    result.status = status
    return result


def _controlled_by(pod: JSON, uid: str) -> bool:
    refs = (pod.get("metadata") or {}).get("ownerReferences") or ()
    return any(ref.get("uid") == uid and ref.get("controller") for ref in refs)


class JobController(PollingController):
    """Polls Jobs and pods (every ``resync_seconds``) and applies ``plan_job``; start()/stop()."""

    kind = "Job"

    def __init__(self, api_client: client.ApiClient, resync_seconds: float = 0.5) -> None:
        super().__init__(api_client, resync_seconds)
        self.batch: Any = client.BatchV1Api(api_client)

    def list_owners(self, **kwargs: Any) -> Any:
        return self.batch.list_job_for_all_namespaces(**kwargs)

    def reconcile(self, jobs: list[dict[str, Any]], pods: list[dict[str, Any]], now: float) -> None:
        for job in jobs:
            meta = job["metadata"]
            if meta.get("deletionTimestamp"):
                continue
            namespace = meta["namespace"]
            mine = [
                p
                for p in pods
                if _controlled_by(p, meta["uid"]) and not p["metadata"].get("deletionTimestamp")
            ]
            steps = plan_job(job, mine, now)
            for pod in steps.create:
                self.core.create_namespaced_pod(namespace, pod, _preload_content=False)
            if _comparable(job.get("status") or {}) != _comparable(steps.status):
                with ignore(404):
                    self.batch.patch_namespaced_job_status(
                        meta["name"], namespace, {"status": steps.status}, _preload_content=False
                    )


def _comparable(status: JSON) -> Any:
    return {k: v for k, v in status.items() if k not in ("startTime", "completionTime")} | {
        "conditions": [(c.get("type"), c.get("reason")) for c in status.get("conditions") or ()]
    }
