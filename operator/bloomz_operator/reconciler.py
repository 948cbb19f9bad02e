"""One reconciliation pass for one BloomzInference: build, observe, plan, act, report.

The decisions are the pure functions' (builders, planning, status); this module only sequences them
around the API calls, so the Kopf handlers stay one line each.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping
from dataclasses import dataclass, field
from datetime import datetime, timezone
from typing import Any

from . import pods as podview
from .builders import Owner, build_pods, build_service, desired_template_hash, service_endpoint
from .kubeapi import KubeAPI
from .latency import format_time
from .planning import Action, CreatePod, DeletePod, plan_pods
from .settings import Settings
from .spec import SpecError, parse_spec
from .status import StatusEvent, compute_status, status_events


@dataclass
class Outcome:
    status: dict[str, Any]
    actions: list[Action] = field(default_factory=list)
    events: list[StatusEvent] = field(default_factory=list)


def reconcile(
    api: KubeAPI,
    settings: Settings,
    *,
    owner: Owner,
    spec: Mapping[str, Any],
    generation: int | None,
    old_status: Mapping[str, Any] | None,
    logger: logging.Logger | logging.LoggerAdapter[Any],
) -> Outcome:
    try:
        parsed = parse_spec(spec)
    except SpecError as error:
        status = invalid_spec_status(str(error), generation, old_status, owner)
        return Outcome(status=status, events=status_events(old_status, status))
    desired = build_pods(owner, parsed, settings)
    current_hash = desired_template_hash(parsed, settings)
    # Read before writing: a steady state costs a GET, not a refused POST on every pass.
    if not api.service_exists(owner.namespace, owner.name) and api.create_service(
        owner.namespace, build_service(owner)
    ):
        logger.info(f"created Service {owner.name}")
    observed = podview.owned_by(api.list_pods(owner.namespace), owner.uid)
    actions = plan_pods(desired, observed, max_surge=parsed.max_surge)
    for action in actions:
        if isinstance(action, CreatePod):
            if api.create_pod(owner.namespace, action.body):
                logger.info(f"created pod {action.name}")
        elif isinstance(action, DeletePod) and api.delete_pod(owner.namespace, action.name):
            logger.info(f"deleted pod {action.name}: {action.reason}")
    if actions:
        observed = podview.owned_by(api.list_pods(owner.namespace), owner.uid)
    status = compute_status(
        replicas=parsed.replicas,
        observed=observed,
        current_hash=current_hash,
        endpoint=service_endpoint(owner),
        generation=generation,
        previous_conditions=(old_status or {}).get("conditions") or (),
        now=format_time(datetime.now(timezone.utc)),
    )
    return Outcome(status=status, actions=actions, events=status_events(old_status, status))


def invalid_spec_status(
    message: str, generation: int | None, old_status: Mapping[str, Any] | None, owner: Owner
) -> dict[str, Any]:
    """Failed, the reason on every condition; existing pods are left alone until the spec is fixed."""
    now = format_time(datetime.now(timezone.utc))
    previous = {c.get("type"): c for c in (old_status or {}).get("conditions") or ()}
    conditions = []
    for type_ in ("Scheduled", "ModelLoaded", "Ready"):
        before = previous.get(type_) or {}
        same = before.get("status") == "False" and before.get("reason") == "InvalidSpec"
        conditions.append(
            {
                "type": type_,
                "status": "False",
                "reason": "InvalidSpec",
                "message": message,
                "lastTransitionTime": before.get("lastTransitionTime", now) if same else now,
            }
        )
    status: dict[str, Any] = {
        "phase": "Failed",
        "conditions": conditions,
        "endpoint": service_endpoint(owner),
    }
    if generation is not None:
        status["observedGeneration"] = generation
    return status


def clean_up(api: KubeAPI, owner: Owner, logger: logging.Logger | logging.LoggerAdapter[Any]) -> None:
    """Delete every child (the API server's garbage collector would too, but not every cluster has one)."""
    for pod in podview.owned_by(api.list_pods(owner.namespace), owner.uid):
        if api.delete_pod(owner.namespace, podview.name_of(pod)):
            logger.info(f"deleted pod {podview.name_of(pod)}")
    if api.delete_service(owner.namespace, owner.name):
        logger.info(f"deleted Service {owner.name}")
