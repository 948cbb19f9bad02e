"""A small Deployment controller: pods from a Deployment's template, replaced when the template changes.

What kube-controller-manager does through ReplicaSets, done directly (no ReplicaSet objects): each pod
is owned by its Deployment (``ownerReferences``, so deleting the Deployment deletes its pods) and
labelled ``pod-template-hash`` with a hash of the template. ``plan`` (pure) decides; the controller
polls the API (admin credentials) and applies it:
- too few current pods -> create (``<deployment>-<hash>-<random>``); too many -> delete the newest;
- a pod of an older template -> replaced: ``Recreate`` deletes every old pod first and creates the new
  ones only once they are gone; ``RollingUpdate`` creates the new ones first and deletes the old ones
  once the new ones are Ready;
- a pod that Failed or Succeeded is deleted (and so replaced);
- ``status``: replicas, updatedReplicas, readyReplicas, availableReplicas, observedGeneration and the
  Available/Progressing conditions that ``kubectl rollout status`` and ``helm --wait`` read.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from kubernetes import client

from bloomz_sandbox.controllers.polling import MADE_BY_LABEL, PollingController, ignore

HASH_LABEL = MADE_BY_LABEL["Deployment"]
JSON = Mapping[str, Any]


@dataclass
class Plan:
    create: list[dict[str, Any]] = field(default_factory=list)
    delete: list[str] = field(default_factory=list)
    status: dict[str, Any] = field(default_factory=dict)


def template_hash(template: JSON) -> str:
    canonical = json.dumps(template, sort_keys=True, separators=(",", ":"))
    return hashlib.sha256(canonical.encode()).hexdigest()[:10]


def _is_ready(pod: JSON) -> bool:
    conditions = (pod.get("status") or {}).get("conditions") or []
    return any(c.get("type") == "Ready" and c.get("status") == "True" for c in conditions)


def _owned_by(pod: JSON, uid: str) -> bool:
    return any(ref.get("uid") == uid for ref in (pod.get("metadata") or {}).get("ownerReferences") or [])


def pod_from_template(deployment: JSON, pod_hash: str) -> dict[str, Any]:
    metadata = deployment["metadata"]
    template = deployment["spec"].get("template") or {}
    template_meta = template.get("metadata") or {}
    return {
        "apiVersion": "v1",
        "kind": "Pod",
        "metadata": {
            "generateName": f"{metadata['name']}-{pod_hash}-",
            "namespace": metadata.get("namespace"),
            "labels": {**(template_meta.get("labels") or {}), HASH_LABEL: pod_hash},
            "annotations": dict(template_meta.get("annotations") or {}),
            "ownerReferences": [
                {
                    "apiVersion": "apps/v1",
                    "kind": "Deployment",
                    "name": metadata["name"],
                    "uid": metadata["uid"],
                    "controller": True,
                    "blockOwnerDeletion": True,
                }
            ],
        },
        "spec": json.loads(json.dumps(template.get("spec") or {})),
    }


def _condition(kind: str, ok: bool, reason: str, message: str) -> dict[str, str]:
    return {"type": kind, "status": "True" if ok else "False", "reason": reason, "message": message}


def plan(deployment: JSON, pods: Sequence[JSON]) -> Plan:
    """What to create and delete for one Deployment, and its status, given all pods of its namespace."""
    spec = deployment.get("spec") or {}
    metadata = deployment["metadata"]
    desired = int(spec.get("replicas", 1))
    current_hash = template_hash(spec.get("template") or {})
    owned = [p for p in pods if _owned_by(p, metadata["uid"])]
    terminating = [p for p in owned if (p.get("metadata") or {}).get("deletionTimestamp")]
    alive = [p for p in owned if p not in terminating]
    finished = [p for p in alive if (p.get("status") or {}).get("phase") in ("Failed", "Succeeded")]
    active = [p for p in alive if p not in finished]
    current = [p for p in active if (p["metadata"].get("labels") or {}).get(HASH_LABEL) == current_hash]
    old = [p for p in active if p not in current]
    result = Plan(delete=[p["metadata"]["name"] for p in finished])

    recreate = (spec.get("strategy") or {}).get("type") == "Recreate"
    old_terminating = [
        p for p in terminating if (p["metadata"].get("labels") or {}).get(HASH_LABEL) != current_hash
    ]
    if recreate:
        result.delete += [p["metadata"]["name"] for p in old]
        may_create = not old and not old_terminating
    else:
        ready_current = sum(1 for p in current if _is_ready(p))
        if ready_current >= desired:
            result.delete += [p["metadata"]["name"] for p in old]
        may_create = True
    if len(current) < desired and may_create:
        result.create = [pod_from_template(deployment, current_hash) for _ in range(desired - len(current))]
    elif len(current) > desired:
        newest_first = sorted(current, key=lambda p: p["metadata"].get("creationTimestamp", ""), reverse=True)
        result.delete += [p["metadata"]["name"] for p in newest_first[: len(current) - desired]]

    ready = sum(1 for p in active if _is_ready(p))
    updated = len(current)
    available = ready >= desired
    complete = updated == desired and not old and ready >= desired
    result.status = {
        "observedGeneration": metadata.get("generation", 1),
        "replicas": len(active),
        "updatedReplicas": updated,
        "readyReplicas": ready,
        "availableReplicas": ready,
        "unavailableReplicas": max(desired - ready, 0),
        "conditions": [
            _condition(
                "Available",
                available,
                "MinimumReplicasAvailable" if available else "MinimumReplicasUnavailable",
                f"{ready} of {desired} replicas available",
            ),
            _condition(
                "Progressing",
                True,
                "NewReplicaSetAvailable" if complete else "ReplicaSetUpdated",
                f"{updated} of {desired} updated replicas, {len(old)} old",
            ),
        ],
    }
    return result


def _same_status(stored: JSON, wanted: JSON) -> bool:
    def strip(status: JSON) -> Any:
        return {
            **status,
            "conditions": [
                {k: v for k, v in c.items() if k in ("type", "status", "reason", "message")}
                for c in status.get("conditions") or []
            ],
        }

    return bool(strip(stored or {}) == strip(wanted))


class DeploymentController(PollingController):
    """Polls Deployments and pods (every ``resync_seconds``) and applies ``plan``; start()/stop()."""

    kind = "Deployment"

    def __init__(self, api_client: client.ApiClient, resync_seconds: float = 0.5) -> None:
        super().__init__(api_client, resync_seconds)
        self.apps: Any = client.AppsV1Api(api_client)

    def list_owners(self, **kwargs: Any) -> Any:
        return self.apps.list_deployment_for_all_namespaces(**kwargs)

    def reconcile(self, deployments: list[dict[str, Any]], pods: list[dict[str, Any]], now: float) -> None:
        for deployment in deployments:
            if deployment["metadata"].get("deletionTimestamp"):
                continue
            namespace = deployment["metadata"]["namespace"]
            steps = plan(deployment, [p for p in pods if p["metadata"].get("namespace") == namespace])
            for name in steps.delete:
                with ignore(404):
                    self.core.delete_namespaced_pod(name, namespace, _preload_content=False)
            for pod in steps.create:
                self.core.create_namespaced_pod(namespace, pod, _preload_content=False)
            if not _same_status(deployment.get("status") or {}, steps.status):
                with ignore(404):
                    self.apps.patch_namespaced_deployment_status(
                        deployment["metadata"]["name"],
                        namespace,
                        {"status": steps.status},
                        _preload_content=False,
                    )
