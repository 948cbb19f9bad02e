"""Kopf handlers: thin wrappers that call the reconciler and the latency measurement.

`register_handlers(registry, settings)` binds them to a registry with the operator settings (timer intervals
come from the settings, so they cannot be module-level decorators).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import threading
from collections.abc import Callable
from datetime import datetime, timezone
from typing import Any

import kopf

from . import pods as podview
from .builders import Owner
from .constants import BENCHMARK_ANNOTATION, GROUP, KIND, LABEL_MANAGED_BY, MANAGER_NAME, PLURAL, VERSION
from .groups import current_template_hash
from .kubeapi import KubeAPI, make_api_client
from .latency import PodTarget, benchmark_due, benchmark_requested, measure_pods, summarize
from .metrics import OperatorMetrics
from .reconciler import clean_up, reconcile
from .scaling import keeps_latency
from .settings import Settings
from .spec import SpecError, parse_spec

FINALIZER = f"{GROUP}/finalizer"
STORAGE_PREFIX = f"operator.{GROUP}"


def _owner(body: kopf.Body) -> Owner:
    meta = body["metadata"]
    return Owner(name=meta["name"], namespace=meta["namespace"], uid=meta["uid"])


def _address(ip: str, port: int) -> str:
    return f"[{ip}]:{port}" if ":" in ip else f"{ip}:{port}"


def register_handlers(
    registry: kopf.OperatorRegistry,
    settings: Settings,
    api_factory: Callable[[], Any] = make_api_client,
    metrics: OperatorMetrics | None = None,
) -> None:
    """Register every handler of the operator in `registry` (`metrics`: where the handlers count)."""
    metrics = metrics or OperatorMetrics()
    api_lock = threading.Lock()
    api_holder: list[KubeAPI] = []
    # One reconciliation (or clean-up) at a time per resource.
    resource_locks: dict[str, threading.Lock] = {}

    def api() -> KubeAPI:
        with api_lock:
            if not api_holder:
                api_holder.append(KubeAPI(api_factory()))
            return api_holder[0]

    def lock_for(uid: str) -> threading.Lock:
        with api_lock:
            return resource_locks.setdefault(uid, threading.Lock())

    @kopf.on.startup(id="configure", registry=registry)
    def configure(settings: kopf.OperatorSettings, **_: Any) -> None:
        # The CRD's structural schema prunes unknown status fields: keep Kopf's bookkeeping in annotations.
        settings.persistence.progress_storage = kopf.AnnotationsProgressStorage(prefix=STORAGE_PREFIX)
        settings.persistence.diffbase_storage = kopf.AnnotationsDiffBaseStorage(prefix=STORAGE_PREFIX)
        settings.persistence.finalizer = FINALIZER
        # Only warnings become Kubernetes events by themselves; phase changes are posted explicitly.
        settings.posting.level = logging.WARNING

    @kopf.on.login(id="login", registry=registry)
    def login(**kwargs: Any) -> kopf.ConnectionInfo | None:
        # $KUBECONFIG is read now (not at import time, as the kubernetes package does).
        if os.environ.get("KUBECONFIG") or not os.environ.get("KUBERNETES_SERVICE_HOST"):
            return kopf.login_with_kubeconfig(**kwargs)
        return kopf.login_with_service_account(**kwargs)

    # Pod changes wake the owner's reconciliation loop at once (the loop still runs every interval).
    wakers: dict[str, asyncio.Event] = {}

    def wake(uid: str) -> None:
        event = wakers.get(uid)
        if event is not None:
            event.set()

    def reconcile_and_report(body: kopf.Body, logger: Any) -> None:
        """One pass; the status goes straight to the status subresource (a daemon has no patch to return)."""
        owner = _owner(body)
        status = dict(body.get("status") or {})
        with lock_for(owner.uid):
            outcome = reconcile(
                api(),
                settings,
                owner=owner,
                spec=dict(body.get("spec") or {}),
                generation=body["metadata"].get("generation"),
                old_status=status,
                logger=logger,
            )
            if any(status.get(key) != value for key, value in outcome.status.items()):
                api().patch_status(owner.namespace, owner.name, outcome.status)
        metrics.reconciled(owner.namespace, owner.name, outcome.observed, outcome.status.get("phase"))
        for event in outcome.events:
            kopf.event(body, type=event.type, reason=event.reason, message=event.message)

    @kopf.daemon(GROUP, VERSION, PLURAL, id="reconcile", cancellation_timeout=30, registry=registry)
    async def reconcile_loop(body: kopf.Body, stopped: kopf.DaemonStopped, logger: Any, **_: Any) -> None:
        # Compare desired and observed state on start, on every pod change, on a spec change, and every
        # interval; `body` is Kopf's live view of the resource.
        uid = body["metadata"]["uid"]
        woken = wakers.setdefault(uid, asyncio.Event())
        loop = asyncio.get_running_loop()
        try:
            while not stopped:
                woken.clear()
                try:
                    await asyncio.to_thread(reconcile_and_report, body, logger)
                except Exception as error:  # the API may fail for a while: keep the loop alive
                    meta = body["metadata"]
                    metrics.failed(meta.get("namespace", ""), meta.get("name", ""), error)
                    logger.warning(f"reconciliation failed, will retry: {error}")
                deadline = loop.time() + settings.reconcile_interval_seconds
                while not stopped and not woken.is_set() and loop.time() < deadline:
                    # Short slices so that a stop request (deletion, shutdown) ends the loop promptly.
                    with contextlib.suppress(asyncio.TimeoutError):
                        await asyncio.wait_for(
                            woken.wait(), timeout=min(1.0, max(0.0, deadline - loop.time()))
                        )
        finally:
            wakers.pop(uid, None)

    @kopf.on.event(
        "", "v1", "pods", labels={LABEL_MANAGED_BY: MANAGER_NAME}, id="pod-change", registry=registry
    )
    async def on_pod_change(body: kopf.Body, **_: Any) -> None:
        for ref in body.get("metadata", {}).get("ownerReferences") or ():
            if ref.get("kind") == KIND and ref.get("apiVersion", "").startswith(f"{GROUP}/"):
                wake(ref.get("uid"))

    @kopf.on.update(GROUP, VERSION, PLURAL, field="spec", id="spec-change", registry=registry)
    async def on_spec_change(body: kopf.Body, old: Any, new: Any, patch: kopf.Patch, **_: Any) -> None:
        # A latency measured on another template or benchmark says nothing about this spec; one measured on
        # the same pods does (a scale, an interval change): keep it, with no new benchmark.
        if not _latency_still_valid((body.get("status") or {}).get("latency"), old, new):
            patch.status["latency"] = None
            metrics.latency_dropped(body["metadata"]["namespace"], body["metadata"]["name"])
        wake(body["metadata"]["uid"])  # roll the pods now, not at the next interval

    def _latency_still_valid(latency: Any, old: Any, new: Any) -> bool:
        try:
            return keeps_latency(latency, parse_spec(dict(old or {})), parse_spec(dict(new or {})), settings)
        except SpecError:
            return False

    @kopf.on.delete(GROUP, VERSION, PLURAL, id="cleanup", registry=registry)
    def on_delete(body: kopf.Body, logger: Any, **_: Any) -> None:
        owner = _owner(body)
        with lock_for(owner.uid):
            clean_up(api(), owner, logger)
        metrics.forget(owner.namespace, owner.name)
        with api_lock:
            resource_locks.pop(owner.uid, None)

    if settings.benchmark.enabled:

        @kopf.timer(
            GROUP,
            VERSION,
            PLURAL,
            id="latency",
            interval=settings.benchmark.check_interval_seconds,
            registry=registry,
        )
        async def measure_latency(
            body: kopf.Body,
            spec: Any,
            status: Any,
            annotations: Any,
            patch: kopf.Patch,
            logger: Any,
            **_: Any,
        ) -> None:
            # An async timer: a measurement runs in its own task and never blocks the other handlers.
            try:
                parsed = parse_spec(dict(spec))
            except SpecError:
                return  # the reconciler reports it in the status
            current_hash = current_template_hash(parsed, settings)
            requested = benchmark_requested(annotations)
            now = datetime.now(timezone.utc)
            latency = status.get("latency")
            if not benchmark_due(
                latency=latency,
                bench=parsed.benchmark,
                requested=requested,
                current_hash=current_hash,
                now=now,
            ):
                return
            owner = _owner(body)
            observed = podview.owned_by(await asyncio.to_thread(api().list_pods, owner.namespace), owner.uid)
            targets = [
                PodTarget(podview.name_of(pod), _address(ip, settings.benchmark.port))
                for pod in sorted(observed, key=podview.name_of)
                if podview.hash_of(pod) == current_hash
                and not podview.is_worker(pod)  # a multi-node group serves (and is measured) on its leader
                and podview.is_ready(pod)
                and not podview.is_terminating(pod)
                and (ip := podview.pod_ip(pod))
            ]
            if not targets:
                return  # nothing serves yet: measure once pods are ready (a request stays pending)
            logger.info(f"measuring latency on {len(targets)} pod(s)")
            measurements = await measure_pods(targets, parsed.benchmark, settings.benchmark.timeout_seconds)
            per_device = settings.device(parsed.device).memory_bandwidth
            result = summarize(
                measurements,
                parsed.benchmark,
                current_hash=current_hash,
                now=now,
                bandwidth=per_device * parsed.cards if per_device else None,
            )
            patch.status["latency"] = result
            metrics.measured(owner.namespace, owner.name, result)
            if requested:
                patch.metadata.annotations[BENCHMARK_ANNOTATION] = None
            errors = [m for m in measurements if m.error]
            if "seconds" in result:
                message = (
                    f"{result['maxNewTokens']} tokens in {result['seconds']} s "
                    f"({result['tokensPerSecond']} tokens/s, median over {len(targets) - len(errors)} pod(s))"
                )
                kopf.event(body, type="Normal", reason="LatencyMeasured", message=message)
            for failure in errors:
                kopf.event(
                    body, type="Warning", reason="LatencyFailed", message=f"{failure.pod}: {failure.error}"
                )
