"""The sandbox stack: API emulator + the real operator (a subprocess) + the local pod runner.

Used by the main job (`python -m bloomz_sandbox`) and by the end-to-end test, so both
run exactly the same thing. Layout under the work directory:
    kubeconfig, operator-settings.yaml
    node/                  the simulated node's filesystem (hostPath /x is node/x; shared by all nodes)
    cluster-hosts          pod DNS names (headless Services) for nss_wrapper, kept by the pod runner
    logs/operator.log      the operator's output
    logs/podrunner.log     the pod runner's decisions (scheduling, starts, exits, stops)
    logs/<ns>/<pod>/<container>.log   each pod container's output
"""

from __future__ import annotations

import json
import logging
import os
import shutil
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml
from bloomz_operator.constants import GROUP, PLURAL, VERSION
from bloomz_operator.kubeapi import KubeAPI
from kubernetes import client

from bloomz_sandbox.node import cluster_dns
from bloomz_sandbox.node.podrunner import PodRunner, RunnerConfig, default_capacity

SANDBOX_CPU_IMAGE = "sandbox.local/bloomz-runtime-cpu:dev"  # never pulled: the runner runs the command


def repository_root() -> Path:
    """The checkout this package lives in (the sandbox is a development tool run from a checkout)."""
    here = Path(__file__).resolve()
    for parent in (Path.cwd(), *here.parents):
        if (parent / "crds").is_dir() and (parent / "pyproject.toml").is_file():
            return parent
    raise FileNotFoundError("run the sandbox from a bloomz-operator checkout (crds/ not found)")


def find_kubectl() -> str:
    found = shutil.which("kubectl")
    if found:
        return found
    bundled = repository_root() / ".tools" / "bin" / "kubectl"
    if bundled.is_file():
        return str(bundled)
    raise FileNotFoundError("kubectl not found: run `make setup` (it installs .tools/bin/kubectl)")


def free_port(host: str = "127.0.0.1") -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as probe:
        probe.bind((host, 0))
        return int(probe.getsockname()[1])


@dataclass
class SandboxOptions:
    workdir: Path
    namespace: str = "default"
    gaudi_cards: int = 8
    nodes: int = 1  # simulated nodes, each with the same capacity (multi-node groups need 2 or more)
    capacity_overrides: dict[str, str] = field(default_factory=dict)  # e.g. {"cpu": "8"}
    crd_paths: Sequence[Path] = ()
    operator_log_level: str = "INFO"
    backoff_initial_seconds: float = 1.0
    backoff_max_seconds: float = 10.0
    max_grace_seconds: float = 15.0


class Sandbox:
    """start() brings everything up; stop() takes it down (processes, ports) in reverse order."""

    def __init__(self, options: SandboxOptions) -> None:
        self.options = options
        self.workdir = options.workdir.resolve()
        self.node_root = self.workdir / "node"
        self.log_dir = self.workdir / "logs"
        self.kubeconfig = self.workdir / "kubeconfig"
        self.settings_path = self.workdir / "operator-settings.yaml"
        self.hosts_file = self.workdir / "cluster-hosts"
        self.operator_log = self.log_dir / "operator.log"
        self.apiserver: Any = None
        self.runner: PodRunner | None = None
        self.operator: subprocess.Popen[bytes] | None = None
        self._api_client: client.ApiClient | None = None
        self._log_handler: logging.Handler | None = None

    # -- lifecycle -----------------------------------------------------------------------------------

    def start(self, on_step: Callable[[str], None] = lambda _msg: None) -> Sandbox:
        from bloomz_sandbox.apiserver import SandboxAPIServer  # the emulator pulls in kmock

        self.workdir.mkdir(parents=True, exist_ok=True)
        self.log_dir.mkdir(parents=True, exist_ok=True)
        self._log_runner_to(self.log_dir / "podrunner.log")
        crds = list(self.options.crd_paths) or sorted((repository_root() / "crds").glob("*.yaml"))
        on_step(f"starting the Kubernetes API emulator ({len(crds)} CRD file(s))")
        self.apiserver = SandboxAPIServer(crd_paths=crds, namespaces=(self.options.namespace,)).start()
        self.apiserver.write_kubeconfig(self.kubeconfig, namespace=self.options.namespace)
        self._api_client = self.apiserver.api_client()
        on_step(f"API emulator at {self.apiserver.url}; kubeconfig {self.kubeconfig}")
        config = RunnerConfig(
            node_root=self.node_root,
            log_dir=self.log_dir,
            node_count=self.options.nodes,
            hosts_file=self.hosts_file,
            capacity={
                **default_capacity(self.options.gaudi_cards),
                **self.options.capacity_overrides,
            },
            backoff_initial_seconds=self.options.backoff_initial_seconds,
            backoff_max_seconds=self.options.backoff_max_seconds,
            max_grace_seconds=self.options.max_grace_seconds,
        )
        self.runner = PodRunner(self.api_client, config).start()
        if self.options.nodes == 1:
            on_step(
                f"pod runner up: node {config.node_name} with {self.options.gaudi_cards} habana.ai/gaudi "
                f"(simulated), CPU pods run as local processes, node root {self.node_root}"
            )
        else:
            on_step(
                f"pod runner up: nodes {', '.join(config.node_names())} with {self.options.gaudi_cards} "
                f"habana.ai/gaudi each (simulated), CPU pods run as local processes, one shared node root "
                f"{self.node_root}"
            )
        if config.nss_wrapper is None:
            on_step(
                f"pod DNS names will not resolve: {cluster_dns.MISSING_NSS_WRAPPER.removeprefix('sandbox: ')}"
            )
        else:
            on_step(f"pod DNS names (headless Services) via nss_wrapper, hosts file {self.hosts_file}")
        self._start_operator()
        on_step(
            f"operator started (pid {self.operator.pid if self.operator else '?'}), log {self.operator_log}"
        )
        return self

    def _log_runner_to(self, path: Path) -> None:
        """The pod runner's own log (scheduling, starts, exits, stops) goes to a file, not the console."""
        handler = logging.FileHandler(path)
        handler.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(message)s"))
        runner_log = logging.getLogger("bloomz_sandbox.node.podrunner")
        runner_log.setLevel(logging.INFO)
        runner_log.addHandler(handler)
        self._log_handler = handler

    def _start_operator(self) -> None:
        settings: dict[str, Any] = {
            "namespaces": [self.options.namespace],
            "logLevel": self.options.operator_log_level,
            "livenessPort": free_port(),
            # ~25 GB/s: what a memory read reaches on the development machines (the CPU roofline).
            "devices": {"cpu": {"image": SANDBOX_CPU_IMAGE, "memoryBandwidth": 25e9}},
        }
        self.settings_path.write_text(yaml.safe_dump(settings, sort_keys=False))
        env = {**os.environ, "KUBECONFIG": str(self.kubeconfig), "PYTHONUNBUFFERED": "1"}
        command = [
            sys.executable,
            "-m",
            "bloomz_operator",
            "--standalone",
            "--namespace",
            self.options.namespace,
            "--config",
            str(self.settings_path),
        ]
        with self.operator_log.open("ab") as log:
            # Its own session: a Ctrl-C in the terminal reaches the main job only, which then stops the
            # operator before the pods (it would otherwise recreate them while they are stopped).
            self.operator = subprocess.Popen(
                command,
                env=env,
                stdout=log,
                stderr=subprocess.STDOUT,
                stdin=subprocess.DEVNULL,
                start_new_session=True,
            )

    def stop(self) -> None:
        """Operator first (it would recreate pods), then the pods' processes, then the API server."""
        if self.operator is not None:
            if self.operator.poll() is None:
                self.operator.send_signal(signal.SIGTERM)
                try:
                    self.operator.wait(timeout=20)
                except subprocess.TimeoutExpired:
                    self.operator.kill()
                    self.operator.wait()
            self.operator = None
        if self.runner is not None:
            self.runner.stop()
        if self._api_client is not None:
            self._api_client.close()
            self._api_client = None
        if self.apiserver is not None:
            self.apiserver.stop()
            self.apiserver = None
        if self._log_handler is not None:
            logging.getLogger("bloomz_sandbox.node.podrunner").removeHandler(self._log_handler)
            self._log_handler.close()
            self._log_handler = None

    def __enter__(self) -> Sandbox:
        return self.start()

    def __exit__(self, *_exc: object) -> None:
        self.stop()

    # -- using it ------------------------------------------------------------------------------------

    @property
    def api_client(self) -> client.ApiClient:
        if self._api_client is None:
            raise RuntimeError("the sandbox is not started")
        return self._api_client

    def operator_alive(self) -> bool:
        return self.operator is not None and self.operator.poll() is None

    def kubectl(
        self, *args: str, check: bool = True, timeout: float = 60
    ) -> subprocess.CompletedProcess[str]:
        env = {**os.environ, "KUBECONFIG": str(self.kubeconfig)}
        result = subprocess.run(
            [find_kubectl(), *args], env=env, capture_output=True, text=True, timeout=timeout
        )
        if check and result.returncode != 0:
            raise RuntimeError(
                f"kubectl {' '.join(args)} failed ({result.returncode}): {result.stderr.strip()}"
            )
        return result

    def get_resource(self, name: str) -> dict[str, Any] | None:
        api: Any = client.CustomObjectsApi(self.api_client)
        try:
            response = api.get_namespaced_custom_object(
                GROUP, VERSION, self.options.namespace, PLURAL, name, _preload_content=False
            )
        except client.ApiException as error:
            if error.status == 404:
                return None
            raise
        body: dict[str, Any] = json.loads(response.data)
        return body

    def list_pods(self, instance: str | None = None) -> list[dict[str, Any]]:
        """Pods in the namespace (filtered here, never by the server), optionally of one resource."""
        api: Any = client.CoreV1Api(self.api_client)
        response = api.list_namespaced_pod(self.options.namespace, _preload_content=False)
        pods: list[dict[str, Any]] = json.loads(response.data).get("items") or []
        if instance is not None:
            pods = [
                p
                for p in pods
                if ((p.get("metadata") or {}).get("labels") or {}).get("app.kubernetes.io/instance")
                == instance
            ]
        return pods

    def service_endpoints(self, service: str) -> list[str]:
        """The sandbox's stand-in for a Service's routing: the IPs of the ready pods its selector picks."""
        found = KubeAPI(self.api_client).read_service(self.options.namespace, service)
        selector = ((found or {}).get("spec") or {}).get("selector") or {}
        if not selector:
            return []
        addresses = []
        for pod in self.list_pods():
            labels = (pod.get("metadata") or {}).get("labels") or {}
            status = pod.get("status") or {}
            statuses = status.get("containerStatuses") or []
            if (
                all(labels.get(k) == v for k, v in selector.items())
                and status.get("podIP")
                and statuses
                and all(c.get("ready") for c in statuses)
                and not (pod.get("metadata") or {}).get("deletionTimestamp")
            ):
                addresses.append(str(status["podIP"]))
        return sorted(addresses)

    def wait_for(
        self,
        what: str,
        predicate: Callable[[], Any],
        timeout: float,
        interval: float = 0.5,
        on_tick: Callable[[], None] = lambda: None,
    ) -> Any:
        """Poll until predicate() is truthy (returns it); TimeoutError names what and shows the logs."""
        deadline = time.monotonic() + timeout
        while True:
            on_tick()
            value = predicate()
            if value:
                return value
            if not self.operator_alive():
                raise RuntimeError(f"the operator exited while waiting for {what}:\n{self.log_tail()}")
            if time.monotonic() > deadline:
                raise TimeoutError(f"timed out after {timeout:.0f}s waiting for {what}\n{self.log_tail()}")
            time.sleep(interval)

    def log_tail(self, lines: int = 30) -> str:
        """The end of the operator's log and of every pod log: what to read when something hangs."""
        parts = []
        for path in [
            self.operator_log,
            self.log_dir / "podrunner.log",
            *sorted(self.log_dir.glob("*/*/*.log")),
        ]:
            if path.is_file():
                text = path.read_text(errors="replace").splitlines()[-lines:]
                parts.append(f"--- {path}\n" + "\n".join(text))
        return "\n".join(parts)
