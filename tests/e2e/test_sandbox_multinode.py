"""A multi-node group end to end in the sandbox: the real operator (Kopf) against the API emulator, two
simulated nodes, the local pod runner, and the shipped SSH wiring - the operator's key pair Secret mounted
with mode 0400, the worker's real sshd listening on its pod address, the leader's mpirun reaching it with
real ssh and `known_hosts` - with pod DNS names (`<pod>.<headless service>`) resolved by nss_wrapper.

One sandbox for the module; the tests run in file order: apply -> a 2-pod group on 2 nodes, Ready, latency
measured on the leader -> greedy generate through the Service == plain transformers -> deleting the worker
recreates the whole group -> deleting the resource leaves no process and no listening port.
"""

from __future__ import annotations

import shutil
from collections.abc import Callable, Iterator
from functools import partial
from pathlib import Path
from typing import Any

import grpc
import psutil
import pytest
import yaml
from bloomz_api.proto import generate_pb2 as pb
from bloomz_api.proto import generate_pb2_grpc as pb_grpc
from bloomz_sandbox.node.addresses import port_listening
from bloomz_sandbox.node.processes import processes_with_env
from bloomz_sandbox.stack import Sandbox, SandboxOptions
from helpers import conditions
from helpers import wait_for as poll_until

pytestmark = pytest.mark.slow

REPO = Path(__file__).resolve().parents[2]
EXAMPLE = REPO / "examples" / "bloomz-cpu-2nodes.yaml"
NAME = yaml.safe_load(EXAMPLE.read_text())["metadata"]["name"]
MODEL_ON_NODE = Path("node/var/lib/bloomz/models/bloomz-tiny")  # the example's hostPath, under the workdir
HEADLESS = f"{NAME}-hosts"
PROMPTS = ["DeepSpeed is a machine learning framework", "Kubernetes runs containers in pods"]
NEW_TOKENS = 12
WAIT_S = 420.0  # generous: 2 shared cores, other test suites running at the same time
PORTS = (50051, 9090, 2222)


wait_for = partial(poll_until, timeout=WAIT_S, interval=1.0)


def role(pod: dict[str, Any]) -> str:
    return str(pod["metadata"]["labels"].get("inference.bloomz.dev/role", ""))


def live_pods(sandbox: Sandbox) -> list[dict[str, Any]]:
    return [p for p in sandbox.list_pods(instance=NAME) if not p["metadata"].get("deletionTimestamp")]


def group_processes(sandbox: Sandbox) -> list[psutil.Process]:
    """Every process of the sandbox's pods, wherever it runs (the leader's, the worker's SSH sessions'
    daemonized orted and ranks): they all carry the sandbox's pod DNS hosts file in their environment."""
    return processes_with_env({"NSS_WRAPPER_HOSTS": str(sandbox.hosts_file)})


@pytest.fixture(scope="module")
def sandbox(tmp_path_factory: pytest.TempPathFactory, tiny_checkpoint: Path) -> Iterator[Sandbox]:
    workdir = tmp_path_factory.mktemp("sandbox-multinode")
    shutil.copytree(tiny_checkpoint, workdir / MODEL_ON_NODE)
    stack = Sandbox(SandboxOptions(workdir=workdir, nodes=2, backoff_max_seconds=5.0))
    stack.start()
    try:
        yield stack
    finally:
        stack.stop()
    assert group_processes(stack) == []


def ready_with_latency(sandbox: Sandbox) -> dict[str, Any] | None:
    resource = sandbox.get_resource(NAME) or {}
    ready = conditions(resource).get("Ready", {}).get("status") == "True"
    latency = (resource.get("status") or {}).get("latency") or {}
    return resource if ready and latency.get("seconds") else None


def test_a_two_node_group_is_placed_on_two_nodes_and_ready_with_latency_from_the_leader(
    sandbox: Sandbox,
) -> None:
    sandbox.kubectl("apply", "--validate=false", "-f", str(EXAMPLE))
    resource = sandbox.wait_for("the group Ready with a latency", lambda: ready_with_latency(sandbox), WAIT_S)

    pods = {role(p): p for p in live_pods(sandbox)}
    assert sorted(pods) == ["leader", "worker"]
    leader, worker = pods["leader"], pods["worker"]
    assert {leader["spec"]["nodeName"], worker["spec"]["nodeName"]} == {"sandbox-node", "sandbox-node-2"}
    assert leader["spec"]["subdomain"] == worker["spec"]["subdomain"] == HEADLESS
    assert all(s["ready"] for p in pods.values() for s in p["status"]["containerStatuses"])

    status = resource["status"]
    assert status["replicas"] == status["readyReplicas"] == 1
    latency = status["latency"]
    assert latency["seconds"] > 0 and latency["tokensPerSecond"] > 0
    assert [p["pod"] for p in latency["pods"]] == [leader["metadata"]["name"]]
    assert sandbox.service_endpoints(NAME) == [leader["status"]["podIP"]]  # the Service routes to the leader

    # Pod DNS: every form of the worker's name resolves to its pod address for the pods' processes.
    hosts = sandbox.hosts_file.read_text()
    worker_name = f"{worker['metadata']['name']}.{HEADLESS}"
    assert f"{worker['status']['podIP']} {worker_name} {worker_name}.default " in hosts
    assert f"{worker_name}.default.svc.cluster.local" in hosts

    # The real SSH hop: the worker's sshd on its own address accepted the leader's key, and the leader's
    # mpirun kept the hostfile's DNS names whole.
    worker_log = sandbox.log_dir / "default" / worker["metadata"]["name"] / "runtime.log"
    worker_text = worker_log.read_text()
    assert f"Server listening on {worker['status']['podIP']} port 2222" in worker_text
    assert "Accepted publickey for" in worker_text
    leader_log = sandbox.log_dir / "default" / leader["metadata"]["name"] / "runtime.log"
    assert "accepts SSH on port 2222" in leader_log.read_text()
    key = sandbox.log_dir / "default" / worker["metadata"]["name"] / "volumes" / "ssh" / "id_ed25519"
    assert key.stat().st_mode & 0o777 == 0o400  # the Secret volume's defaultMode

    # The operator (installed from its chart) made the group's SSH key Secret with its own RBAC.
    audit = sandbox.apiserver.audit_log
    operator = [r for r in audit if r.user == "system:serviceaccount:bloomz-system:bloomz-operator"]
    assert {("create", "secrets"), ("get", "secrets")} <= {
        (r.verb, r.resource) for r in operator if r.code < 500
    }
    assert not [r for r in operator if r.code in (401, 403)]


def test_generate_through_the_service_equals_single_process_transformers_greedy(
    sandbox: Sandbox, hf_greedy: Callable[[str, int], list[int]]
) -> None:
    (address,) = sandbox.service_endpoints(NAME)
    with grpc.insecure_channel(f"{address}:50051") as channel:
        stub = pb_grpc.TextGenerationStub(channel)
        for prompt in PROMPTS:
            parameters = pb.GenerationParameters(max_new_tokens=NEW_TOKENS, ignore_eos=True)
            answer = stub.Generate(pb.GenerateRequest(prompt=prompt, parameters=parameters), timeout=120)
            assert list(answer.token_ids) == hf_greedy(prompt, NEW_TOKENS), prompt
        assert stub.Info(pb.InfoRequest(), timeout=30).world_size == 2

    # One rank per node: rank 1 runs under the worker's identity (started through its SSH session) and
    # reaches rank 0's rendezvous by the leader's DNS name.
    pods = {role(p): p for p in live_pods(sandbox)}
    ranks = {}
    for process in group_processes(sandbox):
        try:
            if "bloomz_runtime.serve" in " ".join(process.cmdline()):
                environ = process.environ()
                ranks[environ["OMPI_COMM_WORLD_RANK"]] = environ
        except (psutil.Error, KeyError):
            continue
    assert sorted(ranks) == ["0", "1"]
    assert ranks["0"]["NSS_WRAPPER_HOSTNAME"] == pods["leader"]["spec"]["hostname"]
    assert ranks["1"]["NSS_WRAPPER_HOSTNAME"] == pods["worker"]["spec"]["hostname"]
    for environ in ranks.values():
        assert environ["MASTER_ADDR"] == f"{pods['leader']['metadata']['name']}.{HEADLESS}"
        assert environ["OMPI_COMM_WORLD_LOCAL_SIZE"] == "1"


def test_deleting_the_worker_recreates_the_whole_group(sandbox: Sandbox) -> None:
    before = {role(p): p["metadata"]["uid"] for p in live_pods(sandbox)}
    worker = next(p for p in live_pods(sandbox) if role(p) == "worker")
    sandbox.kubectl("delete", "pod", worker["metadata"]["name"], "--wait=false")

    def recreated() -> dict[str, str] | None:
        now = {role(p): p["metadata"]["uid"] for p in live_pods(sandbox)}
        fresh = sorted(now) == ["leader", "worker"] and not set(now.values()) & set(before.values())
        return now if fresh else None

    wait_for("a new leader and a new worker", recreated, timeout=180)
    failure = (sandbox.get_resource(NAME) or {})["status"]["lastGroupFailure"]
    assert failure["pod"] == worker["metadata"]["name"] and failure["role"] == "worker"
    assert failure["group"] == 0 and failure["reason"]

    # The new group serves again, from its new leader only.
    def serving_again() -> list[str] | None:
        leaders = [p for p in live_pods(sandbox) if role(p) == "leader"]
        fresh = leaders and leaders[0]["metadata"]["uid"] != before["leader"]
        endpoints = sandbox.service_endpoints(NAME)
        return endpoints if fresh and endpoints == [leaders[0]["status"].get("podIP")] else None

    (address,) = wait_for("the new group serving", serving_again)
    with grpc.insecure_channel(f"{address}:50051") as channel:
        stub = pb_grpc.TextGenerationStub(channel)
        assert stub.Info(pb.InfoRequest(), timeout=30).world_size == 2


def test_deleting_the_resource_leaves_no_process_and_no_port(sandbox: Sandbox) -> None:
    addresses = {p["status"]["podIP"] for p in sandbox.list_pods(instance=NAME) if p["status"].get("podIP")}
    sandbox.kubectl("delete", "-f", str(EXAMPLE), "--wait=false")
    runner = sandbox.runner
    assert runner is not None
    sandbox.wait_for(
        "no pod, no resource, no process of the group",
        lambda: not sandbox.list_pods() and not sandbox.get_resource(NAME) and not group_processes(sandbox),
        timeout=180,
    )
    assert runner.running_process_ids(namespace="default") == []  # the operator pod runs on
    assert not [(a, port) for a in addresses for port in PORTS if port_listening(a, port)]
    assert sandbox.hosts_file.read_text() == ""  # no pod DNS name left
