"""Decoding of the Kubernetes protobuf request bodies that kubectl's typed clients send (pure functions).

``kubectl create namespace|configmap|secret|service|serviceaccount`` post
``application/vnd.kubernetes.protobuf`` bodies: the magic ``k8s\\0`` and a ``runtime.Unknown`` envelope
around the object's protobuf. Protobuf carries field numbers, not names, so only the kinds listed in
``KINDS`` (and their usual fields) are understood; anything else is refused with 415 as before.
Responses stay JSON (clients accept it).
"""

from __future__ import annotations

import base64
from collections.abc import Mapping
from typing import Any, TypeAlias

from .errors import ApiError, bad_request, unsupported_media_type

MAGIC = b"k8s\x00"
PROTOBUF = "application/vnd.kubernetes.protobuf"

# A field: (json name, type) where type is a scalar name, ("message", schema), ("repeated", type) or
# ("map", value type); scalars: "string", "bytes" (base64 in JSON), "int", "bool", "intorstring".
FieldType: TypeAlias = "str | tuple[str, Any]"
Schema = Mapping[int, tuple[str, FieldType]]

_OWNER_REFERENCE: Schema = {
    1: ("kind", "string"),
    3: ("name", "string"),
    4: ("uid", "string"),
    5: ("apiVersion", "string"),
    6: ("controller", "bool"),
    7: ("blockOwnerDeletion", "bool"),
}
_OBJECT_META: Schema = {
    1: ("name", "string"),
    2: ("generateName", "string"),
    3: ("namespace", "string"),
    11: ("labels", ("map", "string")),
    12: ("annotations", ("map", "string")),
    13: ("ownerReferences", ("repeated", ("message", _OWNER_REFERENCE))),
    14: ("finalizers", ("repeated", "string")),
}
_META: tuple[str, FieldType] = ("metadata", ("message", _OBJECT_META))
_SERVICE_PORT: Schema = {
    1: ("name", "string"),
    2: ("protocol", "string"),
    3: ("port", "int"),
    4: ("targetPort", "intorstring"),
    5: ("nodePort", "int"),
    6: ("appProtocol", "string"),
}
_SERVICE_SPEC: Schema = {
    1: ("ports", ("repeated", ("message", _SERVICE_PORT))),
    2: ("selector", ("map", "string")),
    3: ("clusterIP", "string"),
    4: ("type", "string"),
    5: ("externalIPs", ("repeated", "string")),
    10: ("externalName", "string"),
}
_LOCAL_OBJECT_REFERENCE: Schema = {1: ("name", "string")}

KINDS: Mapping[tuple[str, str], Schema] = {
    ("v1", "Namespace"): {1: _META, 2: ("spec", ("message", {1: ("finalizers", ("repeated", "string"))}))},
    ("v1", "ConfigMap"): {
        1: _META,
        2: ("data", ("map", "string")),
        3: ("binaryData", ("map", "bytes")),
        4: ("immutable", "bool"),
    },
    ("v1", "Secret"): {
        1: _META,
        2: ("data", ("map", "bytes")),
        3: ("type", "string"),
        4: ("stringData", ("map", "string")),
        5: ("immutable", "bool"),
    },
    ("v1", "Service"): {1: _META, 2: ("spec", ("message", _SERVICE_SPEC))},
    ("v1", "ServiceAccount"): {
        1: _META,
        3: ("imagePullSecrets", ("repeated", ("message", _LOCAL_OBJECT_REFERENCE))),
        4: ("automountServiceAccountToken", "bool"),
    },
    # helm uninstall sends its delete options as protobuf.
    ("v1", "DeleteOptions"): {
        1: ("gracePeriodSeconds", "int"),
        2: ("preconditions", ("message", {1: ("uid", "string"), 2: ("resourceVersion", "string")})),
        3: ("orphanDependents", "bool"),
        4: ("propagationPolicy", "string"),
        5: ("dryRun", ("repeated", "string")),
    },
}


def _varint(data: bytes, pos: int) -> tuple[int, int]:
    result = shift = 0
    while True:
        if pos >= len(data):
            raise bad_request("truncated protobuf body")
        byte = data[pos]
        pos += 1
        result |= (byte & 0x7F) << shift
        if not byte & 0x80:
            return result, pos
        shift += 7


def wire_fields(data: bytes) -> list[tuple[int, int | bytes]]:
    """(field number, value) pairs: ints for varints and fixed-width, bytes for length-delimited."""
    fields: list[tuple[int, int | bytes]] = []
    pos = 0
    while pos < len(data):
        key, pos = _varint(data, pos)
        number, wire_type = key >> 3, key & 7
        value: int | bytes
        if wire_type == 0:
            value, pos = _varint(data, pos)
        elif wire_type == 2:
            length, pos = _varint(data, pos)
            value, pos = data[pos : pos + length], pos + length
        elif wire_type in (1, 5):
            width = 8 if wire_type == 1 else 4
            value, pos = int.from_bytes(data[pos : pos + width], "little"), pos + width
        else:
            raise bad_request(f"unsupported protobuf wire type {wire_type}")
        fields.append((number, value))
    return fields


def _scalar(kind: str, value: int | bytes) -> Any:
    if kind == "string":
        return value.decode() if isinstance(value, bytes) else str(value)
    if kind == "bytes":
        return base64.b64encode(value if isinstance(value, bytes) else b"").decode()
    if kind == "int":
        number = int(value) if isinstance(value, int) else 0
        return number - (1 << 64) if number >= 1 << 63 else number
    if kind == "bool":
        return bool(value)
    if kind == "intorstring":
        parts = dict(wire_fields(value)) if isinstance(value, bytes) else {}
        if parts.get(1) == 1:
            return _scalar("string", parts.get(3, b""))
        return _scalar("int", parts.get(2, 0))
    raise ValueError(kind)


def _value(field_type: FieldType, value: int | bytes) -> Any:
    if isinstance(field_type, str):
        return _scalar(field_type, value)
    if field_type[0] == "message":
        return decode_message(value if isinstance(value, bytes) else b"", field_type[1])
    raise ValueError(field_type)


def _empty(value: Any) -> bool:
    return value in ("", 0, False, None) or value == {} or value == []


def decode_message(data: bytes, schema: Schema) -> dict[str, Any]:
    """A message as JSON: known fields only; empty values left out, as JSON omits them."""
    result: dict[str, Any] = {}
    for number, value in wire_fields(data):
        if number not in schema:
            continue
        name, field_type = schema[number]
        if isinstance(field_type, tuple) and field_type[0] == "repeated":
            result.setdefault(name, []).append(_value(field_type[1], value))
        elif isinstance(field_type, tuple) and field_type[0] == "map":
            entry = dict(wire_fields(value if isinstance(value, bytes) else b""))
            key = _scalar("string", entry.get(1, b""))
            result.setdefault(name, {})[key] = _scalar(field_type[1], entry.get(2, b""))
        else:
            decoded = _value(field_type, value)
            if not _empty(decoded):
                result[name] = decoded
    return result


def decode_object(body: bytes) -> dict[str, Any]:
    """A protobuf request body as the JSON object it stands for (415 for kinds not understood)."""
    if not body.startswith(MAGIC):
        raise bad_request("a protobuf body must start with the k8s magic number")
    envelope = dict(wire_fields(body[len(MAGIC) :]))
    raw_type_meta = envelope.get(1, b"")
    type_meta = dict(wire_fields(raw_type_meta)) if isinstance(raw_type_meta, bytes) else {}
    api_version = _scalar("string", type_meta.get(1, b""))
    kind = _scalar("string", type_meta.get(2, b""))
    schema = KINDS.get((api_version, kind))
    if schema is None:
        error: ApiError = unsupported_media_type(f"{PROTOBUF} (for {api_version} {kind}; send JSON)")
        raise error
    raw = envelope.get(2, b"")
    obj = decode_message(raw if isinstance(raw, bytes) else b"", schema)
    return {"apiVersion": api_version, "kind": kind, **obj}
