"""Who controls an object: the operator deletes, replaces or reuses only what its resource created.

A Service, Secret or policy that merely has the name the operator would give it may belong to someone else
(another controller, a user, an attacker planting an SSH key). Before touching such an object the operator
checks that its controller ownerReference carries this resource's uid; otherwise it leaves the object
alone and reports a `ResourceExists` conflict (the MPI Operator does the same). Pure functions only.
"""

from __future__ import annotations

import hashlib
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

CONFLICT_REASON = "ResourceExists"


@dataclass(frozen=True)
class Conflict:
    """An object with one of our names that this resource does not control."""

    kind: str
    name: str
    controller: str | None  # "<Kind>/<name>" of its controller, None when it has none

    @property
    def message(self) -> str:
        who = f"controlled by {self.controller}" if self.controller else "not created by this resource"
        return f"{self.kind} {self.name} already exists ({who}); left untouched: delete or rename it"


def controller_of(obj: Mapping[str, Any]) -> Mapping[str, Any] | None:
    """The ownerReference with `controller: true`, if any (Kubernetes allows at most one)."""
    for ref in (obj.get("metadata") or {}).get("ownerReferences") or ():
        if ref.get("controller"):
            return dict(ref)
    return None


def controlled_by(obj: Mapping[str, Any], owner_uid: str) -> bool:
    ref = controller_of(obj)
    return ref is not None and bool(owner_uid) and ref.get("uid") == owner_uid


def conflict(obj: Mapping[str, Any] | None, owner_uid: str, kind: str, name: str) -> Conflict | None:
    """None when `obj` is absent or ours; otherwise the Conflict to report (never act on such an object)."""
    if obj is None or controlled_by(obj, owner_uid):
        return None
    ref = controller_of(obj)
    controller = f"{ref.get('kind')}/{ref.get('name')}" if ref else None
    return Conflict(kind=kind, name=name, controller=controller)


def conflicts_message(conflicts: Sequence[Conflict]) -> str:
    return "; ".join(c.message for c in conflicts)


def owner_tag(uid: str, length: int = 5) -> str:
    """A short digest of the owner's uid: two resources whose names share a prefix get distinct pod names."""
    return hashlib.sha256(uid.encode()).hexdigest()[:length]


def with_conflicts(
    status: Mapping[str, Any],
    conflicts: Sequence[Conflict],
    *,
    previous_conditions: Sequence[Mapping[str, Any]],
    now: str,
) -> dict[str, Any]:
    """`status` with Ready=False/ResourceExists naming the objects (the phase says Failed until resolved)."""
    if not conflicts:
        return dict(status)
    message = conflicts_message(conflicts)
    before = next((c for c in previous_conditions if c.get("type") == "Ready"), {})
    same = before.get("status") == "False" and before.get("lastTransitionTime")
    ready = {
        "type": "Ready",
        "status": "False",
        "reason": CONFLICT_REASON,
        "message": message,
        "lastTransitionTime": before["lastTransitionTime"] if same else now,
    }
    conditions = [c for c in status.get("conditions") or () if c.get("type") != "Ready"] + [ready]
    return {**status, "phase": "Failed", "conditions": conditions}
