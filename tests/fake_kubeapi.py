"""A recording fake of the operator's KubeAPI surface, over dicts: what reconcile() calls, with the API
server's semantics that matter to it (uids on create, a uid precondition on delete)."""

from __future__ import annotations

import copy
from typing import Any

from kubernetes.client.rest import ApiException


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
