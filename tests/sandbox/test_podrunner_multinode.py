"""The pod runner with two simulated nodes, against the sandbox API server, with real local processes:
anti-affinity placement and the scheduler's message, Secret volumes (a missing Secret keeps the pod in
ContainerCreating; once it exists its keys are written with their modes), pod DNS names resolved by the
pods' processes through nss_wrapper, and a process a pod started outside its process tree dying with it.
"""

from __future__ import annotations

import base64
import json
import textwrap
from collections.abc import Callable, Iterator
from functools import partial
from pathlib import Path
from typing import Any

import pytest
from bloomz_sandbox.apiserver import SandboxAPIServer
from bloomz_sandbox.node.podrunner import PodRunner, RunnerConfig
from bloomz_sandbox.node.processes import processes_with_env
from helpers import pod_runner_cluster, read_pod
from helpers import wait_for as poll_until
from kubernetes import client

NAMESPACE = "default"
WAIT_S = 60.0
GROUP = {"group": "g0"}


wait_for = partial(poll_until, timeout=WAIT_S)


def get_pod(core: Any, name: str) -> dict[str, Any] | None:
    return read_pod(core, NAMESPACE, name)


# Report what the pod sees (its Secret volume, its peer's DNS name), start a detached grandchild that
# escapes the pod's process tree (as orted --daemonize does), then stay up.
PROGRAM = textwrap.dedent(
    """
    import json, os, socket, subprocess, sys, time
    keys = sys.argv[1]
    seen = {
        "files": {n: [open(os.path.join(keys, n)).read(), oct(os.stat(os.path.join(keys, n)).st_mode & 0o777)]
                  for n in sorted(os.listdir(keys))},
        "peer": socket.getaddrinfo(os.environ["PEER"], 22, socket.AF_INET)[0][4][0],
        "hostname": socket.gethostname(),
    }
    print("SEEN " + json.dumps(seen), flush=True)
    subprocess.Popen([sys.executable, "-c", "import time; time.sleep(600)"], start_new_session=True)
    time.sleep(600)
    """
)


def member(name: str, peer: str) -> dict[str, Any]:
    return {
        "apiVersion": "v1",
        "kind": "Pod",
        "metadata": {"name": name, "labels": dict(GROUP)},
        "spec": {
            "hostname": name,
            "subdomain": "g-hosts",
            "terminationGracePeriodSeconds": 2,
            "containers": [
                {
                    "name": "main",
                    "image": "example.invalid/img:1",
                    "command": ["python3", "-c", PROGRAM, "/etc/keys"],
                    "env": [{"name": "PEER", "value": f"{peer}.g-hosts"}],
                    "volumeMounts": [{"name": "keys", "mountPath": "/etc/keys", "readOnly": True}],
                }
            ],
            "volumes": [
                {
                    "name": "keys",
                    "secret": {
                        "secretName": "g-ssh",
                        "defaultMode": 0o400,
                        "items": [{"key": "id", "path": "id"}],
                    },
                }
            ],
            "affinity": {
                "podAntiAffinity": {
                    "requiredDuringSchedulingIgnoredDuringExecution": [
                        {"labelSelector": {"matchLabels": GROUP}, "topologyKey": "kubernetes.io/hostname"}
                    ]
                }
            },
        },
    }


@pytest.fixture(scope="module")
def cluster(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[Any, PodRunner]]:
    workdir = tmp_path_factory.mktemp("podrunner-multinode")
    config = RunnerConfig(
        node_root=workdir / "node", log_dir=workdir / "logs", node_count=2, resync_seconds=0.5
    )
    with pod_runner_cluster(config, NAMESPACE) as cluster:
        yield cluster


def waiting(core: Any, name: str) -> dict[str, Any] | None:
    pod = get_pod(core, name) or {}
    statuses = pod.get("status", {}).get("containerStatuses") or [{}]
    return (statuses[0].get("state") or {}).get("waiting")


def seen_by(runner: PodRunner, name: str) -> dict[str, Any] | None:
    log = runner.log_path(NAMESPACE, name, "main")
    lines = log.read_text().splitlines() if log.is_file() else []
    found = [json.loads(line[5:]) for line in lines if line.startswith("SEEN ")]
    return found[-1] if found else None


def seen_reader(runner: PodRunner, name: str) -> Callable[[], dict[str, Any] | None]:
    return lambda: seen_by(runner, name)


def test_the_nodes_are_registered(cluster: tuple[Any, PodRunner]) -> None:
    core, _runner = cluster
    nodes = json.loads(core.list_node(_preload_content=False).data)["items"]
    assert sorted(n["metadata"]["name"] for n in nodes) == ["sandbox-node", "sandbox-node-2"]
    assert all(n["metadata"]["labels"]["kubernetes.io/hostname"] == n["metadata"]["name"] for n in nodes)


def test_a_missing_secret_keeps_the_pods_creating_with_the_kubelet_message(
    cluster: tuple[Any, PodRunner],
) -> None:
    core, _runner = cluster
    core.create_namespaced_pod(NAMESPACE, member("g-0", peer="g-1"))
    core.create_namespaced_pod(NAMESPACE, member("g-1", peer="g-0"))
    state = wait_for("g-0 waiting for its Secret", lambda: (waiting(core, "g-0") or {}).get("message"))
    assert state == 'MountVolume.SetUp failed for volume "keys" : secret "g-ssh" not found'
    assert waiting(core, "g-0")["reason"] == "ContainerCreating"  # type: ignore[index]


def test_members_run_on_distinct_nodes_see_the_secret_and_resolve_each_other(
    cluster: tuple[Any, PodRunner],
) -> None:
    core, runner = cluster
    secret = {"metadata": {"name": "g-ssh"}, "data": {"id": base64.b64encode(b"KEY").decode()}}
    core.create_namespaced_secret(NAMESPACE, secret)
    seen = {name: wait_for(f"{name} running", seen_reader(runner, name)) for name in ("g-0", "g-1")}
    pods = {name: get_pod(core, name) or {} for name in ("g-0", "g-1")}
    assert {p["spec"]["nodeName"] for p in pods.values()} == {"sandbox-node", "sandbox-node-2"}
    assert seen["g-0"]["files"] == {"id": ["KEY", "0o400"]}
    assert seen["g-0"]["peer"] == pods["g-1"]["status"]["podIP"]
    assert seen["g-1"]["peer"] == pods["g-0"]["status"]["podIP"]
    assert seen["g-1"]["hostname"] == "g-1"


def test_a_third_member_finds_no_node_with_the_scheduler_message(cluster: tuple[Any, PodRunner]) -> None:
    core, _runner = cluster
    core.create_namespaced_pod(NAMESPACE, member("g-2", peer="g-0"))

    def unschedulable() -> dict[str, Any] | None:
        conditions = (get_pod(core, "g-2") or {}).get("status", {}).get("conditions") or []
        return next((c for c in conditions if c["type"] == "PodScheduled" and c["status"] == "False"), None)

    scheduled = wait_for("PodScheduled=False", unschedulable)
    assert scheduled["message"] == "0/2 nodes are available: 2 node(s) didn't match pod anti-affinity rules."
    core.delete_namespaced_pod("g-2", NAMESPACE)


def test_deleting_a_pod_kills_what_it_started_outside_its_process_tree(
    cluster: tuple[Any, PodRunner],
) -> None:
    core, runner = cluster
    identity = {"NSS_WRAPPER_HOSTS": str(runner.hosts_file), "NSS_WRAPPER_HOSTNAME": "g-0"}
    escaped = wait_for("g-0's detached child", lambda: len(processes_with_env(identity)) >= 2)
    assert escaped
    core.delete_namespaced_pod("g-0", NAMESPACE)
    wait_for("g-0 gone", lambda: get_pod(core, "g-0") is None)
    assert processes_with_env(identity) == []
    wait_for("g-0's DNS name gone", lambda: "g-0.g-hosts" not in runner.hosts_file.read_text())
    assert "g-1.g-hosts" in runner.hosts_file.read_text()
    core.delete_namespaced_pod("g-1", NAMESPACE)
    wait_for("g-1 gone", lambda: get_pod(core, "g-1") is None)
    assert processes_with_env({"NSS_WRAPPER_HOSTS": str(runner.hosts_file)}) == []


def test_a_pod_without_a_subdomain_runs_without_nss_wrapper(cluster: tuple[Any, PodRunner]) -> None:
    """Single-node pods keep their plain resolver (nss_wrapper fails IPv6 + V4MAPPED lookups of numeric
    IPv4 addresses, which torch's rendezvous makes for MASTER_ADDR=127.0.0.1)."""
    core, runner = cluster
    program = (
        "import json, os, time; print('ENV ' + json.dumps(dict(os.environ)), flush=True); time.sleep(600)"
    )
    body = {
        "apiVersion": "v1",
        "kind": "Pod",
        "metadata": {"name": "single"},
        "spec": {
            "terminationGracePeriodSeconds": 1,
            "containers": [{"name": "main", "image": "x", "command": ["python3", "-c", program]}],
        },
    }
    core.create_namespaced_pod(NAMESPACE, body)
    log = runner.log_path(NAMESPACE, "single", "main")

    def env_seen() -> dict[str, str] | None:
        lines = log.read_text().splitlines() if log.is_file() else []
        found = [json.loads(line[4:]) for line in lines if line.startswith("ENV ")]
        return found[-1] if found else None

    env = wait_for("the pod's environment", env_seen)
    assert "NSS_WRAPPER_HOSTS" not in env and "libnss_wrapper" not in env.get("LD_PRELOAD", "")
    core.delete_namespaced_pod("single", NAMESPACE)
    wait_for("single gone", lambda: get_pod(core, "single") is None)


def test_without_nss_wrapper_a_pod_with_a_dns_name_waits_and_says_why(tmp_path: Path) -> None:
    config = RunnerConfig(
        node_root=tmp_path / "node", log_dir=tmp_path / "logs", resync_seconds=0.5, nss_wrapper=None
    )
    with SandboxAPIServer(namespaces=(NAMESPACE,)) as api:
        api_client = api.api_client()
        runner = PodRunner(api_client, config).start()
        try:
            core: Any = client.CoreV1Api(api_client)  # raw dicts in, raw JSON out
            core.create_namespaced_pod(NAMESPACE, member("g-0", peer="g-1"))
            state = wait_for("g-0 waiting", lambda: waiting(core, "g-0"))
            assert state["reason"] == "ContainerCreating"
            assert "needs nss_wrapper" in state["message"] and "libnss-wrapper" in state["message"]
            assert runner.running_process_ids() == []
        finally:
            runner.stop()
            api_client.close()
