"""Test doubles for the operator's pure core: observed pods, action filters, a recording KubeAPI fake,
and a small simulated cluster that carries out a plan (pods start, become ready, terminate, vanish)."""

from __future__ import annotations

import copy
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

from bloomz_operator.builders import Owner
from bloomz_operator.groups import build_replicas
from bloomz_operator.planning import Action, CreatePod, DeletePod, plan_replicas
from bloomz_operator.settings import Settings
from bloomz_operator.spec import InferenceSpec
from kubernetes.client.rest import ApiException


def observed(
    pod: dict[str, Any],
    *,
    phase: str = "Running",
    ready: bool = True,
    terminating: bool = False,
    reason: str | None = None,
    message: str | None = None,
) -> dict[str, Any]:
    """A desired pod as the API server would report it with this status."""
    pod = copy.deepcopy(pod)
    pod["metadata"]["uid"] = "pod-" + pod["metadata"]["name"]
    pod["status"] = {
        "phase": phase,
        "conditions": [{"type": "Ready", "status": "True" if ready else "False"}],
    }
    if reason:
        pod["status"].update(reason=reason, message=message)
    if terminating:
        pod["metadata"]["deletionTimestamp"] = "2026-01-01T00:00:00Z"
    return pod


def name(pod: dict[str, Any]) -> str:
    return str(pod["metadata"]["name"])


def names(pods: Sequence[dict[str, Any]]) -> list[str]:
    return [name(p) for p in pods]


def build_pods(owner: Owner, spec: InferenceSpec, settings: Settings) -> list[dict[str, Any]]:
    """Every pod of every replica, replica by replica, leader first."""
    return [pod for replica in build_replicas(owner, spec, settings) for pod in replica]


def plan_pods(desired: Sequence[dict[str, Any]], seen: Sequence[Any], *, max_surge: int = 0) -> list[Action]:
    """The planner over single-node replicas (one pod each)."""
    return plan_replicas([[pod] for pod in desired], seen, max_surge=max_surge)


def creates(actions: Sequence[Any]) -> list[str]:
    return [a.name for a in actions if isinstance(a, CreatePod)]


def deletes(actions: Sequence[Any]) -> list[str]:
    return [a.name for a in actions if isinstance(a, DeletePod)]


class FakeAPI:
    """The KubeAPI surface the reconciler uses, over dicts."""

    def __init__(self, refuse: ApiException | None = None) -> None:
        self.refuse = refuse  # raised by create_pod: a write the API server refuses
        self.pods: dict[str, dict[str, Any]] = {}
        self.services: dict[str, dict[str, Any]] = {}
        self.secrets: dict[str, dict[str, Any]] = {}
        self.others: dict[tuple[str, str], dict[str, Any]] = {}  # NetworkPolicies, PodDisruptionBudgets
        self.calls: list[tuple[str, str]] = []

    def list_pods(self, namespace: str, owner_name: str | None = None) -> list[dict[str, Any]]:
        return [copy.deepcopy(p) for p in self.pods.values()]

    def create_pod(self, namespace: str, body: dict[str, Any]) -> bool:
        if self.refuse is not None:
            raise self.refuse
        self.calls.append(("create_pod", body["metadata"]["name"]))
        pod = copy.deepcopy(body)
        pod["metadata"]["uid"] = f"pod-{len(self.calls)}"
        return self.pods.setdefault(body["metadata"]["name"], pod) is pod

    def delete_pod(self, namespace: str, name: str) -> bool:
        self.calls.append(("delete_pod", name))
        return self.pods.pop(name, None) is not None

    def read_service(self, namespace: str, name: str) -> dict[str, Any] | None:
        return self.services.get(name)

    def service_exists(self, namespace: str, name: str) -> bool:
        return name in self.services

    def create_service(self, namespace: str, body: dict[str, Any]) -> bool:
        self.calls.append(("create_service", body["metadata"]["name"]))
        service = copy.deepcopy(body)
        service["metadata"]["uid"] = f"svc-{len(self.calls)}"
        return self.services.setdefault(body["metadata"]["name"], service) is service

    def delete_service(self, namespace: str, name: str, uid: str) -> bool:
        self.calls.append(("delete_service", name))
        if (self.services.get(name) or {}).get("metadata", {}).get("uid") != uid:
            return False  # gone, or replaced since it was read (the API server's precondition)
        return self.services.pop(name, None) is not None

    def read_secret(self, namespace: str, name: str) -> dict[str, Any] | None:
        return self.secrets.get(name)

    def patch_secret(self, namespace: str, name: str, patch: dict[str, Any]) -> None:
        self.calls.append(("patch_secret", name))
        data = self.secrets[name]["data"]
        for key, value in patch["data"].items():
            if value is None:
                data.pop(key, None)
            else:
                data[key] = value

    def create_secret(self, namespace: str, body: dict[str, Any]) -> bool:
        self.calls.append(("create_secret", body["metadata"]["name"]))
        self.secrets[body["metadata"]["name"]] = copy.deepcopy(body)
        return True

    def read_network_policy(self, namespace: str, name: str) -> dict[str, Any] | None:
        return self.others.get(("NetworkPolicy", name))

    def create_network_policy(self, namespace: str, body: dict[str, Any]) -> bool:
        return self._create_other(body)

    def read_disruption_budget(self, namespace: str, name: str) -> dict[str, Any] | None:
        return self.others.get(("PodDisruptionBudget", name))

    def create_disruption_budget(self, namespace: str, body: dict[str, Any]) -> bool:
        return self._create_other(body)

    def _create_other(self, body: dict[str, Any]) -> bool:
        self.calls.append((f"create_{body['kind']}", body["metadata"]["name"]))
        key = (body["kind"], body["metadata"]["name"])
        return self.others.setdefault(key, copy.deepcopy(body)) is not None


@dataclass
class SimCluster:
    """Pods as a kubelet would move them, one tick at a time: a created pod is Pending for
    ``start_ticks`` ticks, then Running and ready; a deleted pod terminates for ``stop_ticks`` ticks
    (still holding its devices), then is gone. ``failures`` makes a pod Failed at a tick."""

    start_ticks: int = 1
    stop_ticks: int = 1
    failures: dict[int, Callable[[str], bool]] = field(default_factory=dict)
    pods: dict[str, dict[str, Any]] = field(default_factory=dict)
    ages: dict[str, int] = field(default_factory=dict)
    tick_count: int = 0

    def add(self, pod: dict[str, Any], **status: Any) -> None:
        self.pods[name(pod)] = observed(pod, **status)
        self.ages[name(pod)] = 0

    def observe(self) -> list[dict[str, Any]]:
        return [copy.deepcopy(p) for p in self.pods.values()]

    def apply(self, actions: Sequence[Action]) -> None:
        for action in actions:
            if isinstance(action, CreatePod):
                assert action.name not in self.pods, f"{action.name} created while it exists"
                self.add(dict(action.body), phase="Pending", ready=False)
            else:
                pod = self.pods[action.name]
                assert "deletionTimestamp" not in pod["metadata"], f"{action.name} deleted twice"
                pod["metadata"]["deletionTimestamp"] = "2026-01-01T00:00:00Z"
                self.ages[action.name] = 0

    def tick(self) -> None:
        self.tick_count += 1
        fail = self.failures.get(self.tick_count, lambda _: False)
        for pod_name, pod in list(self.pods.items()):
            self.ages[pod_name] += 1
            if "deletionTimestamp" in pod["metadata"]:
                if self.ages[pod_name] >= self.stop_ticks:
                    del self.pods[pod_name]
            elif fail(pod_name):
                pod["status"] = {"phase": "Failed", "reason": "Evicted", "conditions": []}
            elif pod["status"]["phase"] == "Pending" and self.ages[pod_name] >= self.start_ticks:
                self.pods[pod_name] = observed(pod, phase="Running", ready=True)
