"""SIGTERM to an operator whose API server stalled mid-pass: the process exits within its shutdown deadline.

The real operator (`python -m bloomz_operator`, a process) against the API emulator (a process of its own,
so it can be stopped): a resource gets its pod, then the emulator is SIGSTOPped (a stalled API server: the
connections stay open and nothing answers) while passes run every second, so one is stuck in an API call
with a 120 s timeout. Without the deadline the operator outlived its SIGTERM until that call (and the next)
timed out; with it, it is gone after `--shutdown-timeout-s`. The unit tests check the deadline's own rules.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
from bloomz_operator.shutdown import EXIT_FORCED, BoundedShutdown
from fault_figures import FaultReport
from helpers import free_port, wait_for

REPO = Path(__file__).resolve().parents[2]
CRD = REPO / "crds" / "bloomzinferences.inference.bloomz.dev.yaml"
DEADLINE_S = 5.0
STALLED_CALL_TIMEOUT_S = 120.0
RESOURCE = """apiVersion: inference.bloomz.dev/v1alpha1
kind: BloomzInference
metadata: {name: plain}
spec: {model: bigscience/bloomz-560m, device: cpu, cards: 1}
"""


def test_the_first_signal_stops_kopf_and_arms_one_deadline() -> None:
    exits: list[int] = []
    done = threading.Event()
    shutdown = BoundedShutdown(0.05, exit_now=lambda code: (exits.append(code), done.set()))
    assert not shutdown.stop_flag.is_set()
    shutdown.request_stop("SIGTERM")
    first = shutdown.timer
    shutdown.request_stop("SIGINT")  # a second signal keeps the first deadline
    assert shutdown.stop_flag.is_set() and shutdown.timer is first
    assert done.wait(30) and exits == [EXIT_FORCED]


def test_a_deadline_that_no_longer_applies_ends_nothing() -> None:
    exits: list[int] = []
    shutdown = BoundedShutdown(60.0, exit_now=exits.append)
    shutdown.request_stop("SIGTERM")
    shutdown.cancelled.set()
    assert shutdown.timer is not None
    shutdown.timer.join(30)
    assert not shutdown.timer.is_alive() and exits == []


def spawn(args: list[str], log: Path, env: dict[str, str]) -> subprocess.Popen[bytes]:
    with log.open("wb") as out:
        return subprocess.Popen([sys.executable, *args], stdout=out, stderr=subprocess.STDOUT, env=env)


def stop(process: subprocess.Popen[bytes]) -> None:
    if process.poll() is None:
        process.kill()
    process.wait(30)


@pytest.fixture
def api_server(tmp_path: Path) -> Iterator[tuple[subprocess.Popen[bytes], Path]]:
    kubeconfig = tmp_path / "kubeconfig"
    args = ["-m", "bloomz_sandbox.apiserver", "--crd", str(CRD), "--kubeconfig", str(kubeconfig)]
    server = spawn(args, tmp_path / "apiserver.log", dict(os.environ))
    try:
        wait_for("the API emulator's kubeconfig", kubeconfig.exists, timeout=60)
        yield server, kubeconfig
    finally:
        if server.poll() is None:
            server.send_signal(signal.SIGCONT)
        stop(server)


@pytest.mark.slow
def test_sigterm_with_the_api_server_stalled_mid_pass(
    api_server: tuple[subprocess.Popen[bytes], Path], tmp_path: Path, fault_report: FaultReport
) -> None:
    server, kubeconfig = api_server
    row = fault_report.row("API server stalled (SIGSTOP) with a pass in flight, then SIGTERM to the operator")
    config = tmp_path / "operator.yaml"
    config.write_text(
        "reconcileIntervalSeconds: 1\nbenchmark: {enabled: false}\n"
        f"api: {{requestTimeoutSeconds: {STALLED_CALL_TIMEOUT_S:g}}}\n"
    )
    env = {**os.environ, "KUBECONFIG": str(kubeconfig), "BLOOMZ_BIND_HOST": "127.0.0.1"}
    args = ["-m", "bloomz_operator", "--config", str(config), "--standalone", "-n", "default"]
    args += ["--liveness-port", str(free_port()), "--metrics-port", "0"]
    args += ["--shutdown-timeout-s", f"{DEADLINE_S:g}"]
    operator = spawn(args, tmp_path / "operator.log", env)
    try:
        (tmp_path / "plain.yaml").write_text(RESOURCE)
        kubectl = ["kubectl", "--kubeconfig", str(kubeconfig), "-n", "default"]
        subprocess.run([*kubectl, "apply", "-f", str(tmp_path / "plain.yaml")], check=True, timeout=60)
        wait_for(
            "the operator to create the pod",
            lambda: (
                "plain-"
                in subprocess.run(
                    [*kubectl, "get", "pods", "-o", "name"], capture_output=True, text=True, timeout=30
                ).stdout
            ),
            timeout=180,
        )
        server.send_signal(signal.SIGSTOP)
        time.sleep(3.0)  # passes run every second: one is now waiting for an answer that never comes
        operator.send_signal(signal.SIGTERM)
        sent = time.monotonic()
        code = operator.wait(STALLED_CALL_TIMEOUT_S)  # without the deadline: TimeoutExpired
        row.recover_s = time.monotonic() - sent
        row.happened = (
            f"a pass was stuck in a call with a {STALLED_CALL_TIMEOUT_S:g} s timeout; the operator said why "
            f"and exited {code} after {row.recover_s:.1f} s (deadline {DEADLINE_S:g} s)"
        )
        log = (tmp_path / "operator.log").read_text()
        assert code == EXIT_FORCED, log[-3000:]
        assert "did not stop within" in log
    finally:
        stop(operator)
