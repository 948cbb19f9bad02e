"""The operator's own API key for a resource with auth on, and the Secret that carries it.

Users' keys never have to be given to the operator: it generates one key per resource, keeps it in a
Secret the resource owns (like the SSH key pair), projects it into the pods beside the users' keys,
and sends it with its Benchmark calls. `generate_api_key` is the only side effect (randomness).
"""

from __future__ import annotations

import base64
import secrets
from typing import Any

from .access import OPERATOR_KEY_ITEM, api_key_secret_name
from .builders import Owner, common_labels, owner_reference


def generate_api_key() -> str:
    return f"bloomz-op-{secrets.token_urlsafe(32)}"


def build_api_key_secret(owner: Owner, key: str) -> dict[str, Any]:
    return {
        "apiVersion": "v1",
        "kind": "Secret",
        "type": "Opaque",
        "metadata": {
            "name": api_key_secret_name(owner.name),
            "namespace": owner.namespace,
            "labels": common_labels(owner.name),
            "ownerReferences": [owner_reference(owner)],
        },
        "data": {OPERATOR_KEY_ITEM: base64.b64encode(key.encode()).decode()},
    }


def secret_value(secret: dict[str, Any] | None, item: str) -> str | None:
    """One decoded data entry of a Secret read from the API (None if absent)."""
    raw = ((secret or {}).get("data") or {}).get(item)
    return base64.b64decode(raw).decode() if raw else None
