"""One reconciliation pass for one BloomzInference: build, observe, plan, act, report.

The decisions are the pure functions' (builders, planning, status); this module only sequences them
around the API calls, so the Kopf handlers stay one line each.
"""

from __future__ import annotations

import contextlib
import json
import logging
import time
from collections.abc import Callable, Mapping
from dataclasses import asdict, dataclass, field
from datetime import datetime, timezone
from typing import Any

from kubernetes.client.rest import ApiException

from . import pods as podview
from .access import api_key_secret_name, service_endpoints
from .apikeys import build_api_key_secret, generate_api_key
from .builders import Owner, build_service, service_endpoint
from .groups import build_headless_service, build_replicas, headless_service_name, pod_template
from .kubeapi import KubeAPI, describe_api_error
from .latency import format_time
from .ownership import Conflict, conflict, with_conflicts
from .planning import (
    Action,
    CreatePod,
    DeletePod,
    RolloutGate,
    hold_rollout,
    plan_replicas,
    rollout_finished,
    settings_rollout,
)
from .policy import violations
from .protection import build_disruption_budget, build_network_policy
from .replicas import ReplicaFailure, find_broken
from .scaling import selector_string
from .settings import Settings
from .spec import SpecError, parse_spec
from .sshkeys import KeyPair, build_ssh_secret, generate_key_pair, ssh_secret_name, ssh_secret_patch
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
    gate: RolloutGate | None = None,
) -> Outcome:
    try:
        parsed = parse_spec(spec)
        refused = violations(parsed, settings.policy)
        if refused:
            raise SpecError("; ".join(refused))
    except SpecError as error:
        status = invalid_spec_status(str(error), generation, old_status, owner)
        return Outcome(status=status, events=status_events(old_status, status))
    template = pod_template(owner, parsed, settings)
    current_hash = template.hash
    observed = podview.owned_by(api.list_pods(owner.namespace, owner.name), owner.uid)
    in_use = {h for pod in observed if (h := podview.hash_of(pod))}
    conflicts = _ensure_objects(api, settings, owner, parsed.multi_node, current_hash, in_use, logger)
    if parsed.api_key_secret:
        key_conflict = _ensure_api_key(api, owner, logger)
        conflicts += [key_conflict] if key_conflict is not None else []
    failures: list[ReplicaFailure] = []
    actions: list[Action] = []
    units: list[list[dict[str, Any]]] = []
    # An object with one of our names is someone else's: create and delete no pod until that is resolved.
    if not conflicts:
        units = build_replicas(owner, parsed, settings, template)
        # A single pod that ends is simply replaced; a group that loses a member is reported.
        failures = find_broken(units, observed) if parsed.multi_node else []
        actions = plan_replicas(units, observed, max_surge=parsed.max_surge)
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
    previous_conditions = (old_status or {}).get("conditions") or ()
    status = compute_status(
        replicas=parsed.replicas,
        observed=observed,
        current_hash=status_hash,
        endpoint=service_endpoint(owner),
        generation=generation,
        previous_conditions=previous_conditions,
        now=now,
        nodes=parsed.nodes,
    )
    status["conditions"].append(reconciled_condition(api_failure, old_status, now))
    status = with_conflicts(status, conflicts, previous_conditions=previous_conditions, now=now)
    # The scale subresource's labelSelectorPath: the pods that serve, one per replica (a group's leader).
    service_selector = build_service(owner, leaders_only=parsed.multi_node)["spec"]["selector"]
    status["selector"] = selector_string(service_selector)
    events = status_events(old_status, status)
    last_failure = (old_status or {}).get("lastGroupFailure")
    for failure in failures:
        last_failure = {**asdict(failure), "time": now}
        message = f"group {failure.group}: {failure.role} {failure.message} ({failure.reason}), recreating it"
        events.append(StatusEvent("Warning", "GroupRecreated", message))
    if last_failure:
        status["lastGroupFailure"] = last_failure
    status["endpoints"] = service_endpoints(owner.name, owner.namespace, parsed)
    return Outcome(
        status=status, actions=actions, events=events, api_failure=api_failure, observed=list(observed)
    )


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


def _ensure_objects(
    api: KubeAPI,
    settings: Settings,
    owner: Owner,
    multi_node: bool,
    current_hash: str,
    in_use: set[str],
    logger: logging.Logger | logging.LoggerAdapter[Any],
) -> list[Conflict]:
    """The resource's objects besides its pods; the ones with our names that are not ours, untouched."""
    found = [_ensure_service(api, owner, build_service(owner, leaders_only=multi_node), logger)]
    if multi_node:
        found += _ensure_group_plumbing(api, owner, current_hash, in_use, logger)
    if settings.network.enabled:
        policy = build_network_policy(owner, settings.network)
        found.append(
            _ensure_created(api.read_network_policy, api.create_network_policy, owner, policy, logger)
        )
    budget = build_disruption_budget(owner)
    found.append(
        _ensure_created(api.read_disruption_budget, api.create_disruption_budget, owner, budget, logger)
    )
    return [c for c in found if c is not None]


def _ensure_created(
    read: Callable[[str, str], dict[str, Any] | None],
    create: Callable[[str, Mapping[str, Any]], bool],
    owner: Owner,
    desired: Mapping[str, Any],
    logger: logging.Logger | logging.LoggerAdapter[Any],
) -> Conflict | None:
    """Create `desired` when absent; one of that name that is not ours is a conflict, left alone."""
    kind, name = desired["kind"], desired["metadata"]["name"]
    existing = read(owner.namespace, name)
    if existing is not None:
        return conflict(existing, owner.uid, kind, name)
    if create(owner.namespace, desired):
        logger.info(f"created {kind} {name}")
    return None


def _ensure_api_key(
    api: KubeAPI, owner: Owner, logger: logging.Logger | logging.LoggerAdapter[Any]
) -> Conflict | None:
    """The operator's own key for Benchmark calls (made once; the pods mount it beside the users' keys). A
    Secret of that name that this resource does not control is never used: its key would be the operator's."""
    secret = api_key_secret_name(owner.name)
    existing = api.read_secret(owner.namespace, secret)
    if existing is not None:
        return conflict(existing, owner.uid, "Secret", secret)
    if api.create_secret(owner.namespace, build_api_key_secret(owner, generate_api_key())):
        logger.info(f"created Secret {secret} (the operator's API key for Benchmark)")
    return None


def _ensure_service(
    api: KubeAPI,
    owner: Owner,
    desired: Mapping[str, Any],
    logger: logging.Logger | logging.LoggerAdapter[Any],
) -> Conflict | None:
    """Create the Service, or replace ours when its selector is not the desired one (a resource that
    switched between single-node pods and multi-node groups). Read before writing: a steady state costs a
    GET, not a refused POST on every pass. A Service of that name that we do not control is left alone."""
    meta = desired["metadata"]
    existing = api.read_service(meta["namespace"], meta["name"])
    found = conflict(existing, owner.uid, "Service", meta["name"])
    if found is not None:
        return found
    if existing is not None:
        if (existing.get("spec") or {}).get("selector") == desired["spec"]["selector"]:
            return None
        api.delete_service(meta["namespace"], meta["name"], uid=existing["metadata"]["uid"])
        logger.info(f"deleted Service {meta['name']}: its selector changed")
    if api.create_service(meta["namespace"], desired):
        logger.info(f"created Service {meta['name']}")
    return None


def _ensure_group_plumbing(
    api: KubeAPI,
    owner: Owner,
    current_hash: str,
    in_use: set[str],
    logger: logging.Logger | logging.LoggerAdapter[Any],
) -> list[Conflict]:
    """What multi-node groups need besides their pods: the SSH key pairs (one per group template) and the
    headless Service. A Secret we did not create is never reused: its key would let its author in."""
    found: list[Conflict] = []
    secret = ssh_secret_name(owner.name)
    existing = api.read_secret(owner.namespace, secret)

    def new_keys() -> KeyPair:
        return generate_key_pair(comment=f"bloomz-operator@{owner.namespace}/{owner.name}/{current_hash}")

    if (clash := conflict(existing, owner.uid, "Secret", secret)) is not None:
        found.append(clash)
    elif existing is None:
        if api.create_secret(owner.namespace, build_ssh_secret(owner, new_keys(), current_hash)):
            logger.info(f"created Secret {secret} (SSH key pair of the groups)")
    elif (patch := ssh_secret_patch(existing, current_hash, in_use, new_keys)) is not None:
        api.patch_secret(owner.namespace, secret, patch)
        logger.info(f"updated Secret {secret}: a key pair for template {current_hash}, unused ones dropped")
    headless = headless_service_name(owner.name)
    existing = api.read_service(owner.namespace, headless)
    if (clash := conflict(existing, owner.uid, "Service", headless)) is not None:
        found.append(clash)
    elif existing is None and api.create_service(owner.namespace, build_headless_service(owner)):
        logger.info(f"created headless Service {headless}")
    return found


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
    """Delete every child (the API server's garbage collector would too, but not every cluster has one);
    Services with our names that this resource does not control stay."""
    for pod in podview.owned_by(api.list_pods(owner.namespace, owner.name), owner.uid):
        if api.delete_pod(owner.namespace, podview.name_of(pod)):
            logger.info(f"deleted pod {podview.name_of(pod)}")
    # The headless Service exists for multi-node resources only; the SSH Secret goes with its owner
    # (garbage collection).
    for name in (owner.name, headless_service_name(owner.name)):
        existing = api.read_service(owner.namespace, name)
        if existing is None:
            continue
        if conflict(existing, owner.uid, "Service", name) is not None:
            logger.info(f"left Service {name} alone: this resource does not control it")
        elif api.delete_service(owner.namespace, name, uid=existing["metadata"]["uid"]):
            logger.info(f"deleted Service {name}")
