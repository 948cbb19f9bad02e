"""The sandbox stack: API emulator + the local pod runner + the real operator, installed with its Helm
chart (a pod with the chart's service account and RBAC; or a plain subprocess with the admin kubeconfig).

Used by the main job (`python -m bloomz_sandbox`) and by the end-to-end test, so both
run exactly the same thing. Layout under the work directory:
    kubeconfig, operator-settings.yaml
    node/                  the simulated node's filesystem (hostPath /x is node/x; shared by all nodes)
    cluster-hosts          pod DNS names (headless Services) for nss_wrapper, kept by the pod runner
    logs/operator.log      the operator's output
    logs/podrunner.log     the pod runner's decisions (scheduling, starts, exits, stops)
    logs/audit.jsonl       the API server's audit log (user, verb, group, resource, ..., code per request)
    tls/                   the API server's HTTPS certificate (the pods' ca.crt)
    hub/<org>/<name>/      the local Hub's repositories (the operator's hubEndpoint; download Jobs)
    logs/<ns>/<pod>/<container>.log   each pod container's output
"""

from __future__ import annotations

import json
import logging
import os
import shutil
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml
from bloomz_operator.constants import GROUP, PLURAL, VERSION
from bloomz_operator.kubeapi import KubeAPI
from kubernetes import client

from bloomz_sandbox.chart import ChartRelease, find_helm, operator_pod_state
from bloomz_sandbox.controllers.deployments import DeploymentController
from bloomz_sandbox.controllers.jobs import JobController
from bloomz_sandbox.hub import LocalHub
from bloomz_sandbox.node import cluster_dns
from bloomz_sandbox.node.podrunner import PodRunner, RunnerConfig, default_capacity
from bloomz_sandbox.node.processes import kill_group_now, spawn, stop_group

SANDBOX_CPU_IMAGE = "sandbox.local/bloomz-runtime-cpu:dev"  # never pulled: the runner runs the command
CPU_MEMORY_BANDWIDTH = 25e9  # bytes/s: a memory read on the development machines (the CPU roofline)
# Time limits of the stop stages (seconds). The whole stop stays under STOP_LIMIT_S (defaults: 15 s
# pod grace -> uninstall 30 + controller 5 + operator 25 + pods 35 + client 5 + emulator 35 = 135), which
# the main job enforces with a last-resort exit.
OPERATOR_GRACE_S = 20.0  # Kopf finishes its handlers, then SIGKILL
RUNNER_MARGIN_S = 20.0  # on top of the pods' grace period: SIGKILL of what is left, reaping
APISERVER_STOP_S = 30.0  # SandboxAPIServer.stop joins its thread this long
STAGE_MARGIN_S = 5.0
UNINSTALL_LIMIT_S = 30.0  # helm uninstall and the operator pod gone (about 1 s in the sandbox)
STOP_LIMIT_S = 140.0

log = logging.getLogger(__name__)


def run_stage(
    name: str, stop: Callable[[], None], limit_s: float, kill: Callable[[], None] = lambda: None
) -> bool:
    """Run one stop stage in a daemon thread for at most `limit_s`; past that, `kill` its processes
    (SIGKILL, no waiting) and carry on. True when the stage finished in time."""
    errors: list[BaseException] = []

    def body() -> None:
        try:
            stop()
        except BaseException as error:  # reported below; the next stage still runs
            errors.append(error)

    thread = threading.Thread(target=body, name=f"sandbox-stop-{name}", daemon=True)
    thread.start()
    thread.join(limit_s)
    if thread.is_alive():
        log.error("sandbox: stopping the %s took over %.0f s: killing its processes", name, limit_s)
        kill()
        return False
    if errors:
        log.error("sandbox: stopping the %s failed: %s", name, errors[0])
        kill()
        return False
    return True


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
    # True: `helm install` charts/bloomz-operator (a pod with the chart's service account and RBAC);
    # False: the operator as a plain subprocess with the admin kubeconfig.
    operator_from_chart: bool = True


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
        self.chart: ChartRelease | None = None
        self.deployments: DeploymentController | None = None
        self.jobs: JobController | None = None
        self.hub: LocalHub | None = None
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
        self.apiserver = SandboxAPIServer(
            crd_paths=crds,
            namespaces=(self.options.namespace,),
            tls_dir=self.workdir / "tls",
            audit_path=self.log_dir / "audit.jsonl",
        ).start()
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
            api_tls_port=self.apiserver.tls_port or 0,
            api_ca_path=self.apiserver.ca_path,
        )
        runner = self.runner = PodRunner(self.api_client, config).start()
        self.apiserver.serve_pod_logs(runner.log_path)  # kubectl logs, and the operator's progress reads
        self.deployments = DeploymentController(self.api_client).start()
        self.jobs = JobController(self.api_client).start()
        (self.workdir / "hub").mkdir(exist_ok=True)
        self.hub = LocalHub(self.workdir / "hub").start()
        on_step(f"local Hub at {self.hub.endpoint} serving {self.workdir / 'hub'} (the model-download Jobs')")
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
        if self.options.operator_from_chart:
            self._install_chart(on_step)
        else:
            self._start_operator()
            on_step(
                f"operator started (pid {self.operator.pid if self.operator else '?'}), "
                f"log {self.operator_log}"
            )
        return self

    def _install_chart(self, on_step: Callable[[str], None]) -> None:
        root = repository_root()
        self.chart = ChartRelease(
            find_helm(root), root / "charts" / "bloomz-operator", self.kubeconfig, self.workdir
        )
        started = time.monotonic()
        on_step(f"helm install {self.chart.release} charts/bloomz-operator -n {self.chart.namespace}")
        self.chart.install(
            {
                "config.logLevel": self.options.operator_log_level,
                "config.livenessPort": str(free_port()),  # the pod shares this machine's ports
                "config.devices.cpu.image": SANDBOX_CPU_IMAGE,
                # As for the subprocess operator (_start_operator): the examples' namespace, their model on
                # the node's /var/lib/bloomz (hostPath is off by default), this machine's memory read.
                "watchNamespaces": f"{{{self.options.namespace}}}",
                "config.policy.hostPathPrefixes": "{/var/lib/bloomz/}",
                "config.devices.cpu.memoryBandwidth": str(int(CPU_MEMORY_BANDWIDTH)),
                "config.hubEndpoint": self.hub.endpoint if self.hub else "",
            }
        )
        deadline = started + 120
        while not (name := self._operator_pod(ready=True)):
            if time.monotonic() > deadline:
                raise TimeoutError(f"the operator pod was not Ready within 120 s\n{self.log_tail()}")
            time.sleep(0.3)
        pod_dir = self.log_dir / self.chart.namespace / name
        self.operator_log = pod_dir / "operator.log"
        on_step(
            f"operator pod {self.chart.namespace}/{name} Ready after {time.monotonic() - started:.1f}s "
            f"(service account {self.chart.release}, the chart's RBAC), log {self.operator_log}"
        )

    def _operator_pod(self, ready: bool) -> str:
        assert self.chart is not None
        api: Any = client.CoreV1Api(self.api_client)
        response = api.list_namespaced_pod(self.chart.namespace, _preload_content=False)
        name, is_ready = operator_pod_state(json.loads(response.data).get("items") or [])
        return name if name and (is_ready or not ready) else ""

    def _uninstall_chart(self) -> None:
        """helm uninstall, then wait (bounded) until the operator pod and its process are gone."""
        if self.chart is None:
            return
        try:
            self.chart.uninstall()
            deadline = time.monotonic() + UNINSTALL_LIMIT_S - STAGE_MARGIN_S
            while self._operator_pod(ready=False) and time.monotonic() < deadline:
                time.sleep(0.3)
        except Exception as error:  # the runner still stops every process below
            logging.getLogger(__name__).warning("sandbox: helm uninstall failed: %s", error)
        self.chart = None

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
            "devices": {"cpu": {"image": SANDBOX_CPU_IMAGE, "memoryBandwidth": CPU_MEMORY_BANDWIDTH}},
            # The examples read the model from the node's /var/lib/bloomz (hostPath is off by default).
            "policy": {"hostPathPrefixes": ["/var/lib/bloomz/"]},
            "hubEndpoint": self.hub.endpoint if self.hub else None,
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
            self.operator = spawn(
                command,
                env=env,
                stdout=log,
                stderr=subprocess.STDOUT,
                stdin=subprocess.DEVNULL,
                start_new_session=True,
            )

    def stop(self) -> None:
        """Operator first (it would recreate pods), then the pods' processes, then the API server.
        Each stage runs in its own thread with its own time limit; a stage that overruns has its
        processes SIGKILLed and the next stage starts anyway, so stop() always returns. A chart install is
        uninstalled first (its operator pod then stops like any pod)."""
        if self.chart is not None and self._api_client is not None:
            run_stage("helm uninstall", self._uninstall_chart, UNINSTALL_LIMIT_S)
        deployments, self.deployments = self.deployments, None
        if deployments is not None:
            run_stage("Deployment controller", deployments.stop, STAGE_MARGIN_S)
        jobs, self.jobs = self.jobs, None
        if jobs is not None:
            run_stage("Job controller", jobs.stop, STAGE_MARGIN_S)
        operator, self.operator = self.operator, None
        if operator is not None:
            run_stage(
                "operator",
                lambda: stop_group(operator.pid, OPERATOR_GRACE_S),
                OPERATOR_GRACE_S + STAGE_MARGIN_S,
                lambda: kill_group_now(operator.pid),
            )
        runner, self.runner = self.runner, None
        if runner is not None:
            run_stage(
                "pod runner", runner.stop, self.options.max_grace_seconds + RUNNER_MARGIN_S, runner.kill_now
            )
        hub, self.hub = self.hub, None
        if hub is not None:
            run_stage("local Hub", hub.stop, STAGE_MARGIN_S)
        api_client, self._api_client = self._api_client, None
        if api_client is not None:
            run_stage("API client", api_client.close, STAGE_MARGIN_S)
        apiserver, self.apiserver = self.apiserver, None
        if apiserver is not None:
            run_stage("API emulator", apiserver.stop, APISERVER_STOP_S + STAGE_MARGIN_S)
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

    def restart_operator(self) -> None:
        """Start the operator again (after it was killed), like its Deployment would; kills a live one."""
        if self.operator is not None and self.operator.poll() is None:
            stop_group(self.operator.pid, 0.0)
        self._start_operator()

    def operator_alive(self) -> bool:
        if self.chart is not None:
            return bool(self._operator_pod(ready=True))
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
