"""What a real API server sets or resets when an object is created, for the kinds the sandbox uses."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from .resources import CRD_RESOURCE, ResourceType

JSON = dict[str, Any]


def prepare_for_create(resource: ResourceType, obj: JSON, *, now: str, cluster_ip: Callable[[], str]) -> None:
    """Reset or default ``obj`` in place: status of pods, namespaces, services, CRDs, custom resources."""
    if resource.custom and resource.has_status_subresource:
        obj.pop("status", None)  # status is written through the status subresource only
    elif resource.storage_key == ("", "pods"):
        obj["status"] = {"phase": "Pending"}
    elif resource.storage_key == ("", "namespaces"):
        obj["status"] = {"phase": "Active"}
    elif resource.storage_key == ("", "services"):
        spec = obj.setdefault("spec", {})
        spec.setdefault("type", "ClusterIP")
        if not spec.get("clusterIP"):  # "None" (headless) stays
            spec["clusterIP"] = cluster_ip()
        for port in spec.get("ports") or []:
            port.setdefault("protocol", "TCP")
            port.setdefault("targetPort", port.get("port"))
        obj["status"] = {"loadBalancer": {}}
    elif resource.storage_key == CRD_RESOURCE.storage_key:
        obj["status"] = crd_status(obj, now)


def crd_status(crd: JSON, now: str) -> JSON:
    """A CRD's status once its names are accepted: Established at once (there is nothing to wait for)."""
    spec = crd.get("spec") or {}
    return {
        "acceptedNames": spec.get("names") or {},
        "storedVersions": [v["name"] for v in spec.get("versions") or [] if v.get("storage")],
        "conditions": [
            {
                "type": "NamesAccepted",
                "status": "True",
                "reason": "NoConflicts",
                "lastTransitionTime": now,
                "message": "no conflicts found",
            },
            {
                "type": "Established",
                "status": "True",
                "reason": "InitialNamesAccepted",
                "lastTransitionTime": now,
                "message": "the initial names have been accepted",
            },
        ],
    }
