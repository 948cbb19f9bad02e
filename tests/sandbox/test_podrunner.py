"""The pod runner against the sandbox API server, with real local processes.

The pods run small Python programs (a grpc.health.v1 server, a failing command, ...) so these tests
take seconds; the runtime itself is exercised by the end-to-end test (tests/e2e/test_sandbox.py).
"""

from __future__ import annotations

import json
import os
import signal
import textwrap
from collections.abc import Iterator
from functools import partial
from pathlib import Path
from typing import Any

import psutil
import pytest
from bloomz_sandbox.apiserver import SandboxAPIServer
from bloomz_sandbox.node.addresses import port_listening
from bloomz_sandbox.node.podrunner import PodRunner, RunnerConfig, default_capacity
from helpers import pod_runner_cluster, read_pod
from helpers import wait_for as poll_until
from kubernetes import client

NAMESPACE = "default"
WAIT_S = 60.0


wait_for = partial(poll_until, timeout=WAIT_S)


def get_pod(core: Any, name: str) -> dict[str, Any] | None:
    return read_pod(core, NAMESPACE, name)


# A pod's program: write what it sees to the hostPath volume, then serve grpc.health.v1 on its pod IP.
HEALTH_SERVER = textwrap.dedent(
    """
    import json, os, sys, time
    from concurrent import futures
    import grpc
    from grpc_health.v1 import health, health_pb2, health_pb2_grpc
    out = sys.argv[1]
    with open(os.path.join(out, os.environ["POD_NAME"] + ".json"), "w") as f:
        json.dump({"argv": sys.argv, "env": dict(os.environ), "cwd": os.getcwd()}, f)
    server = grpc.server(futures.ThreadPoolExecutor(max_workers=2))
    servicer = health.HealthServicer()
    health_pb2_grpc.add_HealthServicer_to_server(servicer, server)
    server.add_insecure_port(os.environ["BLOOMZ_BIND_HOST"] + ":50051")
    server.start()
    time.sleep(float(os.environ.get("LOAD_SECONDS", "0")))
    servicer.set("", health_pb2.HealthCheckResponse.SERVING)
    server.wait_for_termination()
    """
)


def pod_body(name: str, command: list[str], **spec: Any) -> dict[str, Any]:
    container: dict[str, Any] = {"name": "main", "image": "example.invalid/img:1", "command": command}
    container.update(spec.pop("container", {}))
    return {
        "apiVersion": "v1",
        "kind": "Pod",
        "metadata": {"name": name, "labels": {"app": "podrunner-test"}},
        "spec": {"containers": [container], **spec},
    }


def health_pod(name: str) -> dict[str, Any]:
    return pod_body(
        name,
        ["python3", "-c", HEALTH_SERVER],
        container={
            "args": ["/data/seen"],
            "env": [
                {"name": "POD_NAME", "valueFrom": {"fieldRef": {"fieldPath": "metadata.name"}}},
                {"name": "POD_IP", "valueFrom": {"fieldRef": {"fieldPath": "status.podIP"}}},
                {"name": "MODEL_DIR", "value": "/data/models"},
                {"name": "LOAD_SECONDS", "value": "1"},
            ],
            "ports": [{"name": "grpc", "containerPort": 50051}],
            "readinessProbe": {"grpc": {"port": 50051}},
            "volumeMounts": [{"name": "data", "mountPath": "/data"}],
        },
        volumes=[{"name": "data", "hostPath": {"path": "/var/lib/podrunner-test"}}],
        terminationGracePeriodSeconds=5,
    )


@pytest.fixture(scope="module")
def cluster(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[client.CoreV1Api, PodRunner]]:
    workdir = tmp_path_factory.mktemp("podrunner")
    (workdir / "node" / "var" / "lib" / "podrunner-test" / "seen").mkdir(parents=True)
    config = RunnerConfig(
        node_root=workdir / "node",
        log_dir=workdir / "logs",
        capacity=default_capacity(gaudi_cards=8),
        node_labels={"accelerator": "gaudi2"},
        backoff_initial_seconds=0.2,
        backoff_max_seconds=1.0,
        resync_seconds=0.5,
    )
    with pod_runner_cluster(config, NAMESPACE) as cluster:
        yield cluster


def events_for(core: client.CoreV1Api, name: str) -> dict[str, str]:
    """Reason -> message of the events posted about a pod (the latest per reason)."""
    response = core.list_namespaced_event(NAMESPACE, _preload_content=False)
    items = json.loads(response.data).get("items") or []
    return {e["reason"]: e["message"] for e in items if e["involvedObject"]["name"] == name}


def condition(pod: dict[str, Any], kind: str) -> dict[str, Any]:
    return next(c for c in pod["status"].get("conditions", []) if c["type"] == kind)


def ready_pod(core: client.CoreV1Api, name: str) -> dict[str, Any]:
    def ready() -> dict[str, Any] | None:
        pod = get_pod(core, name)
        if pod and any(
            c["type"] == "Ready" and c["status"] == "True" for c in pod["status"].get("conditions", [])
        ):
            return pod
        return None

    return wait_for(f"{name} Ready", ready)


def test_a_cpu_pod_runs_on_its_own_address_and_becomes_ready(cluster, tmp_path_factory):
    core, runner = cluster
    core.create_namespaced_pod(NAMESPACE, health_pod("web-0"))
    pod = ready_pod(core, "web-0")
    status = pod["status"]
    assert status["phase"] == "Running"
    assert pod["spec"]["nodeName"] == "sandbox-node"
    assert status["podIP"].startswith("127.0.") and status["podIP"] != "127.0.0.1"
    assert status["hostIP"] == "127.0.0.1" and status["startTime"]
    assert {c["type"]: c["status"] for c in status["conditions"]} == {
        "PodScheduled": "True",
        "Initialized": "True",
        "ContainersReady": "True",
        "Ready": "True",
    }
    container = status["containerStatuses"][0]
    assert container["ready"] and container["started"] and container["restartCount"] == 0
    assert "running" in container["state"]
    assert port_listening(status["podIP"], 50051)

    seen = json.loads(
        (runner.config.node_root / "var/lib/podrunner-test/seen/web-0.json").read_text(encoding="utf-8")
    )
    node_data = str(runner.config.node_root / "var/lib/podrunner-test")
    assert seen["argv"][1:] == [f"{node_data}/seen"]
    assert seen["env"]["POD_NAME"] == "web-0"
    assert seen["env"]["POD_IP"] == status["podIP"] == seen["env"]["BLOOMZ_BIND_HOST"]
    assert seen["env"]["MODEL_DIR"] == f"{node_data}/models"
    assert "KUBECONFIG" not in seen["env"]
    assert runner.log_path(NAMESPACE, "web-0", "main").is_file()
    events = events_for(core, "web-0")
    assert events["Scheduled"] == "Successfully assigned default/web-0 to sandbox-node"
    assert events["Started"].startswith("Started container main")


def test_a_killed_process_is_restarted_and_ready_again(cluster):
    core, runner = cluster
    before = ready_pod(core, "web-0")
    pid = runner.main_process_id(NAMESPACE, "web-0", "main")
    assert pid is not None
    os.kill(pid, signal.SIGKILL)

    def restarted() -> dict[str, Any] | None:
        pod = get_pod(core, "web-0")
        statuses = (pod or {}).get("status", {}).get("containerStatuses") or [{}]
        return pod if statuses[0].get("restartCount") == 1 and statuses[0].get("ready") else None

    pod = wait_for("the restart", restarted)
    last = pod["status"]["containerStatuses"][0]["lastState"]["terminated"]
    assert last["exitCode"] == 137 and last["reason"] == "Error" and last["signal"] == 9
    assert pod["status"]["podIP"] == before["status"]["podIP"]  # the same pod keeps its address
    assert runner.main_process_id(NAMESPACE, "web-0", "main") not in (None, pid)
    assert "restarting failed container main (exit code 137)" in events_for(core, "web-0")["BackOff"]


def test_deleting_the_pod_stops_its_processes_and_frees_its_port(cluster):
    core, runner = cluster
    pod = ready_pod(core, "web-0")
    address = pod["status"]["podIP"]
    pids = runner.running_process_ids()
    assert pids
    core.delete_namespaced_pod("web-0", NAMESPACE)
    wait_for("the processes to end", lambda: not runner.running_process_ids())
    assert not any(psutil.pid_exists(pid) and psutil.Process(pid).status() != "zombie" for pid in pids)
    assert not port_listening(address, 50051)
    assert get_pod(core, "web-0") is None


def test_too_many_gaudi_cards_is_unschedulable_with_the_scheduler_message(cluster):
    core, _runner = cluster
    core.create_namespaced_pod(
        NAMESPACE,
        pod_body(
            "big-0", ["python3", "-c", "pass"], container={"resources": {"limits": {"habana.ai/gaudi": "16"}}}
        ),
    )

    def unschedulable() -> dict[str, Any] | None:
        pod = get_pod(core, "big-0")
        conditions = (pod or {}).get("status", {}).get("conditions") or []
        return next((c for c in conditions if c["type"] == "PodScheduled" and c["status"] == "False"), None)

    scheduled = wait_for("PodScheduled=False", unschedulable)
    assert scheduled["reason"] == "Unschedulable"
    assert scheduled["message"] == "0/1 nodes are available: 1 Insufficient habana.ai/gaudi."
    pod = get_pod(core, "big-0")
    assert pod["status"]["phase"] == "Pending" and not pod["spec"].get("nodeName")
    assert events_for(core, "big-0")["FailedScheduling"] == scheduled["message"]
    core.delete_namespaced_pod("big-0", NAMESPACE)


def test_a_fitting_gaudi_pod_is_bound_but_waits_for_the_simulated_device(cluster):
    core, runner = cluster
    gaudi = pod_body(
        "hpu-0",
        ["python3", "-c", "raise SystemExit(9)"],
        container={"resources": {"limits": {"habana.ai/gaudi": "6"}}},
    )
    gaudi["spec"]["nodeSelector"] = {"accelerator": "gaudi2"}
    core.create_namespaced_pod(NAMESPACE, gaudi)

    def waiting() -> dict[str, Any] | None:
        pod = get_pod(core, "hpu-0")
        statuses = (pod or {}).get("status", {}).get("containerStatuses") or [{}]
        return pod if "waiting" in statuses[0].get("state", {}) else None

    pod = wait_for("the Gaudi pod to wait", waiting)
    assert pod["spec"]["nodeName"] == "sandbox-node"
    assert pod["status"]["phase"] == "Pending"
    assert condition(pod, "PodScheduled")["status"] == "True"
    state = pod["status"]["containerStatuses"][0]["state"]["waiting"]
    assert state["reason"] == "ContainerCreating"
    assert state["message"] == "sandbox: habana.ai/gaudi devices are simulated, only CPU pods run locally"
    assert runner.main_process_id(NAMESPACE, "hpu-0", "main") is None

    # Its 6 cards are taken: a 4-card pod no longer fits, and fits again once the first is gone.
    core.create_namespaced_pod(
        NAMESPACE,
        pod_body(
            "hpu-1", ["python3", "-c", "pass"], container={"resources": {"limits": {"habana.ai/gaudi": "4"}}}
        ),
    )
    wait_for(
        "hpu-1 unschedulable",
        lambda: (
            "Insufficient habana.ai/gaudi"
            in str(((get_pod(core, "hpu-1") or {}).get("status") or {}).get("conditions"))
        ),
    )
    core.delete_namespaced_pod("hpu-0", NAMESPACE)
    wait_for(
        "hpu-1 scheduled",
        lambda: ((get_pod(core, "hpu-1") or {}).get("spec") or {}).get("nodeName") == "sandbox-node",
    )
    core.delete_namespaced_pod("hpu-1", NAMESPACE)

    mismatched = pod_body("a100-0", ["python3", "-c", "pass"])
    mismatched["spec"]["nodeSelector"] = {"accelerator": "a100"}
    core.create_namespaced_pod(NAMESPACE, mismatched)
    wait_for(
        "a100-0 unschedulable",
        lambda: (
            "didn't match Pod's node affinity/selector"
            in str(((get_pod(core, "a100-0") or {}).get("status") or {}).get("conditions"))
        ),
    )
    core.delete_namespaced_pod("a100-0", NAMESPACE)


@pytest.mark.parametrize(
    ("policy", "code", "phase", "restarts"),
    [("Never", 3, "Failed", 0), ("OnFailure", 0, "Succeeded", 0), ("OnFailure", 4, None, 2)],
)
def test_restart_policy_decides_between_restart_and_a_final_phase(cluster, policy, code, phase, restarts):
    core, _runner = cluster
    name = f"exit-{policy.lower()}-{code}"
    core.create_namespaced_pod(
        NAMESPACE, pod_body(name, ["python3", "-c", f"raise SystemExit({code})"], restartPolicy=policy)
    )
    if phase is not None:
        pod = wait_for(
            f"{name} {phase}", lambda: (get_pod(core, name) or {}).get("status", {}).get("phase") == phase
        )
        pod = get_pod(core, name)
        terminated = pod["status"]["containerStatuses"][0]["state"]["terminated"]
        assert terminated["exitCode"] == code
        assert terminated["reason"] == ("Completed" if code == 0 else "Error")
        assert pod["status"]["containerStatuses"][0]["restartCount"] == 0
    else:

        def crash_looping() -> dict[str, Any] | None:
            pod = get_pod(core, name) or {}
            statuses = pod.get("status", {}).get("containerStatuses") or [{}]
            return pod if statuses[0].get("restartCount", 0) >= restarts else None

        pod = wait_for(f"{name} restarted {restarts} times", crash_looping)
        container = pod["status"]["containerStatuses"][0]
        assert pod["status"]["phase"] == "Running"
        assert container["lastState"]["terminated"]["exitCode"] == code
        assert not container["ready"]
    core.delete_namespaced_pod(name, NAMESPACE)


def test_stopping_the_runner_stops_every_process(tmp_path: Path):
    config = RunnerConfig(node_root=tmp_path / "node", log_dir=tmp_path / "logs", resync_seconds=0.5)
    with SandboxAPIServer(namespaces=(NAMESPACE,)) as api:
        api_client = api.api_client()
        core = client.CoreV1Api(api_client)
        runner = PodRunner(api_client, config).start()
        try:
            # The child ignores SIGTERM: only the SIGKILL after the grace period ends it.
            program = "import signal, subprocess, sys, time; signal.signal(signal.SIGTERM, signal.SIG_IGN); "
            program += (
                "subprocess.Popen([sys.executable, '-c', 'import time; time.sleep(600)']); time.sleep(600)"
            )
            core.create_namespaced_pod(
                NAMESPACE, pod_body("sleeper-0", ["python3", "-c", program], terminationGracePeriodSeconds=1)
            )
            pids = wait_for(
                "the process tree",
                lambda: len(runner.running_process_ids()) >= 2 and runner.running_process_ids(),
            )
        finally:
            runner.stop()
            api_client.close()
    assert runner.running_process_ids() == []
    assert not any(psutil.pid_exists(pid) and psutil.Process(pid).status() != "zombie" for pid in pids)


def test_a_missing_host_path_directory_blocks_the_start_until_it_exists(cluster):
    core, runner = cluster
    pod = pod_body(
        "mount-0",
        ["python3", "-c", "import time; time.sleep(600)"],
        container={"volumeMounts": [{"name": "models", "mountPath": "/models"}]},
        volumes=[{"name": "models", "hostPath": {"path": "/srv/not-yet", "type": "Directory"}}],
        terminationGracePeriodSeconds=1,
    )
    core.create_namespaced_pod(NAMESPACE, pod)

    def waiting_message() -> str | None:
        statuses = ((get_pod(core, "mount-0") or {}).get("status") or {}).get("containerStatuses") or [{}]
        waiting = statuses[0].get("state", {}).get("waiting") or {}
        return waiting.get("message") if waiting.get("reason") == "ContainerCreating" else None

    message = wait_for("the mount failure", waiting_message)
    assert message == (
        'MountVolume.SetUp failed for volume "models" : '
        "hostPath type check failed: /srv/not-yet is not a directory"
    )
    (runner.config.node_root / "srv" / "not-yet").mkdir(parents=True)
    pod = ready_pod(core, "mount-0")  # no readiness probe: ready once running
    assert pod["status"]["phase"] == "Running"
    core.delete_namespaced_pod("mount-0", NAMESPACE)
    wait_for("mount-0 stopped", lambda: runner.main_process_id(NAMESPACE, "mount-0", "main") is None)
