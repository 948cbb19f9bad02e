"""The `/scale` subresource of custom resources (pure): the object <-> autoscaling/v1 `Scale` mapping by the
CRD's specReplicasPath, statusReplicasPath and labelSelectorPath, as the real API server does it."""

from __future__ import annotations

import copy
from collections.abc import Mapping
from typing import Any

from . import errors

JSON = dict[str, Any]


def _steps(path: str) -> list[str]:
    # CRD scale paths are simple JSON paths: `.spec.replicas`.
    return [step for step in path.split(".") if step]


def read_path(obj: Mapping[str, Any], path: str) -> Any:
    value: Any = obj
    for step in _steps(path):
        if not isinstance(value, Mapping):
            return None
        value = value.get(step)
    return value


def write_path(obj: JSON, path: str, value: Any) -> None:
    *parents, last = _steps(path)
    target = obj
    for step in parents:
        child = target.get(step)
        if not isinstance(child, dict):
            child = target[step] = {}
        target = child
    target[last] = value


def to_scale(obj: Mapping[str, Any], paths: Mapping[str, Any]) -> JSON:
    """The Scale view of `obj`: spec.replicas from the spec path, status from the status paths."""
    meta = obj.get("metadata") or {}
    status: JSON = {"replicas": int(read_path(obj, paths["statusReplicasPath"]) or 0)}
    selector_path = paths.get("labelSelectorPath")
    selector = read_path(obj, selector_path) if selector_path else None
    if isinstance(selector, str) and selector:
        status["selector"] = selector
    return {
        "apiVersion": "autoscaling/v1",
        "kind": "Scale",
        "metadata": {
            key: meta[key]
            for key in ("name", "namespace", "uid", "resourceVersion", "creationTimestamp")
            if key in meta
        },
        "spec": {"replicas": int(read_path(obj, paths["specReplicasPath"]) or 0)},
        "status": status,
    }


def scaled(obj: Mapping[str, Any], paths: Mapping[str, Any], scale: Any) -> JSON:
    """`obj` with the replicas a written Scale asks for; the Scale's resourceVersion, when given, is a
    precondition (a 409 on a stale one, like any update)."""
    name = (obj.get("metadata") or {}).get("name", "")
    if not isinstance(scale, Mapping):
        raise errors.bad_request("a Scale must be an object")
    replicas = (scale.get("spec") or {}).get("replicas")
    if isinstance(replicas, bool) or not isinstance(replicas, int):
        raise errors.invalid("Scale", name, f"spec.replicas: Invalid value: {replicas!r}: must be an integer")
    if replicas < 0:
        raise errors.invalid(
            "Scale", name, f"spec.replicas: Invalid value: {replicas}: must be greater than or equal to 0"
        )
    updated = copy.deepcopy(dict(obj))
    write_path(updated, paths["specReplicasPath"], replicas)
    claimed = (scale.get("metadata") or {}).get("resourceVersion")
    meta = updated.setdefault("metadata", {})
    if claimed:
        meta["resourceVersion"] = str(claimed)
    else:
        meta.pop("resourceVersion", None)
    return updated
