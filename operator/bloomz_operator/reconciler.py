"""One reconciliation pass for one BloomzInference: build, observe, plan, act, report.

The decisions are the pure functions' (builders, planning, status); this module only sequences them
around the API calls, so the Kopf handlers stay one line each.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping
from dataclasses import asdict, dataclass, field
from datetime import datetime, timezone
from typing import Any

from . import pods as podview
from .builders import Owner, build_pods, build_service, service_endpoint
from .groups import build_groups, build_headless_service, current_template_hash, headless_service_name
from .kubeapi import KubeAPI
from .latency import format_time
from .planning import Action, CreatePod, DeletePod, GroupFailure, find_broken_groups, plan_groups, plan_pods
from .scaling import selector_string
from .settings import Settings
from .spec import SpecError, parse_spec
from .sshkeys import build_ssh_secret, generate_key_pair, ssh_secret_name
from .status import StatusEvent, compute_status, status_events


@dataclass
class Outcome:
    status: dict[str, Any]
    actions: list[Action] = field(default_factory=list)
    events: list[StatusEvent] = field(default_factory=list)
    observed: list[Mapping[str, Any]] = field(default_factory=list)  # the owned pods after the actions


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
    current_hash = current_template_hash(parsed, settings)
    service = build_service(owner, leaders_only=parsed.multi_node)
    _ensure_service(api, service, logger)
    failures: list[GroupFailure] = []
    if parsed.multi_node:
        _ensure_group_plumbing(api, owner, logger)
        groups = build_groups(owner, parsed, settings)
        observed = podview.owned_by(api.list_pods(owner.namespace), owner.uid)
        failures = find_broken_groups(groups, observed)
        actions = plan_groups(groups, observed, max_surge=parsed.max_surge)
    else:
        desired = build_pods(owner, parsed, settings)
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
    now = format_time(datetime.now(timezone.utc))
    status = compute_status(
        replicas=parsed.replicas,
        observed=observed,
        current_hash=current_hash,
        endpoint=service_endpoint(owner),
        generation=generation,
        previous_conditions=(old_status or {}).get("conditions") or (),
        now=now,
        nodes=parsed.nodes,
    )
    # The scale subresource's labelSelectorPath: the pods that serve, one per replica (a group's leader).
    status["selector"] = selector_string(service["spec"]["selector"])
    events = status_events(old_status, status)
    last_failure = (old_status or {}).get("lastGroupFailure")
    for failure in failures:
        last_failure = {**asdict(failure), "time": now}
        message = f"group {failure.group}: {failure.role} {failure.message} ({failure.reason}), recreating it"
        events.append(StatusEvent("Warning", "GroupRecreated", message))
    if last_failure:
        status["lastGroupFailure"] = last_failure
    return Outcome(status=status, actions=actions, events=events, observed=list(observed))


def _ensure_service(
    api: KubeAPI, desired: Mapping[str, Any], logger: logging.Logger | logging.LoggerAdapter[Any]
) -> None:
    """Create the client Service, or replace it when its selector is not the desired one (a resource that
    switched between single-node pods and multi-node groups). Read before writing: a steady state costs a
    GET, not a refused POST on every pass."""
    meta = desired["metadata"]
    existing = api.read_service(meta["namespace"], meta["name"])
    if existing is not None:
        if (existing.get("spec") or {}).get("selector") == desired["spec"]["selector"]:
            return
        api.delete_service(meta["namespace"], meta["name"])
        logger.info(f"deleted Service {meta['name']}: its selector changed")
    if api.create_service(meta["namespace"], desired):
        logger.info(f"created Service {meta['name']}")


def _ensure_group_plumbing(
    api: KubeAPI, owner: Owner, logger: logging.Logger | logging.LoggerAdapter[Any]
) -> None:
    """What multi-node groups need besides their pods: the SSH key pair and the headless Service."""
    secret = ssh_secret_name(owner.name)
    if not api.secret_exists(owner.namespace, secret):
        keys = generate_key_pair(comment=f"bloomz-operator@{owner.namespace}/{owner.name}")
        if api.create_secret(owner.namespace, build_ssh_secret(owner, keys)):
            logger.info(f"created Secret {secret} (SSH key pair of the groups)")
    headless = headless_service_name(owner.name)
    if not api.service_exists(owner.namespace, headless) and api.create_service(
        owner.namespace, build_headless_service(owner)
    ):
        logger.info(f"created headless Service {headless}")


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
    # Multi-node only (a 404 otherwise); the SSH Secret goes with its owner (garbage collection).
    if api.delete_service(owner.namespace, headless_service_name(owner.name)):
        logger.info(f"deleted Service {headless_service_name(owner.name)}")
