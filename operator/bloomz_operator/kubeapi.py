"""Every Kubernetes API call the operator makes itself (Kopf's own calls are listed in rbac.py).

The calls are few and idempotent: creating what exists (409) and deleting what is gone (404) count as done,
so a re-run after a crash or an operator restart is safe. `API_CALLS` lists them for the RBAC test.
Every call is bounded (connect and read timeouts) and its connections carry TCP keep-alive, so a dead API
server connection fails a pass within seconds instead of hanging it while it holds the resource's lock.
"""

from __future__ import annotations

import contextlib
import json
import os
from collections.abc import Callable, Mapping
from typing import Any

import kubernetes
from kubernetes.client.rest import ApiException

from . import __version__, incluster
from .constants import GROUP, LABEL_MANAGED_BY, LABEL_OWNER, MANAGER_NAME, PLURAL, VERSION
from .settings import ApiSettings

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
        ("", "secrets", "patch"),  # a key pair per group template, old ones dropped
        # Per resource: its NetworkPolicy and PodDisruptionBudget (read first: never reuse someone else's),
        # patched when the settings they are built from change.
        ("networking.k8s.io", "networkpolicies", "get"),
        ("networking.k8s.io", "networkpolicies", "create"),
        ("networking.k8s.io", "networkpolicies", "patch"),
        ("policy", "poddisruptionbudgets", "get"),
        ("policy", "poddisruptionbudgets", "create"),
        ("policy", "poddisruptionbudgets", "patch"),
    }
)


USER_AGENT = f"bloomz-operator/{__version__}"
# The operator's pods carry this label: lists ask the server for them only (and still filter by owner uid).
OWNED_PODS_SELECTOR = f"{LABEL_MANAGED_BY}={MANAGER_NAME}"
# TCP keep-alive: probe an idle connection after 30 s, drop it after 3 unanswered probes 10 s apart.
KEEPALIVE_IDLE_S, KEEPALIVE_INTERVAL_S, KEEPALIVE_COUNT = 30, 10, 3


def make_api_client() -> kubernetes.client.ApiClient:
    """A client for $KUBECONFIG (read now, not at import time) or, inside a pod, the service account."""
    configuration = kubernetes.client.Configuration()
    configuration.socket_options = kubernetes.client.rest.tcp_keepalive_socket_options(
        KEEPALIVE_IDLE_S, KEEPALIVE_INTERVAL_S, KEEPALIVE_COUNT
    )
    # One urllib3 retry inside a call at most (a pooled connection the server had closed), not urllib3's
    # default of three that would multiply the timeouts: a failed pass is retried as a whole, with backoff.
    configuration.retries = 1
    if incluster.in_cluster():
        incluster.load_client_configuration(configuration)
    else:
        path = os.environ.get("KUBECONFIG") or None
        kubernetes.config.load_kube_config(config_file=path, client_configuration=configuration)
    client = kubernetes.client.ApiClient(configuration)
    client.user_agent = USER_AGENT  # audit logs (and the RBAC test) tell the operator's calls apart
    return client


def pod_selector(owner_name: str | None = None) -> str:
    """The label selector of the operator's pods, or of one resource's pods."""
    if owner_name is None:
        return OWNED_PODS_SELECTOR
    return f"{OWNED_PODS_SELECTOR},{LABEL_OWNER}={owner_name}"


def describe_api_error(error: BaseException) -> str:
    """One line for a status condition or a log: the API server's own message when it sent a Status
    (e.g. the Pod Security admission's "violates PodSecurity ..."), else the exception itself."""
    if isinstance(error, ApiException):
        message = ""
        with contextlib.suppress(ValueError, TypeError, AttributeError):
            message = str(json.loads(error.body or "{}").get("message") or "")
        return f"{error.status} {error.reason}: {message or error.body or 'no message'}".strip()
    return f"{type(error).__name__}: {error}"


class _Bounded:
    """Passes `_request_timeout=(connect, read)` to every method of a generated API class."""

    def __init__(self, api: Any, timeout: tuple[float, float]) -> None:
        self._api = api
        self._timeout = timeout

    def __getattr__(self, name: str) -> Any:
        method = getattr(self._api, name)

        def call(*args: Any, **kwargs: Any) -> Any:
            kwargs.setdefault("_request_timeout", self._timeout)
            return method(*args, **kwargs)

        return call


class KubeAPI:
    """Pods, Services and Secrets of one namespace at a time, as plain dicts."""

    def __init__(self, api_client: kubernetes.client.ApiClient, settings: ApiSettings | None = None) -> None:
        api = settings or ApiSettings()
        self._timeout = (api.connect_timeout_seconds, api.request_timeout_seconds)
        # Any: raw dict bodies and `_preload_content=False` responses are outside the client's typed models.
        self.core: Any = _Bounded(kubernetes.client.CoreV1Api(api_client), self._timeout)
        self.custom: Any = _Bounded(kubernetes.client.CustomObjectsApi(api_client), self._timeout)
        self.networking: Any = _Bounded(kubernetes.client.NetworkingV1Api(api_client), self._timeout)
        self.policy: Any = _Bounded(kubernetes.client.PolicyV1Api(api_client), self._timeout)

    def list_pods(self, namespace: str, owner_name: str | None = None) -> list[dict[str, Any]]:
        """The operator's pods in the namespace (of one resource, with `owner_name`). The label selector keeps
        each pass's answer to its own pods, not every pod of a busy namespace; callers still filter by owner
        uid, so an API server that ignores selectors costs more but stays correct."""
        response = self.core.list_namespaced_pod(
            namespace, label_selector=pod_selector(owner_name), _preload_content=False
        )
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

    def delete_service(self, namespace: str, name: str, uid: str) -> bool:
        """Delete the Service whose uid is `uid` (the object the caller checked the owner of): the API
        server refuses (409) if it was replaced meanwhile. False if gone or replaced."""
        body = {"preconditions": {"uid": uid}}
        try:
            self.core.delete_namespaced_service(name, namespace, body=body, _preload_content=False)
        except ApiException as error:
            if error.status in (404, 409):
                return False
            raise
        return True

    def read_secret(self, namespace: str, name: str) -> dict[str, Any] | None:
        """The Secret as a dict, or None if there is none (read to check its owner, never to log it)."""
        try:
            response = self.core.read_namespaced_secret(name, namespace, _preload_content=False)
        except ApiException as error:
            if error.status == 404:
                return None
            raise
        secret: dict[str, Any] = json.loads(response.data)
        return secret

    def create_secret(self, namespace: str, body: Mapping[str, Any]) -> bool:
        """True if created, False if it exists already (made by an earlier pass: that key is kept)."""
        try:
            self.core.create_namespaced_secret(namespace, dict(body), _preload_content=False)
        except ApiException as error:
            if error.status == 409:
                return False
            raise
        return True

    def read_network_policy(self, namespace: str, name: str) -> dict[str, Any] | None:
        return _read(
            lambda: self.networking.read_namespaced_network_policy(name, namespace, _preload_content=False)
        )

    def create_network_policy(self, namespace: str, body: Mapping[str, Any]) -> bool:
        return _created(
            lambda: self.networking.create_namespaced_network_policy(
                namespace, dict(body), _preload_content=False
            )
        )

    def read_disruption_budget(self, namespace: str, name: str) -> dict[str, Any] | None:
        return _read(
            lambda: self.policy.read_namespaced_pod_disruption_budget(name, namespace, _preload_content=False)
        )

    def create_disruption_budget(self, namespace: str, body: Mapping[str, Any]) -> bool:
        return _created(
            lambda: self.policy.create_namespaced_pod_disruption_budget(
                namespace, dict(body), _preload_content=False
            )
        )

    def patch_network_policy(self, namespace: str, name: str, patch: list[dict[str, Any]]) -> None:
        """Apply a JSON patch (a list body: the client sends it as application/json-patch+json)."""
        self.networking.patch_namespaced_network_policy(name, namespace, patch, _preload_content=False)

    def patch_disruption_budget(self, namespace: str, name: str, patch: list[dict[str, Any]]) -> None:
        self.policy.patch_namespaced_pod_disruption_budget(name, namespace, patch, _preload_content=False)

    def patch_secret(self, namespace: str, name: str, patch: Mapping[str, Any]) -> None:
        self.core.patch_namespaced_secret(name, namespace, dict(patch), _preload_content=False)

    def patch_status(self, namespace: str, name: str, status: Mapping[str, Any]) -> None:
        """Merge `status` into the resource's status subresource."""
        self.custom.patch_namespaced_custom_object_status(
            GROUP, VERSION, namespace, PLURAL, name, {"status": dict(status)}, _preload_content=False
        )


def _read(call: Callable[[], Any]) -> dict[str, Any] | None:
    """The object `call` reads, as a dict, or None if there is none."""
    try:
        response = call()
    except ApiException as error:
        if error.status == 404:
            return None
        raise
    found: dict[str, Any] = json.loads(response.data)
    return found


def _created(call: Callable[[], Any]) -> bool:
    """True if `call` created the object, False if one of that name exists already."""
    try:
        call()
    except ApiException as error:
        if error.status == 409:
            return False
        raise
    return True
