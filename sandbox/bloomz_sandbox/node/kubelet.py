"""The container lifecycle of a scheduled pod, as a kubelet runs it: mount volumes, start each container as
a local process group, probe readiness, restart per restartPolicy with a doubling back-off, stop with the
grace period, kill what escaped the process tree, and remove the pod object once its processes are gone."""

from __future__ import annotations

import json
import logging
import os
import threading
from collections.abc import Callable
from pathlib import Path
from typing import Any

from kubernetes.client.exceptions import ApiException

from bloomz_sandbox.node import cluster_dns, pod_status, probes, service_account, volume_sources
from bloomz_sandbox.node.addresses import LoopbackAddresses
from bloomz_sandbox.node.process_spec import (
    UnsupportedContainer,
    build_process_spec,
    host_path_failure,
    host_path_requirements,
    volume_directories,
)
from bloomz_sandbox.node.processes import LocalProcess, kill_all, processes_with_env
from bloomz_sandbox.node.records import HOST_IP, ContainerRecord, PodRecord, RunnerConfig
from bloomz_sandbox.node.status_reporter import StatusReporter

log = logging.getLogger(__name__)


class Kubelet:
    """Steps the containers of the pods the runner has scheduled; one instance for all simulated nodes."""

    def __init__(
        self,
        core: Any,
        config: RunnerConfig,
        reporter: StatusReporter,
        addresses: LoopbackAddresses,
        hosts_file: Path,
        on_stopped: Callable[[], None],
    ) -> None:
        self.core = core
        self.config = config
        self.reporter = reporter
        self.addresses = addresses
        self.hosts_file = hosts_file
        self.on_stopped = on_stopped  # wakes the runner's loop once a pod's processes are gone

    def log_path(self, namespace: str, name: str, container: str) -> Path:
        return self.config.log_dir / namespace / name / f"{container}.log"

    # -- running ---------------------------------------------------------------------------------------

    def step(self, record: PodRecord, container: ContainerRecord, now: float) -> None:
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
                self.reporter.event(record, "FailedMount", mount_failure, "Warning")
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
                entrypoints=self.config.image_entrypoints,
            )
        except UnsupportedContainer as error:
            container.error, container.error_reason = str(error), pod_status.WAITING_CREATE_ERROR
            return
        account_failure = self._mount_service_account(record, spec.env)
        if account_failure:
            if account_failure != container.error:
                self.reporter.event(record, "FailedMount", account_failure, "Warning")
            container.error, container.error_reason = account_failure, pod_status.WAITING_CREATING
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
        self.reporter.event(
            record, "Started", f"Started container {container.spec['name']} (pid {process.pid})"
        )

    def _project_volumes(self, record: PodRecord) -> str:
        """Write the pod's secret and configMap volumes from the API; the mount error if one cannot be."""
        sources = volume_sources.volume_sources(record.pod)
        if not sources:
            return ""
        directories = volume_directories(
            record.pod, self.config.node_root, self.config.log_dir / record.namespace / record.name
        )
        # A projected volume has several sources: its files are written once, all of them together.
        files: dict[str, list[volume_sources.ProjectedFile]] = {source.volume: [] for source in sources}
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
                    continue
                return volume_sources.missing_object_message(source)
            data = volume_sources.object_data(source.kind, json.loads(response.data))
            try:
                files[source.volume] += volume_sources.projected_files(source, data)
            except volume_sources.MountFailure as error:
                return str(error)
        for volume, volume_files in files.items():
            volume_sources.write_files(directories[volume], sorted(volume_files, key=lambda f: f.path))
        return ""

    def _mount_service_account(self, record: PodRecord, env: dict[str, str]) -> str:
        """Write the pod's service-account token files and point ``env`` at them; the error if it cannot."""
        account = service_account.account_to_mount(record.pod)
        if not self.config.api_tls_port or self.config.api_ca_path is None or account is None:
            return ""
        try:
            answer = self.core.create_namespaced_service_account_token(
                account, record.namespace, {"spec": {"audiences": []}}, _preload_content=False
            )
        except ApiException as error:
            if error.status == 404 and account == service_account.DEFAULT_ACCOUNT:
                return ""  # no controller makes "default" accounts here: such a pod runs without a token
            return f'cannot get a token for service account "{account}": {error.reason}'
        token = json.loads(answer.data)["status"]["token"]
        folder = self.config.log_dir / record.namespace / record.name / "serviceaccount"
        ca_pem = self.config.api_ca_path.read_text(encoding="utf-8")
        service_account.write_token_files(
            folder, service_account.token_files(token, record.namespace, ca_pem)
        )
        env.update(service_account.in_cluster_env(self.config.api_tls_host, self.config.api_tls_port, folder))
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
        self.kill_escaped(record)
        exit_code, signal_number = pod_status.termination_exit_code(returncode)
        termination = pod_status.Termination(exit_code, process.started_at, now, signal_number)
        container.process = None
        container.ready = False
        log.info("sandbox: %s/%s exited with %s", record.label, container.spec["name"], exit_code)
        policy = (record.pod.get("spec") or {}).get("restartPolicy") or "Always"
        if not pod_status.should_restart(policy, exit_code):
            container.final = termination
            if record.finished and record.pod_ip:
                self.addresses.release(record.pod_ip)
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
        self.reporter.event(record, "BackOff", message, "Warning")

    # -- stopping --------------------------------------------------------------------------------------

    def _grace_seconds(self, record: PodRecord) -> float:
        metadata = record.pod.get("metadata") or {}
        grace = metadata.get("deletionGracePeriodSeconds")
        if grace is None:
            grace = (record.pod.get("spec") or {}).get("terminationGracePeriodSeconds", 30)
        return float(min(float(grace), self.config.max_grace_seconds))

    def begin_stop(self, record: PodRecord) -> None:
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
                self.reporter.event(record, "Killing", f"Stopping container {name}")

        def stop_all() -> None:
            stoppers = [threading.Thread(target=p.stop, args=(grace,), daemon=True) for p in processes]
            for stopper in stoppers:
                stopper.start()
            for stopper in stoppers:
                stopper.join()
            self.kill_escaped(record)
            if record.pod_ip:
                self.addresses.release(record.pod_ip)
            record.stopped = True
            self.on_stopped()

        record.stopping = threading.Thread(target=stop_all, name=f"sandbox-stop-{record.name}", daemon=True)
        record.stopping.start()

    def kill_escaped(self, record: PodRecord) -> None:
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

    def finalize_deletion(self, record: PodRecord) -> None:
        """Once the processes are gone, remove the pod object for good."""
        if (record.pod.get("metadata") or {}).get("finalizers"):
            return  # someone else still holds it; the API server deletes it when they let go
        try:
            self.core.delete_namespaced_pod(
                record.name, record.namespace, grace_period_seconds=0, _preload_content=False
            )
        except ApiException as error:
            if error.status != 404:
                log.warning("sandbox: could not finalize deletion of %s: %s", record.label, error.reason)
