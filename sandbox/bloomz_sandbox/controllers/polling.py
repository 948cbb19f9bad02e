"""What the sandbox's Job and Deployment controllers share: a polling thread, and the deletion of the
pods they made whose owner is gone (what the real garbage collector does for dangling dependents)."""

from __future__ import annotations

import json
import logging
import threading
import time
from collections.abc import Mapping, Sequence
from typing import Any, Self

from kubernetes import client
from kubernetes.client.exceptions import ApiException

JSON = Mapping[str, Any]
# The label each controller puts on the pods it makes: only such pods are ever its to delete.
MADE_BY_LABEL = {"Job": "batch.kubernetes.io/controller-uid", "Deployment": "pod-template-hash"}


def orphans(kind: str, owner_uids: Sequence[str], pods: Sequence[JSON]) -> list[JSON]:
    """Pods made by the controller of `kind` (its label, owned by a `kind`) whose owner is not among
    `owner_uids`."""
    live = set(owner_uids)
    return [
        p
        for p in pods
        if MADE_BY_LABEL[kind] in ((p.get("metadata") or {}).get("labels") or {})
        and any(
            ref.get("kind") == kind and ref.get("uid") not in live
            for ref in (p.get("metadata") or {}).get("ownerReferences") or []
        )
    ]


class PollingController:
    """Every ``resync_seconds``: lists the owners (``list_owners``) and all pods, deletes the orphans,
    then ``reconcile(owners, pods, now)``; start()/stop()."""

    kind = ""  # "Job" or "Deployment"

    def __init__(self, api_client: client.ApiClient, resync_seconds: float = 0.5) -> None:
        self.core: Any = client.CoreV1Api(api_client)
        self.resync_seconds = resync_seconds
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    def list_owners(self, **kwargs: Any) -> Any:
        """The API's list of every owner of `kind` (kwargs: the client's options)."""
        raise NotImplementedError

    def reconcile(self, owners: list[dict[str, Any]], pods: list[dict[str, Any]], now: float) -> None:
        raise NotImplementedError

    def start(self) -> Self:
        self._thread = threading.Thread(target=self._loop, name=f"sandbox-{self.kind.lower()}s", daemon=True)
        self._thread.start()
        return self

    def stop(self) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout=10)
            self._thread = None

    def _loop(self) -> None:
        while not self._stop.is_set():
            try:
                self.reconcile_once(time.time())
            except Exception:  # the API going away at shutdown, or a bug: logged, retried next round
                if not self._stop.is_set():
                    logger = logging.getLogger(type(self).__module__)
                    logger.exception("sandbox %s controller: reconcile failed", self.kind.lower())
            self._stop.wait(self.resync_seconds)

    def _list(self, call: Any) -> list[dict[str, Any]]:
        return list(json.loads(call(_preload_content=False).data)["items"])

    def reconcile_once(self, now: float | None = None) -> None:
        owners = self._list(self.list_owners)
        pods = self._list(self.core.list_pod_for_all_namespaces)
        # A pod created from a list taken just before its owner was deleted outlives the garbage
        # collection of that owner; the real garbage collector deletes such dangling dependents.
        for pod in orphans(self.kind, [o["metadata"]["uid"] for o in owners], pods):
            with ignore(404):
                self.core.delete_namespaced_pod(
                    pod["metadata"]["name"], pod["metadata"]["namespace"], _preload_content=False
                )
        self.reconcile(owners, pods, time.time() if now is None else now)


class ignore:
    """Suppress an ApiException of one status (an object deleted meanwhile)."""

    def __init__(self, status: int) -> None:
        self.status = status

    def __enter__(self) -> None:
        return None

    def __exit__(self, exc_type: object, exc: object, tb: object) -> bool:
        return isinstance(exc, ApiException) and exc.status == self.status
