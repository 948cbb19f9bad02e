"""What the sandbox's pod runner knows: its configuration, and a record per pod and container it runs."""

from __future__ import annotations

import sys
import threading
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from bloomz_sandbox.node import cluster_dns, images, pod_status, scheduling
from bloomz_sandbox.node.processes import LocalProcess

DEFAULT_NODE_NAME = "sandbox-node"
HOST_IP = "127.0.0.1"
MERGE_PATCH = "application/merge-patch+json"


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
    # The API server's HTTPS address and CA for in-cluster clients: with a port, every pod gets its service
    # account's token (TokenRequest API) and KUBERNETES_SERVICE_HOST/PORT; without, none (older setups).
    # Image repository name -> ENTRYPOINT, for containers without a command (the project's Dockerfiles).
    image_entrypoints: dict[str, list[str]] = field(default_factory=images.read_entrypoints)
    api_tls_host: str = "127.0.0.1"
    api_tls_port: int = 0
    api_ca_path: Path | None = None

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

    @property
    def finished(self) -> bool:
        """Every container ended for good (restartPolicy said so)."""
        return bool(self.containers) and all(c.final is not None for c in self.containers.values())


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
