"""One reconciliation pass for one BloomzInference: build, observe, plan, act, report.

The decisions are the pure functions' (builders, planning, status); this module only sequences them
around the API calls, so the Kopf handlers stay one line each.
"""

from __future__ import annotations

import contextlib
import json
import logging
import time
from collections.abc import Mapping
from dataclasses import asdict, dataclass, field
from datetime import datetime, timezone
from typing import Any

from kubernetes.client.rest import ApiException

from . import pods as podview
from .builders import Owner, build_pods, build_service, service_endpoint
from .groups import build_groups, build_headless_service, current_template_hash, headless_service_name
from .kubeapi import KubeAPI, describe_api_error
from .latency import format_time
from .planning import (
    Action,
    CreatePod,
    DeletePod,
    GroupFailure,
    RolloutGate,
    find_broken_groups,
    hold_rollout,
    plan_groups,
    plan_pods,
    rollout_finished,
    settings_rollout,
)
from .settings import Settings
from .spec import SpecError, parse_spec
from .sshkeys import build_ssh_secret, generate_key_pair, ssh_secret_name
from .status import StatusEvent, compute_status, status_events


@dataclass(frozen=True)
class ApiFailure:
    reason: str  # the Status reason (Forbidden, Invalid, ...) or the HTTP status
    message: str


@dataclass
class Outcome:
    status: dict[str, Any]
    actions: list[Action] = field(default_factory=list)
    events: list[StatusEvent] = field(default_factory=list)
    api_failure: ApiFailure | None = None  # a write the API server refused (the pass is retried sooner)


def reconcile(
    api: KubeAPI,
    settings: Settings,
    *,
    owner: Owner,
    spec: Mapping[str, Any],
    generation: int | None,
    old_status: Mapping[str, Any] | None,
    logger: logging.Logger | logging.LoggerAdapter[Any],
    gate: RolloutGate | None = None,
) -> Outcome:
    try:
        parsed = parse_spec(spec)
    except SpecError as error:
        status = invalid_spec_status(str(error), generation, old_status, owner)
        return Outcome(status=status, events=status_events(old_status, status))
    current_hash = current_template_hash(parsed, settings)
    _ensure_service(api, build_service(owner, leaders_only=parsed.multi_node), logger)
    failures: list[GroupFailure] = []
    if parsed.multi_node:
        _ensure_group_plumbing(api, owner, logger)
        units = build_groups(owner, parsed, settings)
        observed = podview.owned_by(api.list_pods(owner.namespace, owner.name), owner.uid)
        failures = find_broken_groups(units, observed)
        actions = plan_groups(units, observed, max_surge=parsed.max_surge)
    else:
        desired = build_pods(owner, parsed, settings)
        units = [[pod] for pod in desired]
        observed = podview.owned_by(api.list_pods(owner.namespace, owner.name), owner.uid)
        actions = plan_pods(desired, observed, max_surge=parsed.max_surge)
    status_hash = current_hash
    if gate is not None and settings_rollout(old_status, generation, current_hash):
        if gate.admit(owner.uid, time.monotonic()):
            logger.info(f"rolling the pods to template {current_hash} (the operator's settings changed)")
        else:
            # Wait for a slot: the old pods keep serving and the status keeps speaking about them.
            status_hash = str((old_status or {})["templateHash"])
            actions = hold_rollout(actions, observed, units, max_surge=parsed.max_surge)
            logger.debug(f"template {current_hash} waits for a rollout slot; {status_hash} keeps serving")
    api_failure = _act(api, owner, actions, logger)
    if actions:
        observed = podview.owned_by(api.list_pods(owner.namespace, owner.name), owner.uid)
    if gate is not None and status_hash == current_hash and rollout_finished(observed, units):
        gate.finish(owner.uid)
    now = format_time(datetime.now(timezone.utc))
    status = compute_status(
        replicas=parsed.replicas,
        observed=observed,
        current_hash=status_hash,
        endpoint=service_endpoint(owner),
        generation=generation,
        previous_conditions=(old_status or {}).get("conditions") or (),
        now=now,
        nodes=parsed.nodes,
    )
    status["conditions"].append(reconciled_condition(api_failure, old_status, now))
    events = status_events(old_status, status)
    last_failure = (old_status or {}).get("lastGroupFailure")
    for failure in failures:
        last_failure = {**asdict(failure), "time": now}
        message = f"group {failure.group}: {failure.role} {failure.message} ({failure.reason}), recreating it"
        events.append(StatusEvent("Warning", "GroupRecreated", message))
    if last_failure:
        status["lastGroupFailure"] = last_failure
    return Outcome(status=status, actions=actions, events=events, api_failure=api_failure)


# API errors: a write the API server refuses (e.g. a pod create denied by Pod Security admission) is
# reported in the `Reconciled` condition with the server's message; the pass still writes the status.


def _act(
    api: KubeAPI, owner: Owner, actions: list[Action], logger: logging.Logger | logging.LoggerAdapter[Any]
) -> ApiFailure | None:
    """Run the plan; an action the server refuses (4xx other than 404/409) is recorded and the others still
    run. Server errors (5xx) and lost connections raise: the whole pass is retried with backoff."""
    failure: ApiFailure | None = None
    for action in actions:
        try:
            if isinstance(action, CreatePod):
                if api.create_pod(owner.namespace, action.body):
                    logger.info(f"created pod {action.name}")
            elif isinstance(action, DeletePod) and api.delete_pod(owner.namespace, action.name):
                logger.info(f"deleted pod {action.name}: {action.reason}")
        except ApiException as error:
            if error.status is None or not 400 <= error.status < 500:
                raise
            verb = "creating" if isinstance(action, CreatePod) else "deleting"
            message = f"{verb} pod {action.name}: {describe_api_error(error)}"
            logger.warning(message)
            failure = failure or ApiFailure(api_error_reason(error), message)
    return failure


def api_error_reason(error: BaseException) -> str:
    """A condition reason (CamelCase, no spaces) for an API error: the Status reason when there is one."""
    if isinstance(error, ApiException):
        with contextlib.suppress(ValueError, TypeError, AttributeError):
            reason = str(json.loads(error.body or "{}").get("reason") or "")
            if reason.isalnum():
                return reason
        return f"APIError{error.status}" if error.status else "APIError"
    return "APIUnreachable"


def reconciled_condition(
    failure: ApiFailure | None, old_status: Mapping[str, Any] | None, now: str
) -> dict[str, Any]:
    """`Reconciled`: True once a pass did everything it planned; False with the API's message otherwise."""
    if failure is None:
        cond = {"type": "Reconciled", "status": "True", "reason": "ReconcileSucceeded", "message": "in sync"}
    else:
        cond = {"type": "Reconciled", "status": "False", "reason": failure.reason, "message": failure.message}
    conditions = (old_status or {}).get("conditions") or ()
    before: Mapping[str, Any] = next((c for c in conditions if c.get("type") == "Reconciled"), {})
    same = before.get("status") == cond["status"] and before.get("lastTransitionTime")
    cond["lastTransitionTime"] = before["lastTransitionTime"] if same else now
    return cond


def failed_pass_status(error: BaseException, old_status: Mapping[str, Any] | None) -> dict[str, Any]:
    """The status patch after passes failed as a whole (the API server errs or cannot be reached): the
    other conditions as they were, `Reconciled` False with what went wrong."""
    now = format_time(datetime.now(timezone.utc))
    failure = ApiFailure(api_error_reason(error), f"reconciliation failed: {describe_api_error(error)}")
    kept = [c for c in (old_status or {}).get("conditions") or () if c.get("type") != "Reconciled"]
    return {"conditions": [*kept, reconciled_condition(failure, old_status, now)]}


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
    for pod in podview.owned_by(api.list_pods(owner.namespace, owner.name), owner.uid):
        if api.delete_pod(owner.namespace, podview.name_of(pod)):
            logger.info(f"deleted pod {podview.name_of(pod)}")
    if api.delete_service(owner.namespace, owner.name):
        logger.info(f"deleted Service {owner.name}")
    # Multi-node only (a 404 otherwise); the SSH Secret goes with its owner (garbage collection).
    if api.delete_service(owner.namespace, headless_service_name(owner.name)):
        logger.info(f"deleted Service {headless_service_name(owner.name)}")
