"""Kopf handlers: thin wrappers that call the reconciler and the latency measurement.

`Handlers` holds what the handlers share (one API client, a lock per resource, the rollout gate, the
reconcile loops to wake) and is the one writer of `status.latency`; `register_handlers(registry, settings)`
binds its methods to a registry (timer intervals come from the settings, so they cannot be module-level
decorators).
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
from .constants import BENCHMARK_ANNOTATION, GROUP, KIND, LABEL_MANAGED_BY, MANAGER_NAME, PLURAL, VERSION
from .groups import current_template_hash
from .kubeapi import OWNED_PODS_SELECTOR, KubeAPI, make_api_client
from .latency import (
    Access,
    benchmark_due,
    benchmark_requested,
    benchmark_targets,
    measure_pods,
    measured_message,
    summarize,
)
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


class Handlers:
    """The operator's handlers and the state they share. `metrics`: where the handlers count."""

    def __init__(
        self, settings: Settings, api_factory: Callable[[], Any], metrics: OperatorMetrics | None = None
    ) -> None:
        self.settings = settings
        self.metrics = metrics or OperatorMetrics()
        self._api_factory = api_factory
        self._api_lock = threading.Lock()
        self._api: KubeAPI | None = None
        # One reconciliation (or clean-up) at a time per resource.
        self._resource_locks: dict[str, threading.Lock] = {}
        self.gate = RolloutGate(
            settings.rollout.max_resources_at_once, settings.rollout.max_resources_per_minute
        )
        # uids whose latency timer has had its random start offset (timers of resources created together
        # would otherwise tick together forever).
        self._timer_started: set[str] = set()
        # Pod changes wake the owner's reconciliation loop at once (the loop still runs every interval).
        self._wakers: dict[str, asyncio.Event] = {}

    def api(self) -> KubeAPI:
        with self._api_lock:
            if self._api is None:
                self._api = KubeAPI(self._api_factory(), self.settings.api)
            return self._api

    def _lock_for(self, uid: str) -> threading.Lock:
        with self._api_lock:
            return self._resource_locks.setdefault(uid, threading.Lock())

    def wake(self, uid: str) -> None:
        event = self._wakers.get(uid)
        if event is not None:
            event.set()

    # --- activities -------------------------------------------------------------------------------------

    def configure(self, settings: kopf.OperatorSettings, **_: Any) -> None:
        # The CRD's structural schema prunes unknown status fields: keep Kopf's bookkeeping in annotations.
        settings.persistence.progress_storage = kopf.AnnotationsProgressStorage(prefix=STORAGE_PREFIX)
        settings.persistence.diffbase_storage = kopf.AnnotationsDiffBaseStorage(prefix=STORAGE_PREFIX)
        settings.persistence.finalizer = FINALIZER
        # Only warnings become Kubernetes events by themselves; phase changes are posted explicitly.
        settings.posting.level = logging.WARNING
        self._configure_api(settings)

    def _configure_api(self, kopf_settings: kopf.OperatorSettings) -> None:
        """Kopf's own API calls: bounded like ours, and pods watched with the server-side selector."""
        api_settings = self.settings.api
        kopf_settings.networking.request_timeout = api_settings.request_timeout_seconds
        kopf_settings.networking.connect_timeout = api_settings.connect_timeout_seconds
        kopf_settings.watching.connect_timeout = api_settings.connect_timeout_seconds
        kopf_settings.watching.server_timeout = api_settings.watch_timeout_seconds
        kopf_settings.watching.client_timeout = api_settings.watch_timeout_seconds + WATCH_CLIENT_GRACE_S
        kopf_settings.watching.label_selectors["", "v1", "pods"] = OWNED_PODS_SELECTOR

    @staticmethod
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

    # --- reconciliation ---------------------------------------------------------------------------------

    def reconcile_and_report(self, body: kopf.Body, logger: Any) -> bool:
        """One pass; the status goes straight to the status subresource (a daemon has no patch to return).
        False when the API server refused a write (the status says which and why)."""
        owner = _owner(body)
        status = dict(body.get("status") or {})
        with self._lock_for(owner.uid):
            outcome = reconcile(
                self.api(),
                self.settings,
                owner=owner,
                spec=dict(body.get("spec") or {}),
                generation=body["metadata"].get("generation"),
                old_status=status,
                logger=logger,
                gate=self.gate,
            )
            if any(status.get(key) != value for key, value in outcome.status.items()):
                self.api().patch_status(owner.namespace, owner.name, outcome.status)
        self.metrics.reconciled(owner.namespace, owner.name, outcome.observed, outcome.status.get("phase"))
        for event in outcome.events:
            kopf.event(body, type=event.type, reason=event.reason, message=event.message)
        return outcome.api_failure is None

    def _retry_delay(self, failures: int) -> float:
        api_settings = self.settings.api
        return backoff_delay(
            failures,
            base=api_settings.retry_base_seconds,
            cap=api_settings.retry_max_seconds,
            rand=random.random(),
        )

    def _report_failure(self, body: kopf.Body, error: BaseException, logger: Any) -> None:
        """Best effort: the API server that failed the pass may refuse this write too."""
        owner = _owner(body)
        try:
            self.api().patch_status(
                owner.namespace, owner.name, failed_pass_status(error, body.get("status"))
            )
        except Exception as patch_error:  # logged; the next pass tries again
            logger.debug(f"could not write the failure into the status: {patch_error}")

    async def reconcile_loop(
        self, body: kopf.Body, stopped: kopf.DaemonStopped, logger: Any, **_: Any
    ) -> None:
        # Compare desired and observed state on start, on every pod change, on a spec change, and every
        # interval; `body` is Kopf's live view of the resource.
        uid = body["metadata"]["uid"]
        woken = self._wakers.setdefault(uid, asyncio.Event())
        loop = asyncio.get_running_loop()
        failures = 0
        try:
            while not stopped:
                woken.clear()
                try:
                    in_sync = await asyncio.to_thread(self.reconcile_and_report, body, logger)
                except Exception as error:  # the API may fail for a while: keep the loop alive
                    meta = body["metadata"]
                    self.metrics.failed(meta.get("namespace", ""), meta.get("name", ""), error)
                    failures += 1
                    delay = self._retry_delay(failures)
                    logger.warning(f"reconciliation failed ({failures}x), retrying in {delay:.1f} s: {error}")
                    if failures >= FAILURES_BEFORE_STATUS:
                        await asyncio.to_thread(self._report_failure, body, error, logger)
                else:
                    for waiting in self.gate.to_wake(time.monotonic()):  # a rollout slot freed: next in line
                        self.wake(waiting)
                    # A refused write (already in the status) is retried with backoff: an admin may fix it.
                    failures = 0 if in_sync else failures + 1
                    interval = jittered(self.settings.reconcile_interval_seconds, random.random())
                    delay = interval if in_sync else min(interval, self._retry_delay(failures))
                # A pod or spec change wakes the loop early, also during a backoff: the change may be the fix.
                deadline = loop.time() + delay
                while not stopped and not woken.is_set() and loop.time() < deadline:
                    # Short slices so that a stop request (deletion, shutdown) ends the loop promptly.
                    with contextlib.suppress(asyncio.TimeoutError):
                        await asyncio.wait_for(
                            woken.wait(), timeout=min(1.0, max(0.0, deadline - loop.time()))
                        )
        finally:
            self._wakers.pop(uid, None)

    async def on_pod_change(self, body: kopf.Body, **_: Any) -> None:
        for ref in body.get("metadata", {}).get("ownerReferences") or ():
            if ref.get("kind") == KIND and ref.get("apiVersion", "").startswith(f"{GROUP}/"):
                self.wake(ref.get("uid"))

    async def on_spec_change(self, body: kopf.Body, old: Any, new: Any, **_: Any) -> None:
        # A latency measured on another template or benchmark says nothing about this spec; one measured on
        # the same pods does (a scale, an interval change): keep it, with no new benchmark.
        if not self._latency_still_valid((body.get("status") or {}).get("latency"), old, new):
            await asyncio.to_thread(self._write_latency, _owner(body), None)
        self.wake(body["metadata"]["uid"])  # roll the pods now, not at the next interval

    def _latency_still_valid(self, latency: Any, old: Any, new: Any) -> bool:
        try:
            return keeps_latency(
                latency, parse_spec(dict(old or {})), parse_spec(dict(new or {})), self.settings
            )
        except SpecError:
            return False

    def on_delete(self, body: kopf.Body, logger: Any, **_: Any) -> None:
        owner = _owner(body)
        with self._lock_for(owner.uid):
            clean_up(self.api(), owner, logger)
        self.gate.finish(owner.uid)
        self._timer_started.discard(owner.uid)
        self.metrics.forget(owner.namespace, owner.name)
        with self._api_lock:
            self._resource_locks.pop(owner.uid, None)

    # --- latency ----------------------------------------------------------------------------------------

    def _write_latency(self, owner: Owner, latency: dict[str, Any] | None) -> None:
        """The only writer of `status.latency` (None removes it): a measurement, or a spec change that
        makes the last one meaningless."""
        self.api().patch_status(owner.namespace, owner.name, {"latency": latency})
        if latency is None:
            self.metrics.latency_dropped(owner.namespace, owner.name)
        else:
            self.metrics.measured(owner.namespace, owner.name, latency)

    async def measure_latency(
        self,
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
        if uid not in self._timer_started:
            self._timer_started.add(uid)
            stopped = kwargs["stopped"]  # Kopf's timer protocol does not name it
            await stopped.wait(random.uniform(0, self.settings.benchmark.check_interval_seconds))
            if stopped:
                return
        try:
            parsed = parse_spec(dict(spec))
        except SpecError:
            return  # the reconciler reports it in the status
        current_hash = current_template_hash(parsed, self.settings)
        requested = benchmark_requested(annotations)
        now = datetime.now(timezone.utc)
        latency = status.get("latency")
        due = benchmark_due(
            latency=latency,
            bench=parsed.benchmark,
            requested=requested,
            current_hash=current_hash,
            now=now,
            jitter_key=uid,
        )
        if not due or not (status.get("readyReplicas") or 0):
            return  # nothing serves (the reconciler keeps this count): no need to list the pods
        if status.get("templateHash", current_hash) != current_hash:
            return  # a rollout waits for its slot: measure the new template once it serves
        owner = _owner(body)
        observed = podview.owned_by(
            await asyncio.to_thread(self.api().list_pods, owner.namespace, owner.name), owner.uid
        )
        targets = benchmark_targets(observed, current_hash, self.settings.benchmark.port)
        if not targets:
            return  # nothing serves yet: measure once pods are ready (a request stays pending)
        logger.info(f"measuring latency on {len(targets)} pod(s)")
        access = await asyncio.to_thread(latency_access, self.api(), owner, parsed)
        measurements = await measure_pods(
            targets, parsed.benchmark, self.settings.benchmark.timeout_seconds, access
        )
        per_device = self.settings.device(parsed.device).memory_bandwidth
        result = summarize(
            measurements,
            parsed.benchmark,
            current_hash=current_hash,
            now=now,
            bandwidth=per_device * parsed.cards if per_device else None,
        )
        await asyncio.to_thread(self._write_latency, owner, result)
        if requested:
            patch.metadata.annotations[BENCHMARK_ANNOTATION] = None
        message = measured_message(result, measurements)
        if message is not None:
            kopf.event(body, type="Normal", reason="LatencyMeasured", message=message)
        for failure in measurements:
            if failure.error:
                kopf.event(
                    body, type="Warning", reason="LatencyFailed", message=f"{failure.pod}: {failure.error}"
                )


def register_handlers(
    registry: kopf.OperatorRegistry,
    settings: Settings,
    api_factory: Callable[[], Any] = make_api_client,
    metrics: OperatorMetrics | None = None,
) -> Handlers:
    """Register every handler of the operator in `registry` (`metrics`: where the handlers count)."""
    handlers = Handlers(settings, api_factory, metrics)
    kopf.on.startup(id="configure", registry=registry)(handlers.configure)
    kopf.on.login(id="login", registry=registry)(handlers.login)
    kopf.daemon(GROUP, VERSION, PLURAL, id="reconcile", cancellation_timeout=30, registry=registry)(
        handlers.reconcile_loop
    )
    kopf.on.event(
        "", "v1", "pods", labels={LABEL_MANAGED_BY: MANAGER_NAME}, id="pod-change", registry=registry
    )(handlers.on_pod_change)
    kopf.on.update(GROUP, VERSION, PLURAL, field="spec", id="spec-change", registry=registry)(
        handlers.on_spec_change
    )
    kopf.on.delete(GROUP, VERSION, PLURAL, id="cleanup", registry=registry)(handlers.on_delete)
    if settings.benchmark.enabled:
        interval = settings.benchmark.check_interval_seconds
        kopf.timer(GROUP, VERSION, PLURAL, id="latency", interval=interval, registry=registry)(
            handlers.measure_latency
        )
    return handlers
