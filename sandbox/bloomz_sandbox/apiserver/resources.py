"""Resource types served by the sandbox API server: the built-in kinds it stores, and CRD-defined ones."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

ALL_VERBS: tuple[str, ...] = (
    "create",
    "delete",
    "deletecollection",
    "get",
    "list",
    "patch",
    "update",
    "watch",
)


@dataclass(frozen=True)
class ResourceType:
    """One (group, version, plural) the API serves; versions of one CRD share their storage."""

    group: str
    version: str
    plural: str
    kind: str
    namespaced: bool
    singular: str = ""
    short_names: tuple[str, ...] = ()
    categories: tuple[str, ...] = ()
    subresources: tuple[str, ...] = ()
    # additionalPrinterColumns of a CRD version (name, type, jsonPath, format, description, priority).
    printer_columns: tuple[Mapping[str, Any], ...] = field(default=(), compare=False)
    custom: bool = False
    # The CRD version's openAPIV3Schema: published at /openapi/v3 (kubectl explain), not enforced.
    schema: Mapping[str, Any] | None = field(default=None, compare=False)
    # The CRD version's `subresources.scale` (specReplicasPath, statusReplicasPath, labelSelectorPath).
    scale: Mapping[str, Any] | None = field(default=None, compare=False)

    @property
    def group_version(self) -> str:
        return f"{self.group}/{self.version}" if self.group else self.version

    @property
    def storage_key(self) -> tuple[str, str]:
        return (self.group, self.plural)

    @property
    def qualified_plural(self) -> str:
        """How errors name the resource: "pods", "bloomzinferences.inference.bloomz.dev"."""
        return f"{self.plural}.{self.group}" if self.group else self.plural

    @property
    def has_status_subresource(self) -> bool:
        return "status" in self.subresources

    def discovery_entries(self) -> list[dict[str, Any]]:
        """The APIResource entries of /api/v1 or /apis/<group>/<version> for this resource."""
        main: dict[str, Any] = {
            "name": self.plural,
            "singularName": self.singular or self.kind.lower(),
            "namespaced": self.namespaced,
            "kind": self.kind,
            "verbs": list(ALL_VERBS),
        }
        if self.short_names:
            main["shortNames"] = list(self.short_names)
        if self.categories:
            main["categories"] = list(self.categories)
        entries = [main]
        for subresource in self.subresources:
            entry = {
                "name": f"{self.plural}/{subresource}",
                "singularName": "",
                "namespaced": self.namespaced,
                "kind": self.kind,
                "verbs": ["get", "patch", "update"],
            }
            if subresource == "scale":  # served as autoscaling/v1 Scale, whatever the resource's group
                entry.update(kind="Scale", group="autoscaling", version="v1")
            entries.append(entry)
        return entries


def _core(plural: str, kind: str, namespaced: bool = True, **kwargs: Any) -> ResourceType:
    return ResourceType(group="", version="v1", plural=plural, kind=kind, namespaced=namespaced, **kwargs)


def _standard(
    group_version: str, plural: str, kind: str, namespaced: bool = True, **kwargs: Any
) -> ResourceType:
    group, version = group_version.split("/")
    return ResourceType(
        group=group, version=version, plural=plural, kind=kind, namespaced=namespaced, **kwargs
    )


# Standard kinds of other API groups, stored like any object (a kind that a chart installs goes here;
# controllers, where the sandbox has one, live in bloomz_sandbox.controllers).
STANDARD_RESOURCES: tuple[ResourceType, ...] = (
    _standard(
        "apps/v1",
        "deployments",
        "Deployment",
        short_names=("deploy",),
        categories=("all",),
        subresources=("status",),
    ),
    _standard(
        "apps/v1",
        "replicasets",
        "ReplicaSet",
        short_names=("rs",),
        categories=("all",),
        subresources=("status",),
    ),
    _standard("batch/v1", "jobs", "Job", categories=("all",), subresources=("status",)),
    _standard("rbac.authorization.k8s.io/v1", "roles", "Role"),
    _standard("rbac.authorization.k8s.io/v1", "rolebindings", "RoleBinding"),
    _standard("rbac.authorization.k8s.io/v1", "clusterroles", "ClusterRole", False),
    _standard("rbac.authorization.k8s.io/v1", "clusterrolebindings", "ClusterRoleBinding", False),
    _standard("networking.k8s.io/v1", "networkpolicies", "NetworkPolicy", short_names=("netpol",)),
    _standard(
        "admissionregistration.k8s.io/v1",
        "validatingadmissionpolicies",
        "ValidatingAdmissionPolicy",
        False,
        subresources=("status",),
    ),
    _standard(
        "admissionregistration.k8s.io/v1",
        "validatingadmissionpolicybindings",
        "ValidatingAdmissionPolicyBinding",
        False,
    ),
)

BUILTIN_RESOURCES: tuple[ResourceType, ...] = (
    _core("namespaces", "Namespace", False, short_names=("ns",), subresources=("status",)),
    _core("nodes", "Node", False, short_names=("no",), subresources=("status",)),
    _core("pods", "Pod", short_names=("po",), categories=("all",), subresources=("status",)),
    _core("services", "Service", short_names=("svc",), categories=("all",), subresources=("status",)),
    _core("endpoints", "Endpoints", short_names=("ep",)),
    _core("events", "Event", short_names=("ev",)),
    _core("configmaps", "ConfigMap", short_names=("cm",)),
    _core("secrets", "Secret"),
    _core("serviceaccounts", "ServiceAccount", short_names=("sa",)),
    _core("persistentvolumeclaims", "PersistentVolumeClaim", short_names=("pvc",), subresources=("status",)),
    _core("persistentvolumes", "PersistentVolume", False, short_names=("pv",), subresources=("status",)),
    ResourceType("events.k8s.io", "v1", "events", "Event", True, short_names=("ev",)),
    ResourceType("coordination.k8s.io", "v1", "leases", "Lease", True),
    *STANDARD_RESOURCES,
    ResourceType(
        "networking.k8s.io", "v1", "networkpolicies", "NetworkPolicy", True, short_names=("netpol",)
    ),
    ResourceType("policy", "v1", "poddisruptionbudgets", "PodDisruptionBudget", True, short_names=("pdb",)),
    ResourceType(
        "apiextensions.k8s.io",
        "v1",
        "customresourcedefinitions",
        "CustomResourceDefinition",
        False,
        short_names=("crd", "crds"),
        categories=("api-extensions",),
        subresources=("status",),
    ),
)

CRD_RESOURCE = BUILTIN_RESOURCES[-1]


def resources_of_crd(crd: Mapping[str, Any]) -> list[ResourceType]:
    """The served versions of a CustomResourceDefinition as resource types (schemas are not validated)."""
    spec = crd.get("spec") or {}
    names = spec.get("names") or {}
    result: list[ResourceType] = []
    for version in spec.get("versions") or []:
        if not version.get("served", True):
            continue
        result.append(
            ResourceType(
                group=spec.get("group", ""),
                version=version["name"],
                plural=names.get("plural", ""),
                kind=names.get("kind", ""),
                namespaced=spec.get("scope", "Namespaced") == "Namespaced",
                singular=names.get("singular", ""),
                short_names=tuple(names.get("shortNames") or ()),
                categories=tuple(names.get("categories") or ()),
                subresources=tuple(sorted((version.get("subresources") or {}).keys())),
                printer_columns=tuple(version.get("additionalPrinterColumns") or ()),
                custom=True,
                schema=(version.get("schema") or {}).get("openAPIV3Schema"),
                scale=(version.get("subresources") or {}).get("scale"),
            )
        )
    return result


def list_kind(kind: str) -> str:
    return f"{kind}List"
