"""The object store of the sandbox API server: API semantics without any HTTP (synchronous, one thread).

What it does like a real API server: namespaces must exist; names and labels are validated, names
generated (``generateName``); every write gets the next global ``resourceVersion``; ``generation`` starts
at 1 and grows only when something outside ``metadata``/``status`` changes; no-op writes change nothing;
a stale ``resourceVersion`` in a write is a Conflict; the ``status`` subresource isolates status from the
rest; finalizers delay deletion (``deletionTimestamp``) until the last one is removed; pods bound to a
node are deleted gracefully (they stay, terminating, until deleted again with grace period 0: the
kubelet's part, the pod runner's here); deleting an owner deletes its dependents (ownerReferences;
Background at once, Foreground first marks the owner with the ``foregroundDeletion`` finalizer until its
dependents are gone, Orphan strips the reference); deleting a namespace deletes its content; posting a
CRD registers its resources (and deleting it removes them with their objects). Every change becomes a
watch event kept in a bounded history for watch resumption (an older ``resourceVersion`` is answered
with 410 Gone).
"""

from __future__ import annotations

import contextlib
import copy
import datetime
import random
import uuid
from collections import defaultdict, deque
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass
from typing import Any

from . import errors as errors
from .defaults import prepare_for_create
from .resources import BUILTIN_RESOURCES, CRD_RESOURCE, ResourceType, resources_of_crd
from .validation import metadata_problems, name_problem

JSON = dict[str, Any]
StorageKey = tuple[str, str]
ObjectKey = tuple[str, str]  # (namespace or "", name)

_GENERATED_CHARS = "bcdfghjklmnpqrstvwxz2456789"  # the alphabet of Kubernetes' generateName suffixes
FOREGROUND_FINALIZER = "foregroundDeletion"
# Metadata that only the server sets: kept from the stored object on every update.
_SERVER_METADATA = (
    "uid",
    "creationTimestamp",
    "namespace",
    "name",
    "generation",
    "resourceVersion",
    "deletionTimestamp",
    "deletionGracePeriodSeconds",
)


@dataclass(frozen=True)
class WatchEvent:
    type: str  # ADDED, MODIFIED, DELETED
    storage_key: StorageKey
    obj: JSON  # the state after the change (the last state for DELETED); never mutated
    old: JSON | None  # the state before a MODIFIED, for selector transitions
    resource_version: int


def format_timestamp(moment: datetime.datetime) -> str:
    return moment.astimezone(datetime.timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ")


def _utcnow() -> datetime.datetime:
    return datetime.datetime.now(datetime.timezone.utc)


def _spec_part(obj: Mapping[str, Any]) -> dict[str, Any]:
    """What counts for ``generation``: everything but metadata and status."""
    return {k: v for k, v in obj.items() if k not in ("metadata", "status", "apiVersion", "kind")}


def _meta(obj: Mapping[str, Any]) -> dict[str, Any]:
    meta = obj.get("metadata")
    return meta if isinstance(meta, dict) else {}


class ObjectStore:
    """All objects of the emulated cluster, their resource types, and the change history."""

    def __init__(
        self,
        *,
        history_limit: int = 5000,  # enough for watchers to resume; older ones relist after a 410
        clock: Callable[[], datetime.datetime] = _utcnow,
    ) -> None:
        self._clock = clock
        self._types: dict[tuple[str, str, str], ResourceType] = {}
        self._objects: dict[StorageKey, dict[ObjectKey, JSON]] = defaultdict(dict)
        self._revision = 0
        self._history: deque[WatchEvent] = deque()
        self._history_limit = history_limit
        self._history_floor = 0  # events with a resourceVersion <= this one were dropped
        self._listeners: list[Callable[[WatchEvent], None]] = []
        self._propagation: dict[str, str] = {}  # uid -> propagationPolicy of a deletion awaiting finalizers
        self._next_cluster_ip = 1
        for resource in BUILTIN_RESOURCES:
            self._types[(resource.group, resource.version, resource.plural)] = resource

    # ----- resource types
    @property
    def revision(self) -> int:
        return self._revision

    def resource_types(self) -> list[ResourceType]:
        return sorted(self._types.values(), key=lambda r: (r.group, r.version, r.plural))

    def find_type(self, group: str, version: str, plural: str) -> ResourceType | None:
        return self._types.get((group, version, plural))

    def _register_crd(self, crd: Mapping[str, Any]) -> None:
        self._unregister_crd(crd, keep_objects=True)
        for resource in resources_of_crd(crd):
            self._types[(resource.group, resource.version, resource.plural)] = resource

    def _unregister_crd(self, crd: Mapping[str, Any], *, keep_objects: bool) -> None:
        spec = crd.get("spec") or {}
        group, plural = spec.get("group", ""), (spec.get("names") or {}).get("plural", "")
        stale = [key for key, r in self._types.items() if r.custom and r.storage_key == (group, plural)]
        if not keep_objects and stale:
            resource = self._types[stale[0]]
            for obj in list(self._objects.get(resource.storage_key, {}).values()):
                self._remove(resource, obj, "Background")
        for key in stale:
            del self._types[key]

    # ----- change notification
    def subscribe(self, listener: Callable[[WatchEvent], None]) -> Callable[[], None]:
        """Call ``listener`` synchronously for every future change; returns the unsubscriber."""
        self._listeners.append(listener)
        return lambda: self._listeners.remove(listener) if listener in self._listeners else None

    def events_since(self, storage_key: StorageKey, resource_version: int) -> list[WatchEvent]:
        """The changes of one resource after a resourceVersion, for resuming a watch."""
        if resource_version < self._history_floor:
            raise errors.gone(f"too old resource version: {resource_version} ({self._history_floor + 1})")
        return [
            e for e in self._history if e.resource_version > resource_version and e.storage_key == storage_key
        ]

    def _emit(self, event_type: str, resource: ResourceType, obj: JSON, old: JSON | None) -> None:
        event = WatchEvent(event_type, resource.storage_key, copy.deepcopy(obj), old, self._revision)
        self._history.append(event)
        while len(self._history) > self._history_limit:
            self._history_floor = self._history.popleft().resource_version
        for listener in list(self._listeners):
            listener(event)

    def _bump(self) -> str:
        self._revision += 1
        return str(self._revision)

    def now(self) -> str:
        return format_timestamp(self._clock())

    # ----- reads
    def _served(self, resource: ResourceType, obj: JSON) -> JSON:
        served = copy.deepcopy(obj)
        served["apiVersion"] = resource.group_version
        served["kind"] = resource.kind
        return served

    def _key(self, resource: ResourceType, namespace: str | None, name: str) -> ObjectKey:
        return ((namespace or "") if resource.namespaced else "", name)

    def _require(self, resource: ResourceType, namespace: str | None, name: str) -> JSON:
        obj = self._objects[resource.storage_key].get(self._key(resource, namespace, name))
        if obj is None:
            raise errors.not_found(resource.qualified_plural, name, resource.group, resource.kind)
        return obj

    def get(self, resource: ResourceType, namespace: str | None, name: str) -> JSON:
        return self._served(resource, self._require(resource, namespace, name))

    def list_objects(
        self,
        resource: ResourceType,
        namespace: str | None,
        matcher: Callable[[Mapping[str, Any]], bool] = lambda obj: True,
    ) -> list[JSON]:
        """Objects of a resource in one namespace (or all), sorted by namespace and name."""
        found = []
        for (ns, _name), obj in sorted(self._objects[resource.storage_key].items()):
            if resource.namespaced and namespace and ns != namespace:
                continue
            if matcher(obj):
                found.append(self._served(resource, obj))
        return found

    def namespace_exists(self, name: str) -> bool:
        return ("", name) in self._objects[("", "namespaces")]

    # ----- create
    def create(
        self, resource: ResourceType, namespace: str | None, body: Any, *, dry_run: bool = False
    ) -> JSON:
        if not isinstance(body, dict):
            raise errors.bad_request("the body of a create request must be a JSON object")
        obj = copy.deepcopy(body)
        self._check_type_of_body(resource, obj)
        meta = obj.setdefault("metadata", {})
        if not isinstance(meta, dict):
            raise errors.bad_request("metadata must be an object")
        if resource.namespaced:
            body_ns = meta.get("namespace")
            if namespace and body_ns and body_ns != namespace:
                raise errors.bad_request(
                    "the namespace of the provided object does not match the namespace sent on the request"
                )
            namespace = namespace or body_ns
            if not namespace:
                raise errors.bad_request("a namespaced object needs a namespace")
            if not self.namespace_exists(namespace):
                raise errors.not_found("namespaces", namespace, "", "Namespace")
            meta["namespace"] = namespace
        else:
            meta.pop("namespace", None)
            namespace = None
        name = meta.get("name") or ""
        if not name:
            prefix = meta.get("generateName") or ""
            if not prefix:
                raise errors.invalid(
                    resource.kind, "", "metadata.name: Required value: name or generateName is required"
                )
            name = prefix + "".join(random.choices(_GENERATED_CHARS, k=5))
        meta["name"] = name
        self._validate(resource, obj)
        key = self._key(resource, namespace, name)
        if key in self._objects[resource.storage_key]:
            raise errors.already_exists(resource.qualified_plural, name, resource.group, resource.kind)
        for server_field in ("deletionTimestamp", "deletionGracePeriodSeconds", "managedFields"):
            meta.pop(server_field, None)
        meta["uid"] = str(uuid.uuid4())
        meta["creationTimestamp"] = self.now()
        meta["generation"] = 1
        prepare_for_create(resource, obj, now=self.now(), cluster_ip=self._allocate_cluster_ip)
        if dry_run:
            return self._served(resource, obj)
        meta["resourceVersion"] = self._bump()
        self._objects[resource.storage_key][key] = obj
        if resource == CRD_RESOURCE or resource.storage_key == CRD_RESOURCE.storage_key:
            self._register_crd(obj)
        self._emit("ADDED", resource, obj, None)
        return self._served(resource, obj)

    def _check_type_of_body(self, resource: ResourceType, obj: JSON) -> None:
        kind, api_version = obj.get("kind"), obj.get("apiVersion")
        if kind and kind != resource.kind:
            raise errors.bad_request(
                f"the kind {kind!r} of the object does not match the resource {resource.kind!r}"
            )
        if api_version and api_version.split("/")[0] != (resource.group or "v1") and resource.group:
            raise errors.bad_request(
                f"the apiVersion {api_version!r} does not match the group {resource.group!r}"
            )
        obj["apiVersion"] = resource.group_version
        obj["kind"] = resource.kind

    @staticmethod
    def _validate(resource: ResourceType, obj: JSON) -> None:
        meta = obj["metadata"]
        problems = metadata_problems(meta)
        problem = name_problem(resource, meta["name"])
        if problem is not None:
            problems.insert(0, problem)
        if problems:
            raise errors.invalid(resource.kind, meta["name"], "; ".join(problems), resource.group)

    def _allocate_cluster_ip(self) -> str:
        self._next_cluster_ip += 1
        return f"10.96.{(self._next_cluster_ip - 1) // 250}.{(self._next_cluster_ip - 1) % 250 + 1}"

    # ----- update (replace and patch)
    def update(
        self,
        resource: ResourceType,
        namespace: str | None,
        name: str,
        change: Callable[[JSON], Any],
        *,
        subresource: str | None = None,
        dry_run: bool = False,
    ) -> JSON:
        """Apply ``change`` (current object -> desired object) with the API server's update rules."""
        if subresource not in (None, "status"):
            raise errors.method_not_allowed(f"the subresource {subresource!r} is not supported here")
        if subresource == "status" and not resource.has_status_subresource:
            raise errors.unknown_resource()
        current = self._require(resource, namespace, name)
        desired = change(self._served(resource, current))
        if not isinstance(desired, dict):
            raise errors.bad_request("the updated object must be a JSON object")
        claimed = _meta(desired).get("resourceVersion")
        if claimed and str(claimed) != current["metadata"]["resourceVersion"]:
            raise errors.conflict(
                resource.qualified_plural,
                name,
                "the object has been modified; please apply your changes to the latest version and try again",
                resource.group,
                resource.kind,
            )
        updated = self._merge_update(resource, current, desired, subresource)
        if subresource is None:
            self._validate(resource, updated)
        if updated == current:
            return self._served(resource, current)  # a no-op write changes nothing, like a real server
        if dry_run:
            return self._served(resource, updated)
        updated["metadata"]["resourceVersion"] = self._bump()
        self._objects[resource.storage_key][self._key(resource, namespace, name)] = updated
        if resource.storage_key == CRD_RESOURCE.storage_key:
            self._register_crd(updated)
        self._emit("MODIFIED", resource, updated, current)
        meta = updated["metadata"]
        if (
            meta.get("deletionTimestamp")
            and self._releasable(updated)
            and resource.storage_key != ("", "namespaces")
        ):
            policy = self._propagation.pop(meta["uid"], "Background")
            self._remove(resource, updated, policy)
        return self._served(resource, updated)

    def _merge_update(
        self, resource: ResourceType, current: JSON, desired: JSON, subresource: str | None
    ) -> JSON:
        if subresource == "status":
            updated = copy.deepcopy(current)
            if "status" in desired:
                updated["status"] = copy.deepcopy(desired["status"])
            else:
                updated.pop("status", None)
            return updated
        updated = copy.deepcopy(desired)
        updated["apiVersion"], updated["kind"] = current["apiVersion"], current["kind"]
        meta = updated.setdefault("metadata", {})
        if not isinstance(meta, dict):
            raise errors.bad_request("metadata must be an object")
        if meta.get("name") and meta["name"] != current["metadata"]["name"]:
            raise errors.bad_request(
                f"the name of the object ({meta['name']}) does not match the name on the URL "
                f"({current['metadata']['name']})"
            )
        meta.pop("managedFields", None)
        for server_field in _SERVER_METADATA:
            if server_field in current["metadata"]:
                meta[server_field] = current["metadata"][server_field]
            else:
                meta.pop(server_field, None)
        if resource.has_status_subresource:
            if "status" in current:
                updated["status"] = copy.deepcopy(current["status"])
            else:
                updated.pop("status", None)
        if current["metadata"].get("deletionTimestamp"):
            added = set(meta.get("finalizers") or []) - set(current["metadata"].get("finalizers") or [])
            if added:
                raise errors.invalid(
                    resource.kind,
                    current["metadata"]["name"],
                    f"metadata.finalizers: Forbidden: no new finalizers can be added if the object is being "
                    f"deleted, found new finalizers {sorted(added)!r}",
                    resource.group,
                )
        if not meta.get("finalizers"):
            meta.pop("finalizers", None)
        if _spec_part(updated) != _spec_part(current):
            meta["generation"] = int(current["metadata"].get("generation", 1)) + 1
        return updated

    # ----- delete
    def delete(
        self,
        resource: ResourceType,
        namespace: str | None,
        name: str,
        *,
        propagation: str | None = None,
        preconditions: Mapping[str, Any] | None = None,
        grace_period_seconds: int | None = None,
        dry_run: bool = False,
    ) -> JSON:
        """Delete now, or mark for deletion while finalizers remain; returns the object's last state."""
        current = self._require(resource, namespace, name)
        meta = current["metadata"]
        for field_name in ("uid", "resourceVersion"):
            expected = (preconditions or {}).get(field_name)
            if expected and str(expected) != str(meta.get(field_name)):
                raise errors.conflict(
                    resource.qualified_plural,
                    name,
                    f"Precondition failed: {field_name.capitalize()} in precondition: {expected}, "
                    f"{field_name.capitalize()} in object meta: {meta.get(field_name)}",
                    resource.group,
                    resource.kind,
                )
        policy = propagation or "Background"
        if dry_run:
            return self._served(resource, current)
        grace = self._grace_period(resource, current, grace_period_seconds)
        is_namespace = resource.storage_key == ("", "namespaces")
        if meta.get("deletionTimestamp"):
            # Already terminating: a shorter grace period (a kubelet's final 0) moves the end closer.
            if grace < int(meta.get("deletionGracePeriodSeconds") or 0):
                current = self._mark_deleted(resource, current, grace, policy)
            if self._releasable(current) and not is_namespace:
                return self._served(resource, self._remove(resource, current, policy))
            return self._served(resource, current)
        if policy == "Foreground" and self._dependents(meta["uid"]):
            # Like the real garbage collector: the owner waits, marked, until its dependents are gone.
            current = self._mark_deleted(resource, current, grace, policy, FOREGROUND_FINALIZER)
            for dependent_resource, dependent in self._dependents(meta["uid"]):
                dependent_meta = dependent["metadata"]
                with contextlib.suppress(errors.ApiError):  # gone meanwhile by a cascade: fine
                    self.delete(
                        dependent_resource,
                        dependent_meta.get("namespace"),
                        dependent_meta["name"],
                        propagation=policy,
                    )
            still = self._objects[resource.storage_key].get(self._key(resource, namespace, name))
            return self._served(resource, still if still is not None else current)
        if meta.get("finalizers") or is_namespace or grace > 0:
            current = self._mark_deleted(resource, current, grace, policy)
            if is_namespace:
                self._empty_namespace(name, policy)
                return self._served(resource, self._objects[resource.storage_key].get(("", name), current))
            return self._served(resource, current)
        return self._served(resource, self._remove(resource, current, policy))

    @staticmethod
    def _grace_period(resource: ResourceType, obj: JSON, requested: int | None) -> int:
        """Graceful deletion, as for real pods: only for pods bound to a node and not finished yet."""
        if resource.storage_key != ("", "pods"):
            return 0
        if not (obj.get("spec") or {}).get("nodeName"):
            return 0
        if (obj.get("status") or {}).get("phase") in ("Succeeded", "Failed"):
            return 0
        if requested is not None:
            return max(int(requested), 0)
        return int((obj.get("spec") or {}).get("terminationGracePeriodSeconds", 30))

    @staticmethod
    def _releasable(obj: JSON) -> bool:
        """A terminating object goes once no finalizer holds it and no grace period is left to wait."""
        meta = obj["metadata"]
        return not meta.get("finalizers") and int(meta.get("deletionGracePeriodSeconds") or 0) == 0

    def _mark_deleted(
        self, resource: ResourceType, current: JSON, grace: int, policy: str, finalizer: str | None = None
    ) -> JSON:
        marked = copy.deepcopy(current)
        meta = marked["metadata"]
        meta.setdefault("deletionTimestamp", self.now())
        if finalizer is not None and finalizer not in meta.setdefault("finalizers", []):
            meta["finalizers"].append(finalizer)
        meta["deletionGracePeriodSeconds"] = grace
        if resource.storage_key == ("", "namespaces"):
            marked.setdefault("status", {})["phase"] = "Terminating"
        meta["resourceVersion"] = self._bump()
        self._objects[resource.storage_key][self._key(resource, meta.get("namespace"), meta["name"])] = marked
        self._propagation[meta["uid"]] = policy
        self._emit("MODIFIED", resource, marked, current)
        return marked

    def delete_collection(
        self,
        resource: ResourceType,
        namespace: str | None,
        matcher: Callable[[Mapping[str, Any]], bool],
        *,
        propagation: str | None = None,
        dry_run: bool = False,
    ) -> list[JSON]:
        deleted = []
        for obj in self.list_objects(resource, namespace, matcher):
            meta = obj["metadata"]
            try:
                deleted.append(
                    self.delete(
                        resource,
                        meta.get("namespace"),
                        meta["name"],
                        propagation=propagation,
                        dry_run=dry_run,
                    )
                )
            except errors.ApiError as error:
                if error.code != 404:  # gone meanwhile by a cascade: fine
                    raise
        return deleted

    def _remove(self, resource: ResourceType, obj: JSON, policy: str) -> JSON:
        """Drop the object for good, then collect what it owned or contained."""
        meta = obj["metadata"]
        key = self._key(resource, meta.get("namespace"), meta["name"])
        if self._objects[resource.storage_key].pop(key, None) is None:
            return obj
        last = copy.deepcopy(obj)
        last["metadata"]["resourceVersion"] = self._bump()
        self._propagation.pop(meta["uid"], None)
        self._emit("DELETED", resource, last, None)
        if resource.storage_key == CRD_RESOURCE.storage_key:
            self._unregister_crd(obj, keep_objects=False)
        self._collect_dependents(meta["uid"], policy)
        self._release_waiting_owners(obj)
        namespace = meta.get("namespace")
        if namespace:
            self._finish_namespace_if_empty(namespace)
        return last

    def _all_objects(self) -> Iterable[tuple[ResourceType, JSON]]:
        by_storage = {r.storage_key: r for r in self._types.values()}
        for storage_key, objects in list(self._objects.items()):
            resource = by_storage.get(storage_key)
            if resource is not None:
                for obj in list(objects.values()):
                    yield resource, obj

    def _live_uids(self) -> set[str]:
        return {obj["metadata"]["uid"] for _, obj in self._all_objects()}

    def _dependents(self, owner_uid: str) -> list[tuple[ResourceType, JSON]]:
        return [
            (resource, obj)
            for resource, obj in self._all_objects()
            if any(ref.get("uid") == owner_uid for ref in _meta(obj).get("ownerReferences") or [])
        ]

    def _release_waiting_owners(self, removed: JSON) -> None:
        """A removed dependent may be the last one a foreground deletion of its owner waited for."""
        owner_uids = {ref.get("uid") for ref in _meta(removed).get("ownerReferences") or []}
        for resource, owner in list(self._all_objects()):
            meta = owner["metadata"]
            waiting = FOREGROUND_FINALIZER in (meta.get("finalizers") or [])
            if meta["uid"] in owner_uids and waiting and not self._dependents(meta["uid"]):

                def release(current: JSON) -> JSON:
                    current["metadata"]["finalizers"].remove(FOREGROUND_FINALIZER)
                    return current

                self.update(resource, meta.get("namespace"), meta["name"], release)

    def _collect_dependents(self, owner_uid: str, policy: str) -> None:
        """Garbage collection: dependents of a removed owner are deleted (or orphaned)."""
        for resource, obj in list(self._all_objects()):
            refs = _meta(obj).get("ownerReferences") or []
            if not any(ref.get("uid") == owner_uid for ref in refs):
                continue
            meta = obj["metadata"]
            still = self._objects[resource.storage_key].get(
                self._key(resource, meta.get("namespace"), meta["name"])
            )
            if still is None:
                continue
            live = self._live_uids()
            other_owners = [ref for ref in refs if ref.get("uid") != owner_uid and ref.get("uid") in live]
            if policy == "Orphan" or other_owners:
                kept = [ref for ref in refs if ref.get("uid") != owner_uid]

                def strip(current: JSON, kept: list[Any] = kept) -> JSON:
                    current["metadata"]["ownerReferences"] = kept
                    if not kept:
                        del current["metadata"]["ownerReferences"]
                    return current

                self.update(resource, meta.get("namespace"), meta["name"], strip)
            else:
                self.delete(resource, meta.get("namespace"), meta["name"], propagation=policy)

    def _empty_namespace(self, namespace: str, policy: str) -> None:
        for resource, obj in list(self._all_objects()):
            meta = obj["metadata"]
            if resource.namespaced and meta.get("namespace") == namespace:
                try:
                    self.delete(resource, namespace, meta["name"], propagation=policy)
                except errors.ApiError as error:
                    if error.code != 404:
                        raise
        self._finish_namespace_if_empty(namespace)

    def _finish_namespace_if_empty(self, namespace: str) -> None:
        ns_resource = self._types[("", "v1", "namespaces")]
        ns_obj = self._objects[ns_resource.storage_key].get(("", namespace))
        if ns_obj is None or not ns_obj["metadata"].get("deletionTimestamp"):
            return
        for resource, obj in self._all_objects():
            if resource.namespaced and obj["metadata"].get("namespace") == namespace:
                return
        self._remove(ns_resource, ns_obj, "Background")
