"""Every Kubernetes API call the operator makes itself (Kopf's own calls are listed in rbac.py).

The calls are few and idempotent: creating what exists (409) and deleting what is gone (404) count as done,
so a re-run after a crash or an operator restart is safe. `API_CALLS` lists them for the RBAC test.
"""

from __future__ import annotations

import json
import os
from collections.abc import Mapping
from typing import Any

import kubernetes
from kubernetes.client.rest import ApiException

from . import __version__
from .constants import GROUP, PLURAL, VERSION

# (apiGroup, resource, verb) for every method below.
API_CALLS: frozenset[tuple[str, str, str]] = frozenset(
    {
        ("", "pods", "list"),
        (GROUP, f"{PLURAL}/status", "patch"),
        ("", "pods", "create"),
        ("", "pods", "delete"),
        ("", "services", "get"),
        ("", "services", "create"),
        ("", "services", "delete"),
        # Multi-node replicas: the SSH key pair of a resource's groups.
        ("", "secrets", "get"),
        ("", "secrets", "create"),
    }
)


USER_AGENT = f"bloomz-operator/{__version__}"


def make_api_client() -> kubernetes.client.ApiClient:
    """A client for $KUBECONFIG (read now, not at import time) or, inside a pod, the service account."""
    path = os.environ.get("KUBECONFIG")
    if not path and os.environ.get("KUBERNETES_SERVICE_HOST"):
        configuration = kubernetes.client.Configuration()
        kubernetes.config.load_incluster_config(client_configuration=configuration)
        client = kubernetes.client.ApiClient(configuration)
    else:
        client = kubernetes.config.new_client_from_config(config_file=path or None)
    client.user_agent = USER_AGENT  # audit logs (and the RBAC test) tell the operator's calls apart
    return client


class KubeAPI:
    """Pods, Services and Secrets of one namespace at a time, as plain dicts."""

    def __init__(self, api_client: kubernetes.client.ApiClient) -> None:
        # Any: raw dict bodies and `_preload_content=False` responses are outside the client's typed models.
        self.core: Any = kubernetes.client.CoreV1Api(api_client)
        self.custom: Any = kubernetes.client.CustomObjectsApi(api_client)

    def list_pods(self, namespace: str) -> list[dict[str, Any]]:
        # No label selector on purpose: the caller filters by owner uid (never trust a server-side filter).
        response = self.core.list_namespaced_pod(namespace, _preload_content=False)
        items: list[dict[str, Any]] = json.loads(response.data).get("items") or []
        return items

    def create_pod(self, namespace: str, body: Mapping[str, Any]) -> bool:
        """True if created, False if a pod of that name already exists."""
        try:
            self.core.create_namespaced_pod(namespace, dict(body), _preload_content=False)
        except ApiException as error:
            if error.status == 409:
                return False
            raise
        return True

    def delete_pod(self, namespace: str, name: str) -> bool:
        """True if a deletion was started, False if the pod is already gone."""
        try:
            self.core.delete_namespaced_pod(name, namespace, _preload_content=False)
        except ApiException as error:
            if error.status == 404:
                return False
            raise
        return True

    def service_exists(self, namespace: str, name: str) -> bool:
        return self.read_service(namespace, name) is not None

    def read_service(self, namespace: str, name: str) -> dict[str, Any] | None:
        """The Service as a dict, or None if there is none."""
        try:
            response = self.core.read_namespaced_service(name, namespace, _preload_content=False)
        except ApiException as error:
            if error.status == 404:
                return None
            raise
        service: dict[str, Any] = json.loads(response.data)
        return service

    def create_service(self, namespace: str, body: Mapping[str, Any]) -> bool:
        try:
            self.core.create_namespaced_service(namespace, dict(body), _preload_content=False)
        except ApiException as error:
            if error.status == 409:
                return False
            raise
        return True

    def delete_service(self, namespace: str, name: str) -> bool:
        try:
            self.core.delete_namespaced_service(name, namespace, _preload_content=False)
        except ApiException as error:
            if error.status == 404:
                return False
            raise
        return True

    def secret_exists(self, namespace: str, name: str) -> bool:
        try:
            self.core.read_namespaced_secret(name, namespace, _preload_content=False)
        except ApiException as error:
            if error.status == 404:
                return False
            raise
        return True

    def read_secret(self, namespace: str, name: str) -> dict[str, Any] | None:
        """The Secret as plain JSON, or None if it does not exist."""
        try:
            response = self.core.read_namespaced_secret(name, namespace, _preload_content=False)
        except ApiException as error:
            if error.status == 404:
                return None
            raise
        body: dict[str, Any] = json.loads(response.data)
        return body

    def create_secret(self, namespace: str, body: Mapping[str, Any]) -> bool:
        """True if created, False if it exists already (made by an earlier pass: that key is kept)."""
        try:
            self.core.create_namespaced_secret(namespace, dict(body), _preload_content=False)
        except ApiException as error:
            if error.status == 409:
                return False
            raise
        return True

    def patch_status(self, namespace: str, name: str, status: Mapping[str, Any]) -> None:
        """Merge `status` into the resource's status subresource."""
        self.custom.patch_namespaced_custom_object_status(
            GROUP, VERSION, namespace, PLURAL, name, {"status": dict(status)}, _preload_content=False
        )
