"""Shared test helpers: waits, real runtime processes and their metrics, requests, resource conditions."""

from __future__ import annotations

import contextlib
import json
import os
import signal
import socket
import subprocess
import sys
import tempfile
import time
import urllib.request
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import grpc
from bloomz_api.proto import generate_pb2 as pb
from grpc_health.v1 import health_pb2, health_pb2_grpc

REPO_ROOT = Path(__file__).resolve().parent.parent


def wait_for(
    what: str,
    predicate: Callable[[], Any],
    timeout: float = 90.0,
    interval: float = 0.2,
    retry_on: tuple[type[BaseException], ...] = (),
) -> Any:
    """Poll ``predicate`` until it returns something truthy (returned); after ``timeout`` seconds an
    AssertionError names ``what`` and the last value seen. Exceptions of the ``retry_on`` types (an
    object not created yet) count as "not yet". For waits on servers and controllers, never for speed."""
    deadline = time.monotonic() + timeout
    last: Any = None
    while True:
        try:
            last = predicate()
        except retry_on as error:
            last = error
        else:
            if last:
                return last
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout:.0f}s waiting for {what}; last seen: {last!r}")
        time.sleep(interval)


def read_pod(core: Any, namespace: str, name: str) -> dict[str, Any] | None:
    """The pod as the API server returns it (plain JSON, not the client's models); None once it is gone."""
    from kubernetes import client

    try:
        response = core.read_namespaced_pod(name, namespace, _preload_content=False)
    except client.ApiException as error:
        if error.status == 404:
            return None
        raise
    body: dict[str, Any] = json.loads(response.data)
    return body


@contextlib.contextmanager
def pod_runner_cluster(config: Any, namespace: str) -> Iterator[tuple[Any, Any]]:
    """The API emulator with the sandbox's pod runner (a RunnerConfig) on it: (CoreV1Api, PodRunner)."""
    from bloomz_sandbox.apiserver import SandboxAPIServer
    from bloomz_sandbox.node.podrunner import PodRunner
    from kubernetes import client

    with SandboxAPIServer(namespaces=(namespace,)) as api:
        api_client = api.api_client()
        runner = PodRunner(api_client, config).start()
        try:
            yield client.CoreV1Api(api_client), runner
        finally:
            runner.stop()
            api_client.close()


def free_port() -> int:
    """A TCP port on 127.0.0.1 that was free a moment ago."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def health_status(target: str, service: str = "", timeout: float = 5.0) -> int | None:
    """The health service's status for ``service``, or None if the server does not answer."""
    with grpc.insecure_channel(target) as channel:
        stub = health_pb2_grpc.HealthStub(channel)
        try:
            return int(stub.Check(health_pb2.HealthCheckRequest(service=service), timeout=timeout).status)
        except grpc.RpcError:
            return None


def wait_for_serving(target: str, timeout: float, process: subprocess.Popen[bytes] | None = None) -> None:
    """Poll grpc.health.v1 until SERVING; fail early if ``process`` exits."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if process is not None and process.poll() is not None:
            raise RuntimeError(f"runtime exited with {process.returncode} before SERVING")
        if health_status(target, timeout=2.0) == health_pb2.HealthCheckResponse.SERVING:
            return
        time.sleep(0.2)
    raise TimeoutError(f"{target} not SERVING after {timeout:.0f} s")


@dataclass
class RuntimeProcess:
    target: str
    port: int
    metrics_port: int
    process: subprocess.Popen[bytes]
    log_path: Path
    http_port: int = 0

    def log(self) -> str:
        return self.log_path.read_text(errors="replace")


def runtime_env(env: Mapping[str, str] | None = None) -> dict[str, str]:
    merged = dict(os.environ)
    merged.setdefault("BLOOMZ_BIND_HOST", "127.0.0.1")
    # The test machines have 2 shared cores: one thread per rank avoids OpenMP spin contention.
    merged.setdefault("OMP_NUM_THREADS", "1")
    merged.setdefault("TOKENIZERS_PARALLELISM", "false")
    merged.update(env or {})
    return merged


def start_runtime(
    model_dir: Path | str,
    world_size: int = 1,
    port: int | None = None,
    extra_args: Sequence[str] = (),
    env: Mapping[str, str] | None = None,
    log_path: Path | None = None,
    http_port: int = 0,
) -> RuntimeProcess:
    """Start ``python -m bloomz_runtime.launch --device cpu`` without waiting for it (no HTTP API
    unless ``http_port``: its default 8000 would collide between runtimes on one machine)."""
    port = port or free_port()
    metrics_port = free_port()
    if log_path is None:
        fd, name = tempfile.mkstemp(prefix="bloomz-runtime-", suffix=".log")
        os.close(fd)
        log_path = Path(name)
    cmd = [
        sys.executable, "-m", "bloomz_runtime.launch",
        "--model", str(model_dir),
        "--device", "cpu",
        "--world-size", str(world_size),
        "--port", str(port),
        "--metrics-port", str(metrics_port),
        "--http-port", str(http_port),
        *extra_args,
    ]  # fmt: skip
    with open(log_path, "wb") as log:
        process = subprocess.Popen(cmd, env=runtime_env(env), stdout=log, stderr=subprocess.STDOUT)
    return RuntimeProcess(f"127.0.0.1:{port}", port, metrics_port, process, log_path, http_port)


def stop_runtime(rt: RuntimeProcess, timeout: float = 60.0) -> int:
    """SIGTERM (drain), then SIGKILL if it does not exit in time; returns the exit code."""
    if rt.process.poll() is None:
        rt.process.send_signal(signal.SIGTERM)
        try:
            rt.process.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            rt.process.kill()
            rt.process.wait(timeout=30)
    return int(rt.process.returncode)


@contextlib.contextmanager
def run_runtime(
    model_dir: Path | str,
    world_size: int = 1,
    port: int | None = None,
    extra_args: Sequence[str] = (),
    env: Mapping[str, str] | None = None,
    timeout: float = 300.0,
    http_port: int = 0,
    health_target: Callable[[RuntimeProcess], None] | None = None,
) -> Iterator[RuntimeProcess]:
    """A runtime on 127.0.0.1, SERVING on entry, stopped (drained) on exit, which must exit 0.
    ``health_target`` replaces the plaintext gRPC health poll (for runtimes that serve TLS).

    Its log is deleted only when both the test body and the runtime succeeded; otherwise the error
    names the kept log and quotes its end."""
    rt = start_runtime(model_dir, world_size, port, extra_args, env, http_port=http_port)
    body_failed = True
    try:
        try:
            if health_target is None:
                wait_for_serving(rt.target, timeout, rt.process)
            else:
                health_target(rt)
        except Exception as exc:
            raise RuntimeError(f"{exc}\n--- runtime log {rt.log_path} ---\n{rt.log()[-5000:]}") from exc
        yield rt
        body_failed = False
    finally:
        code = stop_runtime(rt)
        if not body_failed and code == 0:
            with contextlib.suppress(OSError):
                rt.log_path.unlink()
        elif body_failed:
            sys.stderr.write(f"runtime log kept at {rt.log_path} (exit code {code})\n")
    assert code == 0, f"runtime exited with {code}; log kept at {rt.log_path}:\n{rt.log()[-5000:]}"


def metric(rt: RuntimeProcess, name: str, **labels: str) -> float:
    """The sum of a metric's samples on the runtime's /metrics (those with all of ``labels``)."""
    url = f"http://127.0.0.1:{rt.metrics_port}/metrics"
    body = urllib.request.urlopen(url, timeout=10).read().decode()
    total = 0.0
    for line in body.splitlines():
        if not (line.startswith(name + " ") or line.startswith(name + "{")):
            continue
        if all(f'{k}="{v}"' in line for k, v in labels.items()):
            total += float(line.rsplit(" ", 1)[1])
    return total


def wait_until_idle(rt: RuntimeProcess, timeout: float = 60.0) -> None:
    """Until the runtime reports no running and no waiting request (the engine dropped every row)."""
    wait_for(
        "the runtime to go idle",
        lambda: metric(rt, "bloomz_running_requests") + metric(rt, "bloomz_waiting_requests") == 0,
        timeout,
        0.1,
    )


def greedy_request(prompt: str, new_tokens: int, request_id: str = "", **params: Any) -> pb.GenerateRequest:
    """A greedy request for exactly ``new_tokens`` tokens (EOS ignored), more parameters as given."""
    parameters = pb.GenerationParameters(max_new_tokens=new_tokens, ignore_eos=True, **params)
    return pb.GenerateRequest(prompt=prompt, parameters=parameters, request_id=request_id)


def conditions(resource: dict[str, Any]) -> dict[str, dict[str, Any]]:
    """A resource's status conditions by type (none yet: empty)."""
    return {c["type"]: c for c in (resource.get("status") or {}).get("conditions") or []}


# Rules the chart grants that a single-node lifecycle does not reach, and why: the least-privilege tests
# (tests/e2e/test_sandbox.py, test_helm_operator.py) require every other granted rule to be used.
LIFECYCLE_UNREACHED_RULES: dict[tuple[str, str, str], str] = {
    ("", "secrets", "create"): "the SSH key pair of a multi-node group (tests/e2e/test_sandbox_multinode.py)",
    ("", "secrets", "get"): "the SSH key pair of a multi-node group (tests/e2e/test_sandbox_multinode.py)",
    ("", "secrets", "patch"): "new SSH keys for a multi-node group's new template (tests/operator)",
    # Kopf lists and watches namespaces only when it is given a list of namespaces, not cluster-wide.
    ("", "namespaces", "list"): "Kopf, when watching a list of namespaces only",
    ("", "namespaces", "watch"): "Kopf, when watching a list of namespaces only",
}
