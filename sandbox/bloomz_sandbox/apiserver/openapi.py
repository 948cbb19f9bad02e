"""A minimal ``/openapi/v3`` so that plain ``kubectl apply -f`` and ``kubectl explain`` work (pure functions).

kubectl validates with ``--validate=strict`` by default: it asks the OpenAPI v3 document of the object's
group-version whether the PATCH operation takes the ``fieldValidation`` query parameter, and if so leaves
validation to the server instead of downloading schemas itself. Each group-version document here
therefore lists every resource's PATCH operation with that parameter, and the custom resources' schemas
(from their CRDs) under ``components.schemas`` for ``kubectl explain``. The sandbox does not enforce those
schemas (see the apiserver module): this only lets kubectl proceed. Built-in kinds publish no schema, so
kubectl keeps computing strategic merge patches from its own type information.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Mapping, Sequence
from typing import Any

from .resources import ResourceType

JSON = dict[str, Any]


def group_version_path(resource: ResourceType) -> str:
    """The key of a group-version in the /openapi/v3 index: "api/v1", "apis/<group>/<version>"."""
    return f"apis/{resource.group}/{resource.version}" if resource.group else "api/v1"


def _gvk(resource: ResourceType) -> JSON:
    return {"group": resource.group, "version": resource.version, "kind": resource.kind}


def _schema_name(resource: ResourceType) -> str:
    reversed_group = ".".join(reversed(resource.group.split("."))) if resource.group else "io.k8s.api.core"
    return f"{reversed_group}.{resource.version}.{resource.kind}"


def _object_path(resource: ResourceType) -> str:
    prefix = f"/{group_version_path(resource)}"
    if resource.namespaced:
        return f"{prefix}/namespaces/{{namespace}}/{resource.plural}/{{name}}"
    return f"{prefix}/{resource.plural}/{{name}}"


def _patch_operation(resource: ResourceType) -> JSON:
    return {
        "operationId": f"patch{resource.kind}",
        "x-kubernetes-group-version-kind": _gvk(resource),
        "x-kubernetes-action": "patch",
        "parameters": [
            {"name": name, "in": "query", "schema": {"type": "string", "uniqueItems": True}}
            for name in ("dryRun", "fieldManager", "fieldValidation", "force")
        ],
        "responses": {"200": {"description": "OK"}},
    }


def group_version_document(resources: Sequence[ResourceType]) -> JSON:
    """The OpenAPI v3 document of one group-version."""
    paths = {_object_path(r): {"patch": _patch_operation(r)} for r in resources}
    schemas: JSON = {}
    for resource in resources:
        if resource.schema is not None:
            schema = dict(resource.schema)
            schema["x-kubernetes-group-version-kind"] = [_gvk(resource)]
            schemas[_schema_name(resource)] = schema
    return {
        "openapi": "3.0.0",
        "info": {"title": "Kubernetes (bloomz sandbox)", "version": "v1.35.0"},
        "paths": paths,
        "components": {"schemas": schemas},
    }


def by_group_version(resources: Sequence[ResourceType]) -> Mapping[str, list[ResourceType]]:
    grouped: dict[str, list[ResourceType]] = {}
    for resource in resources:
        grouped.setdefault(group_version_path(resource), []).append(resource)
    return grouped


def index_document(resources: Sequence[ResourceType]) -> JSON:
    """/openapi/v3: every group-version with a URL whose hash changes when its document does."""
    paths = {}
    for key, members in sorted(by_group_version(resources).items()):
        digest = hashlib.sha256(
            json.dumps(group_version_document(members), sort_keys=True).encode()
        ).hexdigest()
        paths[key] = {"serverRelativeURL": f"/openapi/v3/{key}?hash={digest[:32].upper()}"}
    return {"paths": paths}
