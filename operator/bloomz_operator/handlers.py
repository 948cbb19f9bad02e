"""Kopf handlers: thin wrappers that call the reconciler and the latency measurement.

`register_handlers(registry, settings)` binds them to a registry with the operator settings (timer intervals
come from the settings, so they cannot be module-level decorators).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import random
import threading
import time
from collections.abc import Callable
from datetime import datetime, timezone
from typing import Any

import kopf

from . import incluster
from . import pods as podview
from .access import OPERATOR_KEY_ITEM, api_key_secret_name, service_host
from .apikeys import secret_value
from .backoff import backoff_delay, jittered
from .builders import Owner
from .cache import LABEL_CACHE_KEY
from .constants import BENCHMARK_ANNOTATION, GROUP, KIND, LABEL_MANAGED_BY, MANAGER_NAME, PLURAL, VERSION
from .groups import current_template_hash
from .kubeapi import OWNED_PODS_SELECTOR, KubeAPI, make_api_client
from .latency import Access, PodTarget, benchmark_due, benchmark_requested, measure_pods, summarize
from .metrics import OperatorMetrics
from .planning import RolloutGate
from .reconciler import clean_up, failed_pass_status, reconcile
from .scaling import keeps_latency
from .settings import Settings
from .spec import InferenceSpec, SpecError, parse_spec

FINALIZER = f"{GROUP}/finalizer"
STORAGE_PREFIX = f"operator.{GROUP}"
# Consecutive failed passes before the failure is written into the status (one blip is not news).
FAILURES_BEFORE_STATUS = 2
# The client gives up on a watch stream this long after the server was asked to end it.
WATCH_CLIENT_GRACE_S = 60.0


def _owner(body: kopf.Body) -> Owner:
    meta = body["metadata"]
    return Owner(name=meta["name"], namespace=meta["namespace"], uid=meta["uid"])


def _address(ip: str, port: int) -> str:
    return f"[{ip}]:{port}" if ":" in ip else f"{ip}:{port}"


def latency_access(api: KubeAPI, owner: Owner, spec: InferenceSpec) -> Access:
    """The operator's own key (auth on) and the TLS Secret's ca.crt (TLS on), read from their Secrets."""
    key = None
    if spec.api_key_secret:
        secret = api.read_secret(owner.namespace, api_key_secret_name(owner.name))
        key = secret_value(secret, OPERATOR_KEY_ITEM)
    if not spec.tls_secret:
        return Access(api_key=key)
    ca = secret_value(api.read_secret(owner.namespace, spec.tls_secret), "ca.crt")
    host = service_host(owner.name, owner.namespace)
    return Access(api_key=key, tls=True, ca_pem=ca.encode() if ca else None, server_name=host)


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
    gate = RolloutGate(settings.rollout.max_resources_at_once, settings.rollout.max_resources_per_minute)
    # uids whose latency timer has had its random start offset (timers of resources created together would
    # otherwise tick together forever).
    timer_started: set[str] = set()

    def api() -> KubeAPI:
        with api_lock:
            if not api_holder:
                api_holder.append(KubeAPI(api_factory(), settings.api))
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
        configure_api(settings)

    def configure_api(kopf_settings: kopf.OperatorSettings) -> None:
        """Kopf's own API calls: bounded like ours, and pods watched with the server-side selector."""
        api_settings = settings.api
        kopf_settings.networking.request_timeout = api_settings.request_timeout_seconds
        kopf_settings.networking.connect_timeout = api_settings.connect_timeout_seconds
        kopf_settings.watching.connect_timeout = api_settings.connect_timeout_seconds
        kopf_settings.watching.server_timeout = api_settings.watch_timeout_seconds
        kopf_settings.watching.client_timeout = api_settings.watch_timeout_seconds + WATCH_CLIENT_GRACE_S
        kopf_settings.watching.label_selectors["", "v1", "pods"] = OWNED_PODS_SELECTOR

    @kopf.on.login(id="login", registry=registry)
    def login(**kwargs: Any) -> kopf.ConnectionInfo | None:
        # $KUBECONFIG is read now (not at import time, as the kubernetes package does).
        if not incluster.in_cluster():
            return kopf.login_with_kubeconfig(**kwargs)
        ca_path = incluster.service_account_dir() / "ca.crt"
        return kopf.ConnectionInfo(
            server=incluster.server_url(),
            ca_path=str(ca_path) if ca_path.is_file() else None,
            token=incluster.read_file("token"),
            default_namespace=incluster.read_file("namespace"),
        )

    # Pod changes wake the owner's reconciliation loop at once (the loop still runs every interval).
    wakers: dict[str, asyncio.Event] = {}

    def wake(uid: str) -> None:
        event = wakers.get(uid)
        if event is not None:
            event.set()

    def reconcile_and_report(body: kopf.Body, logger: Any) -> bool:
        """One pass; the status goes straight to the status subresource (a daemon has no patch to return).
        False when the API server refused a write (the status says which and why)."""
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
                gate=gate,
            )
            if any(status.get(key) != value for key, value in outcome.status.items()):
                api().patch_status(owner.namespace, owner.name, outcome.status)
        metrics.reconciled(owner.namespace, owner.name, outcome.observed, outcome.status.get("phase"))
        for event in outcome.events:
            kopf.event(body, type=event.type, reason=event.reason, message=event.message)
        return outcome.api_failure is None

    def retry_delay(failures: int) -> float:
        api_settings = settings.api
        return backoff_delay(
            failures,
            base=api_settings.retry_base_seconds,
            cap=api_settings.retry_max_seconds,
            rand=random.random(),
        )

    def report_failure(body: kopf.Body, error: BaseException, logger: Any) -> None:
        """Best effort: the API server that failed the pass may refuse this write too."""
        owner = _owner(body)
        try:
            api().patch_status(owner.namespace, owner.name, failed_pass_status(error, body.get("status")))
        except Exception as patch_error:  # logged; the next pass tries again
            logger.debug(f"could not write the failure into the status: {patch_error}")

    @kopf.daemon(GROUP, VERSION, PLURAL, id="reconcile", cancellation_timeout=30, registry=registry)
    async def reconcile_loop(body: kopf.Body, stopped: kopf.DaemonStopped, logger: Any, **_: Any) -> None:
        # Compare desired and observed state on start, on every pod change, on a spec change, and every
        # interval; `body` is Kopf's live view of the resource.
        uid = body["metadata"]["uid"]
        woken = wakers.setdefault(uid, asyncio.Event())
        loop = asyncio.get_running_loop()
        failures = 0
        try:
            while not stopped:
                woken.clear()
                try:
                    in_sync = await asyncio.to_thread(reconcile_and_report, body, logger)
                except Exception as error:  # the API may fail for a while: keep the loop alive
                    meta = body["metadata"]
                    metrics.failed(meta.get("namespace", ""), meta.get("name", ""), error)
                    failures += 1
                    delay = retry_delay(failures)
                    logger.warning(f"reconciliation failed ({failures}x), retrying in {delay:.1f} s: {error}")
                    if failures >= FAILURES_BEFORE_STATUS:
                        await asyncio.to_thread(report_failure, body, error, logger)
                else:
                    for waiting in gate.to_wake(time.monotonic()):  # a rollout slot freed: next in line
                        wake(waiting)
                    # A refused write (already in the status) is retried with backoff: an admin may fix it.
                    failures = 0 if in_sync else failures + 1
                    interval = jittered(settings.reconcile_interval_seconds, random.random())
                    delay = interval if in_sync else min(interval, retry_delay(failures))
                # A pod or spec change wakes the loop early, also during a backoff: the change may be the fix.
                deadline = loop.time() + delay
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
        if LABEL_CACHE_KEY in (body.get("metadata", {}).get("labels") or {}):
            # A model download's pod (owned by its Job, shared by every resource of that cache key): each
            # resource looks again; only those waiting on that key find something new.
            for uid in list(wakers):
                wake(uid)
            return
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
        gate.finish(owner.uid)
        timer_started.discard(owner.uid)
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
            **kwargs: Any,
        ) -> None:
            # An async timer: a measurement runs in its own task and never blocks the other handlers.
            uid = body["metadata"]["uid"]
            if uid not in timer_started:
                timer_started.add(uid)
                stopped = kwargs["stopped"]  # Kopf's timer protocol does not name it
                await stopped.wait(random.uniform(0, settings.benchmark.check_interval_seconds))
                if stopped:
                    return
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
                jitter_key=uid,
            ):
                return
            if not (status.get("readyReplicas") or 0):
                return  # nothing serves (the reconciler keeps this count): no need to list the pods
            if status.get("templateHash", current_hash) != current_hash:
                return  # a rollout waits for its slot: measure the new template once it serves
            owner = _owner(body)
            observed = podview.owned_by(
                await asyncio.to_thread(api().list_pods, owner.namespace, owner.name), owner.uid
            )
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
            access = await asyncio.to_thread(latency_access, api(), owner, parsed)
            measurements = await measure_pods(
                targets, parsed.benchmark, settings.benchmark.timeout_seconds, access
            )
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
