"""The patch formats of the Kubernetes API (pure functions over JSON-like values).

- JSON merge patch (RFC 7386): ``application/merge-patch+json``;
- JSON patch (RFC 6902): ``application/json-patch+json``;
- strategic merge patch (``application/strategic-merge-patch+json``), simplified: lists of objects under
  the well-known built-in field names merge by their key (containers by ``name``, conditions by ``type``,
  ...), ``finalizers`` merge as a set, other lists are replaced; the ``$patch``, ``$retainKeys``,
  ``$setElementOrder/...`` and ``$deleteFromPrimitiveList/...`` directives that kubectl sends are honoured
  or ignored as a real server would (order is not tracked).
"""

from __future__ import annotations

import copy
from collections.abc import Mapping
from typing import Any

from .errors import ApiError, bad_request

# Field name -> the key that identifies items of that list in a strategic merge (built-in kinds).
STRATEGIC_MERGE_KEYS: Mapping[str, str] = {
    "containers": "name",
    "initContainers": "name",
    "ephemeralContainers": "name",
    "volumes": "name",
    "env": "name",
    "envFrom": "prefix",
    "imagePullSecrets": "name",
    "volumeMounts": "mountPath",
    "volumeDevices": "devicePath",
    "conditions": "type",
    "containerStatuses": "name",
    "initContainerStatuses": "name",
    "ownerReferences": "uid",
    "hostAliases": "ip",
    "topologySpreadConstraints": "topologyKey",
    "addresses": "type",
}
# Lists of scalars that merge as sets instead of being replaced.
STRATEGIC_SET_LISTS = frozenset({"finalizers"})


def merge_patch(target: Any, patch: Any) -> Any:
    """RFC 7386: dicts merge recursively, null deletes a key, anything else replaces."""
    if not isinstance(patch, Mapping):
        return copy.deepcopy(patch)
    result: dict[str, Any] = dict(copy.deepcopy(target)) if isinstance(target, Mapping) else {}
    for key, value in patch.items():
        if value is None:
            result.pop(key, None)
        else:
            result[key] = merge_patch(result.get(key), value)
    return result


def _list_key(field: str, items: list[Any]) -> str | None:
    if field == "ports":  # container ports and service ports are keyed differently
        dicts = [item for item in items if isinstance(item, Mapping)]
        if dicts and all("containerPort" in item for item in dicts):
            return "containerPort"
        return "port"
    return STRATEGIC_MERGE_KEYS.get(field)


def _strategic_list(field: str, target: list[Any], patch: list[Any]) -> list[Any]:
    if field in STRATEGIC_SET_LISTS:
        merged = list(target)
        merged.extend(item for item in patch if item not in merged)
        return merged
    key = _list_key(field, patch + target)
    if key is None or not all(isinstance(item, Mapping) for item in patch):
        if any(isinstance(item, Mapping) and item.get("$patch") == "replace" for item in patch):
            return [item for item in patch if not (isinstance(item, Mapping) and "$patch" in item)]
        return copy.deepcopy(patch)
    if any(item.get("$patch") == "replace" for item in patch):
        return [strategic_merge_patch({}, item) for item in patch if item.get("$patch") != "replace"]
    result = [copy.deepcopy(item) for item in target]
    for item in patch:
        index = next(
            (i for i, old in enumerate(result) if isinstance(old, Mapping) and old.get(key) == item.get(key)),
            None,
        )
        if item.get("$patch") == "delete":
            if index is not None:
                result.pop(index)
        elif index is None:
            result.append(strategic_merge_patch({}, item))
        else:
            result[index] = strategic_merge_patch(result[index], item)
    return result


def strategic_merge_patch(target: Any, patch: Any) -> Any:
    """A strategic merge patch (see the module docstring for what is supported)."""
    if not isinstance(patch, Mapping):
        return copy.deepcopy(patch)
    if patch.get("$patch") == "delete":
        return None
    if patch.get("$patch") == "replace":
        return {k: copy.deepcopy(v) for k, v in patch.items() if k != "$patch"}
    result: dict[str, Any] = dict(copy.deepcopy(target)) if isinstance(target, Mapping) else {}
    retain = patch.get("$retainKeys")
    for key, value in patch.items():
        if key in ("$patch", "$retainKeys") or key.startswith("$setElementOrder/"):
            continue
        if key.startswith("$deleteFromPrimitiveList/"):
            field = key.split("/", 1)[1]
            result[field] = [item for item in result.get(field) or [] if item not in value]
            continue
        if value is None:
            result.pop(key, None)
        elif isinstance(value, list) and isinstance(result.get(key), list):
            result[key] = _strategic_list(key, result[key], value)
        elif isinstance(value, list):
            result[key] = _strategic_list(key, [], value)
        else:
            merged = strategic_merge_patch(result.get(key), value)
            if merged is None:
                result.pop(key, None)
            else:
                result[key] = merged
    if isinstance(retain, list):  # every key not listed is cleared
        result = {k: v for k, v in result.items() if k in retain}
    return result


def _unescape(token: str) -> str:
    return token.replace("~1", "/").replace("~0", "~")


def _pointer(path: str) -> list[str]:
    if path == "":
        return []
    if not path.startswith("/"):
        raise _patch_error(f"invalid JSON pointer {path!r}")
    return [_unescape(token) for token in path[1:].split("/")]


def _patch_error(message: str) -> ApiError:
    return ApiError(
        422, "Invalid", f"the server rejected our request due to an error in our request: {message}"
    )


def _container_and_key(doc: Any, tokens: list[str]) -> tuple[Any, str]:
    node = doc
    for token in tokens[:-1]:
        node = _child(node, token)
    return node, tokens[-1]


def _child(node: Any, token: str) -> Any:
    if isinstance(node, dict):
        if token not in node:
            raise _patch_error(f"path element {token!r} not found")
        return node[token]
    if isinstance(node, list):
        index = _index(node, token, allow_end=False)
        return node[index]
    raise _patch_error(f"cannot descend into a scalar at {token!r}")


def _index(node: list[Any], token: str, *, allow_end: bool) -> int:
    if token == "-" and allow_end:
        return len(node)
    if not token.isdigit():
        raise _patch_error(f"invalid array index {token!r}")
    index = int(token)
    if index > len(node) or (index == len(node) and not allow_end):
        raise _patch_error(f"array index {index} out of range")
    return index


def _get(doc: Any, path: str) -> Any:
    node = doc
    for token in _pointer(path):
        node = _child(node, token)
    return node


def _add(doc: Any, path: str, value: Any) -> Any:
    tokens = _pointer(path)
    if not tokens:
        return copy.deepcopy(value)
    parent, key = _container_and_key(doc, tokens)
    if isinstance(parent, dict):
        parent[key] = copy.deepcopy(value)
    elif isinstance(parent, list):
        parent.insert(_index(parent, key, allow_end=True), copy.deepcopy(value))
    else:
        raise _patch_error(f"cannot add to a scalar at {path!r}")
    return doc


def _remove(doc: Any, path: str) -> Any:
    tokens = _pointer(path)
    if not tokens:
        raise _patch_error("cannot remove the whole document")
    parent, key = _container_and_key(doc, tokens)
    if isinstance(parent, dict):
        if key not in parent:
            raise _patch_error(f"cannot remove {path!r}: not found")
        del parent[key]
    elif isinstance(parent, list):
        parent.pop(_index(parent, key, allow_end=False))
    else:
        raise _patch_error(f"cannot remove from a scalar at {path!r}")
    return doc


def json_patch(target: Any, operations: Any) -> Any:
    """RFC 6902: add, remove, replace, move, copy, test; the target is not modified."""
    if not isinstance(operations, list):
        raise bad_request("a JSON patch must be a list of operations")
    doc = copy.deepcopy(target)
    for operation in operations:
        if not isinstance(operation, Mapping) or "op" not in operation or "path" not in operation:
            raise bad_request(f"invalid JSON patch operation: {operation!r}")
        op, path = operation["op"], operation["path"]
        if op == "add":
            doc = _add(doc, path, operation.get("value"))
        elif op == "remove":
            doc = _remove(doc, path)
        elif op == "replace":
            _get(doc, path)  # must exist
            doc = _remove(doc, path) if _pointer(path) else doc
            doc = _add(doc, path, operation.get("value"))
        elif op in ("move", "copy"):
            value = copy.deepcopy(_get(doc, operation["from"]))
            if op == "move":
                doc = _remove(doc, operation["from"])
            doc = _add(doc, path, value)
        elif op == "test":
            if _get(doc, path) != operation.get("value"):
                raise _patch_error(f"test operation failed at {path!r}")
        else:
            raise bad_request(f"unknown JSON patch operation {op!r}")
    return doc
