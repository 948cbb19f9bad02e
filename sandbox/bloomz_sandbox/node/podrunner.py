"""The sandbox's local pod runner: a development tool that plays node + scheduler, NOT a kubelet.

This module is the runner loop (nodes, watch, scheduling, binding, pod DNS); `kubelet` runs the
containers of scheduled pods and `status_reporter` writes pods/status and Events.

It registers one simulated Node, or several (`node_count`: sandbox-node, sandbox-node-2, ...; each
with the configured capacity, 8 `habana.ai/gaudi` by default, all sharing one node root directory),
watches Pods in every namespace through the `kubernetes` client and, on each change (and every
`resync_seconds` anyway, level-based: it never trusts server-side filtering):

- schedules: a pod goes to the first node where its requests fit the node minus the pods already
  bound there and its required pod anti-affinity holds; otherwise it stays Pending with
  PodScheduled=False, reason Unschedulable and kube-scheduler's message ("0/1 nodes are available:
  1 Insufficient habana.ai/gaudi."). A bound pod gets spec.nodeName.
- runs only pods that ask for no accelerator (this machine has no Gaudi or GPU): a scheduled
  hpu/cuda pod stays Pending, its container waiting with reason ContainerCreating and the
  message "sandbox: habana.ai/gaudi devices are simulated, only CPU pods run locally".
- runs each container of a CPU pod as a local process group (see process_spec.py for command,
  env and path translation) on the pod's own loopback address (127.0.0.X, env BLOOMZ_BIND_HOST),
  stdout/stderr to <log dir>/<namespace>/<pod>/<container>.log; secret and configMap volumes are
  written into the pod's volume directory first (volume_sources.py; a missing object keeps the
  container waiting in ContainerCreating with the kubelet's message, retried);
- stands in for cluster DNS: pods with spec.hostname + spec.subdomain resolve as
  `<hostname>.<subdomain>[.<ns>[.svc[.cluster.local]]]` for every local process (cluster_dns.py,
  nss_wrapper with one hosts file kept up to date);
- reflects the processes through pods/status: phase, podIP, hostIP, startTime, conditions,
  containerStatuses (ready from the readiness probe: the runtime's grpc.health.v1 service);
- kills, with a pod's container, what it started outside its process tree (found by the pod's DNS
  identity in their environment: a worker's SSH sessions daemonize Open MPI's orted), as a
  container's cgroup would;
- restarts exited containers per restartPolicy (Always / OnFailure) after a short doubling
  back-off (CrashLoopBackOff meanwhile);
- stops a deleted pod's processes (SIGTERM to the main process, grace period, SIGKILL to all it
  started) and finalizes a pod left with deletionTimestamp (delete with gracePeriodSeconds=0);
- on stop(), stops every process it started.
"""

from __future__ import annotations

import contextlib
import json
import logging
import threading
import time
from pathlib import Path
from typing import Any

from kubernetes import client
from kubernetes.client.exceptions import ApiException
from kubernetes.watch.watch import iter_resp_lines

from bloomz_sandbox.node import cluster_dns, pod_status, scheduling
from bloomz_sandbox.node.addresses import LoopbackAddresses
from bloomz_sandbox.node.kubelet import Kubelet
from bloomz_sandbox.node.records import (
    HOST_IP,
    MERGE_PATCH,
    ContainerRecord,
    PodRecord,
    RunnerConfig,
    container_ports,
    default_capacity,
    pod_key,
)
from bloomz_sandbox.node.status_reporter import StatusReporter

__all__ = ["PodRunner", "RunnerConfig", "default_capacity"]

log = logging.getLogger(__name__)


class PodRunner:
    """Runs in two threads (a watch that wakes the loop, and the reconcile loop); start()/stop()."""

    def __init__(self, api_client: client.ApiClient, config: RunnerConfig) -> None:
        self.config = config
        # Any: raw dicts go in and raw JSON comes out (_preload_content=False), not the typed models.
        self.core: Any = client.CoreV1Api(api_client)
        self.addresses = LoopbackAddresses()
        self.allocatable = scheduling.parse_amounts(config.capacity)
        self.nodes = {
            name: {
                "kubernetes.io/hostname": name,
                "kubernetes.io/os": "linux",
                "kubernetes.io/arch": "amd64",
                **config.node_labels,
            }
            for name in config.node_names()
        }
        self.node_labels = self.nodes[config.node_name]  # the first node's (the single-node default)
        self.hosts_file = config.hosts_file or config.log_dir / "cluster-hosts"
        self._wake = threading.Event()
        self._records: dict[tuple[str, str, str], PodRecord] = {}
        self.reporter = StatusReporter(self.core, config.node_name)
        self.kubelet = Kubelet(
            self.core, config, self.reporter, self.addresses, self.hosts_file, self._wake.set
        )
        self._lock = threading.Lock()
        self._stopping = threading.Event()
        self._threads: list[threading.Thread] = []
        self._watch_response: Any = None

    # -- lifecycle ---------------------------------------------------------------------------------

    def start(self) -> PodRunner:
        for name in self.nodes:
            self.register_node(name)
        cluster_dns.write_atomically(self.hosts_file, cluster_dns.hosts_text([]))
        for target, name in ((self._watch_loop, "pod-watch"), (self._reconcile_loop, "pod-runner")):
            thread = threading.Thread(target=target, name=f"sandbox-{name}", daemon=True)
            thread.start()
            self._threads.append(thread)
        return self

    def stop(self) -> None:
        """Stop the loops, then every process this runner started (all at once, each with its grace)."""
        self._stopping.set()
        self._wake.set()
        response = self._watch_response
        if response is not None:
            with contextlib.suppress(Exception):  # interrupts the blocked read at once
                response.shutdown()
        for thread in self._threads:
            thread.join(timeout=30)
        self._threads.clear()
        with self._lock:
            records = list(self._records.values())
        for record in records:
            self.kubelet.begin_stop(record)
        for record in records:
            if record.stopping is not None:
                record.stopping.join()

    def kill_now(self) -> None:
        """SIGKILL every process this runner started, without waiting or taking the lock (which a hung
        stop may hold): the last resort when stop() overran its time."""
        records = list(self._records.copy().values())
        for record in records:
            for container in list(record.containers.values()):
                if container.process is not None:
                    container.process.kill_now()
            with contextlib.suppress(Exception):
                self.kubelet.kill_escaped(record)

    def __enter__(self) -> PodRunner:
        return self.start()

    def __exit__(self, *_exc: object) -> None:
        self.stop()

    # -- what tests and the main job may inspect ----------------------------------------------------

    def running_process_ids(self, namespace: str | None = None) -> list[int]:
        """Every live process (main processes and their descendants) this runner started (for the pods
        of one namespace: the operator's pod runs in its own)."""
        with self._lock:
            records = [r for r in self._records.values() if namespace is None or r.namespace == namespace]
        pids: list[int] = []
        for record in records:
            for container in record.containers.values():
                if container.process is not None:
                    pids.extend(p.pid for p in container.process.alive_processes())
        return sorted(set(pids))

    def main_process_id(self, namespace: str, name: str, container: str) -> int | None:
        with self._lock:
            for record in self._records.values():
                if (record.namespace, record.name) == (namespace, name) and container in record.containers:
                    process = record.containers[container].process
                    if process is not None and process.poll() is None:
                        return process.pid
        return None

    def log_path(self, namespace: str, name: str, container: str) -> Path:
        return self.kubelet.log_path(namespace, name, container)

    # -- the node ----------------------------------------------------------------------------------

    def register_node(self, name: str | None = None) -> None:
        name = name or self.config.node_name
        labels = self.nodes[name]
        node = {"apiVersion": "v1", "kind": "Node", "metadata": {"name": name, "labels": labels}, "spec": {}}
        try:
            self.core.create_node(node, _preload_content=False)
        except ApiException as error:
            if error.status != 409:
                raise
            self.core.patch_node(name, {"metadata": {"labels": labels}}, _content_type=MERGE_PATCH)
        now = pod_status.rfc3339(time.time())
        status = {
            "capacity": self.config.capacity,
            "allocatable": self.config.capacity,
            "addresses": [
                {"type": "InternalIP", "address": HOST_IP},
                {"type": "Hostname", "address": name},
            ],
            "conditions": [
                {
                    "type": "Ready",
                    "status": "True",
                    "reason": "SandboxPodRunnerReady",
                    "message": "sandbox pod runner (a development tool, not a kubelet) is running",
                    "lastHeartbeatTime": now,
                    "lastTransitionTime": now,
                }
            ],
            "nodeInfo": {"kubeletVersion": "sandbox", "operatingSystem": "linux", "architecture": "amd64"},
        }
        self.core.patch_node_status(
            name, {"status": status}, _content_type=MERGE_PATCH, _preload_content=False
        )

    # -- loops -------------------------------------------------------------------------------------

    def _watch_loop(self) -> None:
        """Wake the reconcile loop on every pod event (the loop itself re-lists: level-based)."""
        while not self._stopping.is_set():
            try:
                response = self.core.list_pod_for_all_namespaces(
                    watch=True, timeout_seconds=30, _preload_content=False, _request_timeout=(5, 60)
                )
                self._watch_response = response
                try:
                    if self._stopping.is_set():  # stop() ran before it could see this response
                        break
                    for _line in iter_resp_lines(response):
                        self._wake.set()
                        if self._stopping.is_set():
                            break
                finally:
                    self._watch_response = None
                    response.release_conn()
            except Exception as error:  # the API server going away must not end the runner
                log.debug("pod watch interrupted: %s", error)
                self._stopping.wait(1.0)

    def _reconcile_loop(self) -> None:
        while not self._stopping.is_set():
            self._wake.clear()
            try:
                self.reconcile_once()
            except Exception:
                log.exception("sandbox pod runner: reconcile failed; retrying")
            self._wake.wait(self.config.resync_seconds)

    # -- reconciliation ----------------------------------------------------------------------------

    def list_pods(self) -> list[dict[str, Any]]:
        response = self.core.list_pod_for_all_namespaces(_preload_content=False, _request_timeout=30)
        items: list[dict[str, Any]] = json.loads(response.data).get("items") or []
        return items

    def reconcile_once(self) -> None:
        pods = {pod_key(pod): pod for pod in self.list_pods()}
        with self._lock:
            for key, record in list(self._records.items()):
                if key not in pods:
                    self.kubelet.begin_stop(record)
                    if record.stopped:
                        self._forget(key, record)
        for key, pod in pods.items():
            node_name = (pod.get("spec") or {}).get("nodeName")
            if node_name and node_name not in self.nodes:
                continue
            with self._lock:
                known = self._records.get(key)
                if known is None:
                    if (pod.get("status") or {}).get("phase") in ("Succeeded", "Failed"):
                        continue  # finished before this runner started: nothing to run
                    known = PodRecord(namespace=key[0], name=key[1], uid=key[2], pod=pod)
                    self._records[key] = known
                known.pod = pod
                record = known
            try:
                self._reconcile_pod(record)
            except Exception:
                log.exception("sandbox pod runner: pod %s", record.label)
        self._update_dns()

    def _update_dns(self) -> None:
        """Rewrite the pod DNS hosts file if a pod address came or went."""
        with self._lock:
            records = [r for r in self._records.values() if r.pod_ip and not r.stopped]
        found = [cluster_dns.pod_address(r.pod, r.pod_ip) for r in records]
        text = cluster_dns.hosts_text([a for a in found if a is not None])
        if cluster_dns.write_atomically(self.hosts_file, text):
            log.info("sandbox: pod DNS records now %s", text.count("\n"))

    def _reconcile_pod(self, record: PodRecord) -> None:
        metadata = record.pod.get("metadata") or {}
        if metadata.get("deletionTimestamp"):
            self.kubelet.begin_stop(record)
            if record.stopped:
                self.kubelet.finalize_deletion(record)
            return
        if not record.scheduled and not self._schedule(record):
            self.reporter.report(record)
            return
        now = time.time()
        for container in record.containers.values():
            self.kubelet.step(record, container, now)
        self.reporter.report(record)

    def _node_states(self, exclude: PodRecord) -> list[scheduling.NodeState]:
        """Every node with the pods bound to it that still hold their room."""
        with self._lock:
            bound = [
                r
                for r in self._records.values()
                if r is not exclude and r.scheduled and not r.stopped and not r.finished
            ]
        return [
            scheduling.NodeState(
                name=name,
                labels=labels,
                allocatable=self.allocatable,
                pods=[r.pod for r in bound if r.node_name == name],
            )
            for name, labels in self.nodes.items()
        ]

    def _schedule(self, record: PodRecord) -> bool:
        try:
            node_name, message = scheduling.choose_node(record.pod, self._node_states(exclude=record))
        except ValueError as error:  # a selector the sandbox does not understand
            node_name, message = None, f"sandbox: {error}"
        if node_name is None:
            if message != record.unschedulable_message:
                self.reporter.event(record, "FailedScheduling", message, "Warning")
            record.unschedulable_message = message
            return False
        record.scheduled = True
        record.node_name = node_name
        record.unschedulable_message = ""
        record.start_time = time.time()
        self._bind(record)
        self.reporter.event(record, "Scheduled", f"Successfully assigned {record.label} to {node_name}")
        spec = record.pod.get("spec") or {}
        record.containers = {c["name"]: ContainerRecord(spec=c) for c in spec.get("containers") or []}
        accelerators = scheduling.requested_accelerators(record.pod)
        if accelerators:
            record.waiting_message = (
                f"sandbox: {', '.join(accelerators)} devices are simulated, only CPU pods run locally"
            )
        else:
            try:
                record.pod_ip = self.addresses.allocate(container_ports(record.pod))
            except RuntimeError as error:  # shown on the pod instead of a process without an address
                record.waiting_message = f"sandbox: {error}"
            needs_dns = cluster_dns.pod_address(record.pod, record.pod_ip) is not None
            if needs_dns and self.config.nss_wrapper is None and not record.waiting_message:
                record.waiting_message = cluster_dns.MISSING_NSS_WRAPPER
                self.reporter.event(record, "FailedMount", cluster_dns.MISSING_NSS_WRAPPER, "Warning")
        log.info("sandbox: %s scheduled on %s (pod IP %s)", record.label, node_name, record.pod_ip)
        self._update_dns()
        return True

    def _bind(self, record: PodRecord) -> None:
        try:
            self.core.patch_namespaced_pod(
                record.name,
                record.namespace,
                {"spec": {"nodeName": record.node_name}},
                _content_type=MERGE_PATCH,
                _preload_content=False,
            )
        except ApiException as error:  # the status still says where it runs
            log.warning("sandbox: could not set spec.nodeName of %s: %s", record.label, error.reason)

    def _forget(self, key: tuple[str, str, str], record: PodRecord) -> None:
        self._records.pop(key, None)
        log.info("sandbox: %s is gone", record.label)
