"""``meta.k8s.io/v1`` Table rendering, which ``kubectl get`` asks for (pure functions).

Custom resources get their CRD's ``additionalPrinterColumns`` (simple JSONPath such as
``.status.latency.seconds``; ``date`` columns rendered as an age like "5m", as the real server does);
a few built-in kinds get their familiar columns; everything else NAME and AGE.
"""

from __future__ import annotations

import datetime
import json
import re
from collections.abc import Callable, Mapping, Sequence
from typing import Any

from .resources import ResourceType

JSON = dict[str, Any]
Column = tuple[str, str, str, Callable[[JSON, datetime.datetime], Any]]  # name, type, format, cell

_INDEX_RE = re.compile(r"^([^\[]*)\[(\d+)\]$")


def human_duration(seconds: float) -> str:
    """The age format of kubectl and the API server (k8s.io/apimachinery duration.HumanDuration)."""
    if seconds < -1:
        return "<invalid>"
    if seconds < 0:
        return "0s"
    total = int(seconds)
    if total < 120:
        return f"{total}s"
    minutes = total // 60
    if minutes < 10:
        rest = total % 60
        return f"{minutes}m{rest}s" if rest else f"{minutes}m"
    if minutes < 180:
        return f"{minutes}m"
    hours = minutes // 60
    if hours < 8:
        rest = minutes % 60
        return f"{hours}h{rest}m" if rest else f"{hours}h"
    if hours < 48:
        return f"{hours}h"
    if hours < 24 * 8:
        rest = hours % 24
        return f"{hours // 24}d{rest}h" if rest else f"{hours // 24}d"
    if hours < 24 * 365 * 2:
        return f"{hours // 24}d"
    if hours < 24 * 365 * 8:
        days = hours // 24 - 365 * (hours // 24 // 365)
        return f"{hours // 24 // 365}y{days}d" if days else f"{hours // 24 // 365}y"
    return f"{hours // 24 // 365}y"


def age(timestamp: str | None, now: datetime.datetime) -> str:
    if not timestamp:
        return "<unknown>"
    try:
        moment = datetime.datetime.strptime(timestamp, "%Y-%m-%dT%H:%M:%SZ").replace(
            tzinfo=datetime.timezone.utc
        )
    except ValueError:
        return "<invalid>"
    return human_duration((now - moment).total_seconds())


def json_path(obj: Any, path: str) -> Any:
    """Evaluate a simple JSONPath (``.a.b``, ``.a[0].b``, optionally in ``{}``); None when absent."""
    path = path.strip()
    if path.startswith("{") and path.endswith("}"):
        path = path[1:-1]
    value = obj
    for part in [p for p in path.lstrip(".").split(".") if p]:
        index: int | None = None
        if match := _INDEX_RE.match(part):
            part, index = match.group(1), int(match.group(2))
        if part:
            if not isinstance(value, Mapping):
                return None
            value = value.get(part)
        if index is not None:
            if not isinstance(value, list) or index >= len(value):
                return None
            value = value[index]
    return value


def _cell(column_type: str, value: Any, now: datetime.datetime) -> Any:
    if value is None:
        return None
    if column_type == "date":
        return age(value if isinstance(value, str) else None, now)
    if column_type == "string":
        return value if isinstance(value, str) else json.dumps(value)
    if column_type == "integer" and isinstance(value, (int, float)) and not isinstance(value, bool):
        return int(value)
    if column_type == "number" and isinstance(value, (int, float)) and not isinstance(value, bool):
        return value
    if column_type == "boolean" and isinstance(value, bool):
        return value
    return value if isinstance(value, (str, int, float, bool)) else json.dumps(value)


def _name(obj: JSON, now: datetime.datetime) -> Any:
    return obj.get("metadata", {}).get("name", "")


def _created(obj: JSON, now: datetime.datetime) -> Any:
    return age(obj.get("metadata", {}).get("creationTimestamp"), now)


def _pod_ready(obj: JSON, now: datetime.datetime) -> Any:
    containers = (obj.get("spec") or {}).get("containers") or []
    statuses = (obj.get("status") or {}).get("containerStatuses") or []
    return f"{sum(1 for s in statuses if s.get('ready'))}/{len(containers)}"


def _pod_status(obj: JSON, now: datetime.datetime) -> Any:
    """Like kubectl's pod STATUS: Terminating, a container's waiting/terminated reason, or the phase."""
    status = obj.get("status") or {}
    if obj.get("metadata", {}).get("deletionTimestamp"):
        return "Terminating"
    reason = status.get("reason") or status.get("phase") or "Unknown"
    for container in status.get("containerStatuses") or []:
        state = container.get("state") or {}
        if (state.get("waiting") or {}).get("reason"):
            reason = state["waiting"]["reason"]
        elif (state.get("terminated") or {}).get("reason"):
            reason = state["terminated"]["reason"]
    return reason


def _pod_restarts(obj: JSON, now: datetime.datetime) -> Any:
    statuses = (obj.get("status") or {}).get("containerStatuses") or []
    return sum(int(s.get("restartCount") or 0) for s in statuses)


def _service_ports(obj: JSON, now: datetime.datetime) -> Any:
    ports = (obj.get("spec") or {}).get("ports") or []
    return ",".join(f"{p.get('port')}/{p.get('protocol', 'TCP')}" for p in ports) or "<none>"


def _path(path: str, default: Any = "<none>") -> Callable[[JSON, datetime.datetime], Any]:
    def cell(obj: JSON, now: datetime.datetime) -> Any:
        value = json_path(obj, path)
        return default if value in (None, "") else value

    return cell


def _node_status(obj: JSON, now: datetime.datetime) -> Any:
    for condition in (obj.get("status") or {}).get("conditions") or []:
        if condition.get("type") == "Ready":
            return "Ready" if condition.get("status") == "True" else "NotReady"
    return "Unknown"


_NAME: Column = ("Name", "string", "name", _name)
_AGE: Column = ("Age", "string", "", _created)

BUILTIN_COLUMNS: Mapping[tuple[str, str], Sequence[Column]] = {
    ("", "pods"): (
        _NAME,
        ("Ready", "string", "", _pod_ready),
        ("Status", "string", "", _pod_status),
        ("Restarts", "integer", "", _pod_restarts),
        _AGE,
        ("IP", "string", "", _path(".status.podIP")),
        ("Node", "string", "", _path(".spec.nodeName")),
    ),
    ("", "services"): (
        _NAME,
        ("Type", "string", "", _path(".spec.type")),
        ("Cluster-IP", "string", "", _path(".spec.clusterIP")),
        ("Port(s)", "string", "", _service_ports),
        _AGE,
    ),
    ("", "nodes"): (
        _NAME,
        ("Status", "string", "", _node_status),
        _AGE,
        ("Version", "string", "", _path(".status.nodeInfo.kubeletVersion", "")),
    ),
    ("", "namespaces"): (_NAME, ("Status", "string", "", _path(".status.phase", "")), _AGE),
    ("", "events"): (
        ("Last Seen", "string", "", lambda o, now: age(o.get("lastTimestamp") or o.get("eventTime"), now)),
        ("Type", "string", "", _path(".type", "")),
        ("Reason", "string", "", _path(".reason", "")),
        (
            "Object",
            "string",
            "",
            lambda o, now: (
                f"{(o.get('involvedObject') or {}).get('kind', '').lower()}/"
                f"{(o.get('involvedObject') or {}).get('name', '')}"
            ),
        ),
        ("Message", "string", "", _path(".message", "")),
    ),
    ("apiextensions.k8s.io", "customresourcedefinitions"): (
        _NAME,
        ("Created At", "date", "", _path(".metadata.creationTimestamp", "")),
    ),
}
# Columns kubectl shows only with -o wide.
_WIDE = {"IP", "Node"}


def columns_for(resource: ResourceType) -> list[Column]:
    if resource.custom and resource.printer_columns:
        columns: list[Column] = [_NAME]
        for spec in resource.printer_columns:
            column_type = str(spec.get("type", "string"))
            path = str(spec.get("jsonPath", ""))

            def cell(
                obj: JSON, now: datetime.datetime, path: str = path, column_type: str = column_type
            ) -> Any:
                return _cell(column_type, json_path(obj, path), now)

            # A date column's cell is already an age string ("5m"), which kubectl prints as it is.
            shown_type = "string" if column_type == "date" else column_type
            columns.append((str(spec["name"]), shown_type, str(spec.get("format", "")), cell))
        return columns
    return list(BUILTIN_COLUMNS.get(resource.storage_key, (_NAME, _AGE)))


def _priority(resource: ResourceType, name: str) -> int:
    if resource.custom:
        for spec in resource.printer_columns:
            if spec.get("name") == name:
                return int(spec.get("priority", 0))
        return 0
    return 1 if name in _WIDE else 0


def _column_descriptions(resource: ResourceType) -> Mapping[str, str]:
    return {str(s.get("name")): str(s.get("description", "")) for s in resource.printer_columns}


def _row_object(obj: JSON, include_object: str) -> JSON | None:
    if include_object == "None":
        return None
    if include_object == "Object":
        return obj
    return {
        "kind": "PartialObjectMetadata",
        "apiVersion": "meta.k8s.io/v1",
        "metadata": obj.get("metadata", {}),
    }


def table(
    resource: ResourceType,
    objects: Sequence[JSON],
    *,
    now: datetime.datetime,
    resource_version: str = "",
    include_object: str = "Metadata",
    headers: bool = True,
) -> JSON:
    """A Table of ``objects``; ``headers=False`` omits the column definitions (later watch events)."""
    columns = columns_for(resource)
    descriptions = _column_descriptions(resource)
    definitions = [
        {
            "name": name,
            "type": column_type,
            "format": column_format,
            "description": descriptions.get(name, name),
            "priority": _priority(resource, name),
        }
        for name, column_type, column_format, _ in columns
    ]
    rows = []
    for obj in objects:
        row: JSON = {"cells": [cell(obj, now) for _, _, _, cell in columns]}
        row_object = _row_object(obj, include_object)
        if row_object is not None:
            row["object"] = row_object
        rows.append(row)
    return {
        "kind": "Table",
        "apiVersion": "meta.k8s.io/v1",
        "metadata": {"resourceVersion": resource_version},
        "columnDefinitions": definitions if headers else [],
        "rows": rows,
    }


def wants_table(accept: str) -> bool:
    """Whether an Accept header asks for a meta.k8s.io Table (the first acceptable type wins)."""
    for media in accept.split(","):
        params = {
            p.split("=", 1)[0].strip(): p.split("=", 1)[1].strip() for p in media.split(";")[1:] if "=" in p
        }
        if params.get("as") == "Table" and params.get("g") == "meta.k8s.io":
            return True
        if media.strip().split(";")[0] in ("application/json", "*/*") and "as" not in params:
            return False
    return False
