"""The sandbox's local pod runner: a development tool that plays node + scheduler, NOT a kubelet.

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
import math
import os
import sys
import threading
import time
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from kubernetes import client
from kubernetes.client.exceptions import ApiException
from kubernetes.watch.watch import iter_resp_lines

from bloomz_operator.sandbox import cluster_dns, pod_status, probes, scheduling, volume_sources
from bloomz_operator.sandbox.addresses import LoopbackAddresses
from bloomz_operator.sandbox.process_spec import (
    UnsupportedContainer,
    build_process_spec,
    host_path_failure,
    host_path_requirements,
    volume_directories,
)
from bloomz_operator.sandbox.processes import LocalProcess, kill_all, processes_with_env

log = logging.getLogger(__name__)

MERGE_PATCH = "application/merge-patch+json"
DEFAULT_NODE_NAME = "sandbox-node"
HOST_IP = "127.0.0.1"


def default_capacity(gaudi_cards: int = 8, gpus: int = 0) -> dict[str, str]:
    """A Gaudi2 server's worth of room, so only the accelerator count decides what fits."""
    return {
        "cpu": "160",
        "memory": "1Ti",
        "hugepages-2Mi": "256Gi",
        "ephemeral-storage": "1Ti",
        "pods": "110",
        scheduling.GAUDI_RESOURCE: str(gaudi_cards),
        scheduling.NVIDIA_GPU_RESOURCE: str(gpus),
    }


@dataclass
class RunnerConfig:
    node_root: Path  # the simulated node's filesystem: hostPath /x is <node_root>/x
    log_dir: Path
    node_name: str = DEFAULT_NODE_NAME
    node_count: int = 1  # simulated nodes: node_name, node_name-2, ... (same capacity and labels)
    capacity: dict[str, str] = field(default_factory=default_capacity)
    node_labels: dict[str, str] = field(default_factory=dict)
    interpreter: str = sys.executable  # the stand-in for the image's python3
    backoff_initial_seconds: float = 1.0
    backoff_max_seconds: float = 10.0
    backoff_reset_seconds: float = 60.0  # a container that ran this long starts a fresh back-off
    max_grace_seconds: float = 30.0
    resync_seconds: float = 1.0
    probe_timeout_seconds: float = 1.0
    hosts_file: Path | None = None  # the pod DNS names (nss_wrapper); default <log_dir>/cluster-hosts
    nss_wrapper: str | None = field(default_factory=cluster_dns.find_nss_wrapper)

    def node_names(self) -> list[str]:
        return [self.node_name] + [f"{self.node_name}-{i}" for i in range(2, self.node_count + 1)]


@dataclass
class ContainerRecord:
    spec: dict[str, Any]
    process: LocalProcess | None = None
    restart_count: int = 0
    crash_streak: int = 0
    next_start_at: float = 0.0
    last_termination: pod_status.Termination | None = None
    final: pod_status.Termination | None = None
    ready: bool = False
    error: str = ""  # why it cannot start (shown as the waiting message)
    error_reason: str = pod_status.WAITING_CREATE_ERROR


@dataclass
class PodRecord:
    namespace: str
    name: str
    uid: str
    pod: dict[str, Any]
    scheduled: bool = False
    node_name: str = ""
    unschedulable_message: str = ""
    waiting_message: str = ""  # why its containers will not start (simulated device, unsupported spec)
    pod_ip: str = ""
    start_time: float | None = None
    containers: dict[str, ContainerRecord] = field(default_factory=dict)
    last_status: dict[str, Any] | None = None
    stopping: threading.Thread | None = None
    stopped: bool = False

    @property
    def label(self) -> str:
        return f"{self.namespace}/{self.name}"


def pod_key(pod: Mapping[str, Any]) -> tuple[str, str, str]:
    metadata = pod.get("metadata") or {}
    return (metadata.get("namespace") or "default", metadata.get("name", ""), metadata.get("uid") or "")


def container_ports(pod: Mapping[str, Any]) -> list[int]:
    ports = {
        int(port["containerPort"])
        for container in (pod.get("spec") or {}).get("containers") or []
        for port in container.get("ports") or []
        if port.get("containerPort")
    }
    return sorted(ports)


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
        self._records: dict[tuple[str, str, str], PodRecord] = {}
        self._lock = threading.Lock()
        self._wake = threading.Event()
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
            self._begin_stop(record)
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
                self._kill_escaped(record)

    def __enter__(self) -> PodRunner:
        return self.start()

    def __exit__(self, *_exc: object) -> None:
        self.stop()

    # -- what tests and the main job may inspect ----------------------------------------------------

    def running_process_ids(self) -> list[int]:
        """Every live process (main processes and their descendants) this runner started."""
        with self._lock:
            records = list(self._records.values())
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
        return self.config.log_dir / namespace / name / f"{container}.log"

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
                    self._begin_stop(record)
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
            self._begin_stop(record)
            if record.stopped:
                self._finalize_deletion(record)
            return
        if not record.scheduled and not self._schedule(record):
            self._report(record)
            return
        now = time.time()
        for container in record.containers.values():
            self._step_container(record, container, now)
        self._report(record)

    def _node_states(self, exclude: PodRecord) -> list[scheduling.NodeState]:
        """Every node with the pods bound to it that still hold their room."""
        with self._lock:
            bound = [
                r
                for r in self._records.values()
                if r is not exclude and r.scheduled and not r.stopped and not self._finished(r)
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

    @staticmethod
    def _finished(record: PodRecord) -> bool:
        return bool(record.containers) and all(c.final is not None for c in record.containers.values())

    def _schedule(self, record: PodRecord) -> bool:
        try:
            node_name, message = scheduling.choose_node(record.pod, self._node_states(exclude=record))
        except ValueError as error:  # a selector the sandbox does not understand
            node_name, message = None, f"sandbox: {error}"
        if node_name is None:
            if message != record.unschedulable_message:
                self._event(record, "FailedScheduling", message, "Warning")
            record.unschedulable_message = message
            return False
        record.scheduled = True
        record.node_name = node_name
        record.unschedulable_message = ""
        record.start_time = time.time()
        self._bind(record)
        self._event(record, "Scheduled", f"Successfully assigned {record.label} to {node_name}")
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
                self._event(record, "FailedMount", cluster_dns.MISSING_NSS_WRAPPER, "Warning")
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

    def _event(self, record: PodRecord, reason: str, message: str, kind: str = "Normal") -> None:
        """A core/v1 Event on the pod, as kube-scheduler and kubelets post them (`kubectl get events`)."""
        now = pod_status.rfc3339(time.time())
        event = {
            "apiVersion": "v1",
            "kind": "Event",
            "metadata": {"generateName": f"{record.name}.", "namespace": record.namespace},
            "involvedObject": {
                "apiVersion": "v1",
                "kind": "Pod",
                "name": record.name,
                "namespace": record.namespace,
                "uid": record.uid,
            },
            "reason": reason,
            "message": message,
            "type": kind,
            "source": {"component": "sandbox-podrunner", "host": record.node_name or self.config.node_name},
            "firstTimestamp": now,
            "lastTimestamp": now,
            "count": 1,
        }
        try:
            self.core.create_namespaced_event(record.namespace, event, _preload_content=False)
        except Exception as error:  # events are informative: never let them break the loop
            log.debug("sandbox: event %s on %s not posted: %s", reason, record.label, error)

    def _step_container(self, record: PodRecord, container: ContainerRecord, now: float) -> None:
        if record.waiting_message or container.final is not None:
            return
        process = container.process
        if process is not None:
            returncode = process.poll()
            if returncode is None:
                probe = self._probe_of(container)
                container.ready = probe is not None and probes.check(
                    probe, record.pod_ip, self.config.probe_timeout_seconds
                )
                return
            self._on_exit(record, container, process, returncode, now)
            return
        if now >= container.next_start_at:
            self._start_container(record, container, now)

    def _probe_of(self, container: ContainerRecord) -> probes.ReadinessProbe | None:
        try:
            return probes.readiness_probe(container.spec)
        except ValueError as error:
            container.error = str(error)
            return None

    def _missing_host_path(self, record: PodRecord) -> str:
        for volume, local, kind in host_path_requirements(record.pod, self.config.node_root):
            exists = local.is_dir() if kind == "Directory" else local.exists()
            if not exists:
                node_path = "/" + str(local.relative_to(self.config.node_root))
                return host_path_failure(volume, node_path, kind)
        return ""

    def _start_container(self, record: PodRecord, container: ContainerRecord, now: float) -> None:
        mount_failure = self._missing_host_path(record) or self._project_volumes(record)
        if mount_failure:  # retried every loop: it starts once the path exists, like a kubelet
            if mount_failure != container.error:
                self._event(record, "FailedMount", mount_failure, "Warning")
            container.error, container.error_reason = mount_failure, pod_status.WAITING_CREATING
            return
        try:
            spec = build_process_spec(
                record.pod,
                container.spec,
                pod_ip=record.pod_ip,
                host_ip=HOST_IP,
                node_name=record.node_name,
                node_root=self.config.node_root,
                pod_dir=self.config.log_dir / record.namespace / record.name,
                interpreter=self.config.interpreter,
                host_env=os.environ,
            )
        except UnsupportedContainer as error:
            container.error, container.error_reason = str(error), pod_status.WAITING_CREATE_ERROR
            return
        # Pod DNS names resolve in every process of a pod with a DNS identity (hostname + subdomain), and
        # only there: nss_wrapper answers an IPv6 + V4MAPPED lookup of a numeric IPv4 address with an
        # error, which torch's TCPStore client retries until it times out (MASTER_ADDR=127.0.0.1).
        if self.config.nss_wrapper is not None and cluster_dns.pod_address(record.pod, record.pod_ip):
            hostname = cluster_dns.pod_hostname(record.pod)
            dns_env = cluster_dns.process_env(self.config.nss_wrapper, self.hosts_file, spec.env, hostname)
            spec.env.update(dns_env)
        process = LocalProcess(spec, self.log_path(record.namespace, record.name, container.spec["name"]))
        try:
            process.start()
        except OSError as error:
            container.error = f"cannot start {spec.argv[0]}: {error}"
            container.error_reason = pod_status.WAITING_CREATE_ERROR
            container.next_start_at = now + self._backoff(container)
            return
        container.process = process
        container.error = ""
        container.ready = False
        log.info("sandbox: started %s/%s (pid %s)", record.label, container.spec["name"], process.pid)
        self._event(record, "Started", f"Started container {container.spec['name']} (pid {process.pid})")

    def _project_volumes(self, record: PodRecord) -> str:
        """Write the pod's secret and configMap volumes from the API; the mount error if one cannot be."""
        sources = volume_sources.volume_sources(record.pod)
        if not sources:
            return ""
        directories = volume_directories(
            record.pod, self.config.node_root, self.config.log_dir / record.namespace / record.name
        )
        for source in sources:
            read = (
                self.core.read_namespaced_secret
                if source.kind == "secret"
                else self.core.read_namespaced_config_map
            )
            try:
                response = read(source.object_name, record.namespace, _preload_content=False)
            except ApiException as error:
                if error.status != 404:
                    return volume_sources.mount_failure(source, f"cannot read it: {error.reason}")
                if source.optional:
                    volume_sources.write_files(directories[source.volume], [])
                    continue
                return volume_sources.missing_object_message(source)
            data = volume_sources.object_data(source.kind, json.loads(response.data))
            try:
                files = volume_sources.projected_files(source, data)
            except volume_sources.MountFailure as error:
                return str(error)
            volume_sources.write_files(directories[source.volume], files)
        return ""

    def _backoff(self, container: ContainerRecord) -> float:
        return pod_status.backoff_seconds(
            max(container.crash_streak, 1),
            self.config.backoff_initial_seconds,
            self.config.backoff_max_seconds,
        )

    def _on_exit(
        self,
        record: PodRecord,
        container: ContainerRecord,
        process: LocalProcess,
        returncode: int,
        now: float,
    ) -> None:
        process.kill_leftovers()  # ranks orphaned by the launcher die with it, like a container's cgroup
        self._kill_escaped(record)
        exit_code, signal_number = pod_status.termination_exit_code(returncode)
        termination = pod_status.Termination(exit_code, process.started_at, now, signal_number)
        container.process = None
        container.ready = False
        log.info("sandbox: %s/%s exited with %s", record.label, container.spec["name"], exit_code)
        policy = (record.pod.get("spec") or {}).get("restartPolicy") or "Always"
        if not pod_status.should_restart(policy, exit_code):
            container.final = termination
            self._release_address_if_done(record)
            return
        ran_for = now - process.started_at
        container.crash_streak = (
            1 if ran_for >= self.config.backoff_reset_seconds else container.crash_streak + 1
        )
        container.restart_count += 1
        container.last_termination = termination
        delay = self._backoff(container)
        container.next_start_at = now + delay
        name = container.spec["name"]
        message = f"Back-off {delay:g}s restarting failed container {name} (exit code {exit_code})"
        self._event(record, "BackOff", message, "Warning")

    def _release_address_if_done(self, record: PodRecord) -> None:
        if self._finished(record) and record.pod_ip:
            self.addresses.release(record.pod_ip)

    # -- status --------------------------------------------------------------------------------------

    def _view(self, record: PodRecord, now: float) -> pod_status.PodView:
        containers = []
        for name, container in record.containers.items():
            image = container.spec.get("image", "")
            process = container.process
            base = {
                "name": name,
                "image": image,
                "restart_count": container.restart_count,
                "last_termination": container.last_termination,
            }
            if container.final is not None:
                view = pod_status.ContainerView(state="terminated", terminated=container.final, **base)
            elif process is not None:
                view = pod_status.ContainerView(
                    state="running",
                    started_at=process.started_at,
                    process_id=process.pid,
                    ready=container.ready,
                    **base,
                )
            elif record.waiting_message:
                view = pod_status.ContainerView(
                    state="waiting",
                    reason=pod_status.WAITING_CREATING,
                    message=record.waiting_message,
                    **base,
                )
            elif container.error:
                view = pod_status.ContainerView(
                    state="waiting", reason=container.error_reason, message=container.error, **base
                )
            elif container.restart_count > 0:
                delay = max(0.0, container.next_start_at - now)
                message = f"back-off {math.ceil(delay)}s restarting failed container={name} pod={record.name}"
                view = pod_status.ContainerView(
                    state="waiting", reason=pod_status.WAITING_BACKOFF, message=message, **base
                )
            else:
                view = pod_status.ContainerView(state="waiting", reason=pod_status.WAITING_CREATING, **base)
            containers.append(view)
        return pod_status.PodView(
            scheduled=record.scheduled,
            unschedulable_message=record.unschedulable_message,
            pod_ip=record.pod_ip,
            host_ip=HOST_IP if record.scheduled else "",
            start_time=record.start_time,
            containers=containers,
            qos_class=scheduling.qos_class(record.pod),
        )

    @staticmethod
    def _comparable(status: Mapping[str, Any]) -> dict[str, Any]:
        # The back-off countdown and probe times alone are no reason to write the status again.
        body = json.loads(json.dumps(status))
        for container in body.get("containerStatuses") or []:
            waiting = (container.get("state") or {}).get("waiting") or {}
            if waiting.get("reason") == pod_status.WAITING_BACKOFF:
                waiting.pop("message", None)
        for condition in body.get("conditions") or []:
            condition.pop("lastTransitionTime", None)
        return dict(body)

    def _report(self, record: PodRecord) -> None:
        now = time.time()
        previous = record.last_status or (record.pod.get("status") or {})
        status = pod_status.pod_status(self._view(record, now), previous, now)
        if record.last_status is not None and self._comparable(status) == self._comparable(
            record.last_status
        ):
            return
        try:
            self.core.patch_namespaced_pod_status(
                record.name,
                record.namespace,
                {"status": status},
                _content_type=MERGE_PATCH,
                _preload_content=False,
            )
        except ApiException as error:
            if error.status != 404:
                log.warning("sandbox: status of %s not written: %s", record.label, error.reason)
            return
        record.last_status = status

    # -- deletion ------------------------------------------------------------------------------------

    def _grace_seconds(self, record: PodRecord) -> float:
        metadata = record.pod.get("metadata") or {}
        grace = metadata.get("deletionGracePeriodSeconds")
        if grace is None:
            grace = (record.pod.get("spec") or {}).get("terminationGracePeriodSeconds", 30)
        return float(min(float(grace), self.config.max_grace_seconds))

    def _begin_stop(self, record: PodRecord) -> None:
        """Stop the pod's processes in the background (the loop keeps serving other pods)."""
        if record.stopping is not None or record.stopped:
            return
        processes = [c.process for c in record.containers.values() if c.process is not None]
        if not processes:
            record.stopped = True
            if record.pod_ip:
                self.addresses.release(record.pod_ip)
            return
        grace = self._grace_seconds(record)
        log.info("sandbox: stopping %s (grace %.0fs)", record.label, grace)
        for name, container in record.containers.items():
            if container.process is not None:
                self._event(record, "Killing", f"Stopping container {name}")

        def stop_all() -> None:
            stoppers = [threading.Thread(target=p.stop, args=(grace,), daemon=True) for p in processes]
            for stopper in stoppers:
                stopper.start()
            for stopper in stoppers:
                stopper.join()
            self._kill_escaped(record)
            if record.pod_ip:
                self.addresses.release(record.pod_ip)
            record.stopped = True
            self._wake.set()

        record.stopping = threading.Thread(target=stop_all, name=f"sandbox-stop-{record.name}", daemon=True)
        record.stopping.start()

    def _kill_escaped(self, record: PodRecord) -> None:
        """Kill what the pod's processes started outside their process tree (an SSH session's daemonized
        orted and its ranks on a worker): every process with this pod's DNS identity in its environment."""
        if self.config.nss_wrapper is None or cluster_dns.pod_address(record.pod, record.pod_ip) is None:
            return
        identity = {
            "NSS_WRAPPER_HOSTS": str(self.hosts_file),
            "NSS_WRAPPER_HOSTNAME": cluster_dns.pod_hostname(record.pod),
        }
        escaped = processes_with_env(identity)
        if escaped:
            log.info("sandbox: %s: killing %s process(es) it left behind", record.label, len(escaped))
            kill_all(escaped)

    def _finalize_deletion(self, record: PodRecord) -> None:
        """Like a kubelet: once the processes are gone, remove the pod object for good."""
        if (record.pod.get("metadata") or {}).get("finalizers"):
            return  # someone else still holds it; the API server deletes it when they let go
        try:
            self.core.delete_namespaced_pod(
                record.name, record.namespace, grace_period_seconds=0, _preload_content=False
            )
        except ApiException as error:
            if error.status != 404:
                log.warning("sandbox: could not finalize deletion of %s: %s", record.label, error.reason)

    def _forget(self, key: tuple[str, str, str], record: PodRecord) -> None:
        self._records.pop(key, None)
        log.info("sandbox: %s is gone", record.label)
