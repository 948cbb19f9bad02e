"""The real operator (Kopf, --standalone, in a thread) against the sandbox Kubernetes API emulator over HTTP.

Pods do not run here (no kubelets): the tests play the scheduler and the kubelet by writing pod status, and
point "ready" pods at a real runtime on 127.0.0.1 (tiny checkpoint, CPU) for the latency measurement.
"""

from __future__ import annotations

import contextlib
import json
import os
import subprocess
import sys
import urllib.request
from collections.abc import Callable, Iterator
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any, TypeVar
from urllib.parse import parse_qs

import helpers
import kopf
import kubernetes
import pytest
import yaml
from bloomz_operator import rbac
from bloomz_operator.constants import GROUP, PLURAL, VERSION
from bloomz_operator.handlers import FINALIZER, register_handlers
from bloomz_operator.kubeapi import USER_AGENT
from bloomz_operator.policy import PolicySettings
from bloomz_operator.settings import BenchmarkSettings, Settings
from bloomz_sandbox.apiserver import SandboxAPIServer
from helpers import free_port, run_runtime
from kopf.testing import KopfRunner

ROOT = Path(__file__).resolve().parents[2]
CRD = ROOT / "crds" / "bloomzinferences.inference.bloomz.dev.yaml"
KUBECTL = ROOT / ".tools" / "bin" / "kubectl"
NS = "default"
UNSCHEDULABLE = "0/3 nodes are available: 3 Insufficient habana.ai/gaudi."
T = TypeVar("T")

pytestmark = pytest.mark.slow


def api_call(method: str, path: str, query: str) -> tuple[str, str, str] | None:
    """(apiGroup, resource, verb) of a request; None for discovery and other non-resource URLs."""
    parts = [p for p in path.split("/") if p]
    if parts[:1] == ["api"] and len(parts) >= 3:
        group, rest = "", parts[2:]
    elif parts[:1] == ["apis"] and len(parts) >= 4:
        group, rest = parts[1], parts[3:]
    else:
        return None
    if rest[:1] == ["namespaces"] and len(rest) >= 3:
        rest = rest[2:]  # namespaced: namespaces/<ns>/<resource>...
    resource, name, sub = rest[0], rest[1] if len(rest) > 1 else None, rest[2] if len(rest) > 2 else None
    if sub:
        resource = f"{resource}/{sub}"
    watch = parse_qs(query).get("watch", ["false"])[0] in ("true", "1")
    verb = {
        "GET": "watch" if watch else ("get" if name else "list"),
        "POST": "create",
        "PUT": "update",
        "PATCH": "patch",
        "DELETE": "delete" if name else "deletecollection",
    }[method]
    return group, resource, verb


def wait_for(what: str, probe: Callable[[], T | None], timeout: float = 90.0) -> T:
    """Poll until `probe` returns something truthy (generous: the machine is shared); an
    ApiException (an object not created yet) counts as "not yet"."""
    found: T = helpers.wait_for(what, probe, timeout, retry_on=(kubernetes.client.ApiException,))
    return found


@dataclass
class Cluster:
    server: SandboxAPIServer
    kubeconfig: Path
    core: Any
    custom: Any
    runtime_port: int

    def kubectl(self, *args: str, check: bool = True) -> str:
        result = subprocess.run(
            [str(KUBECTL), "--kubeconfig", str(self.kubeconfig), *args],
            capture_output=True,
            text=True,
            timeout=60,
            check=False,
        )
        if check:
            assert result.returncode == 0, f"kubectl {' '.join(args)}: {result.stderr}"
        return result.stdout

    def resource(self, name: str) -> dict[str, Any]:
        return dict(self.custom.get_namespaced_custom_object(GROUP, VERSION, NS, PLURAL, name))

    def pods(self, name: str) -> list[dict[str, Any]]:
        raw = self.core.list_namespaced_pod(NS, _preload_content=False)
        items = json.loads(raw.data)["items"]
        return [p for p in items if p["metadata"].get("labels", {}).get(f"{GROUP}/name") == name]

    def set_pod_status(self, pod: str, status: dict[str, Any]) -> None:
        self.core.patch_namespaced_pod_status(pod, NS, {"status": status}, _preload_content=False)

    def condition(self, name: str, type_: str) -> dict[str, Any] | None:
        for cond in self.resource(name).get("status", {}).get("conditions", []):
            if cond["type"] == type_:
                return dict(cond)
        return None


def key_pairs(cluster: Cluster, name: str) -> set[str]:
    """The group templates the resource's SSH Secret holds a key pair for."""
    data = cluster.core.read_namespaced_secret(f"{name}-ssh", NS).data or {}
    return {key.split(".", 1)[0] for key in data if key.endswith(".id_ed25519")}


def count_events(cluster: Cluster, reason: str) -> int:
    return sum(e.reason == reason for e in cluster.core.list_namespaced_event(NS).items)


def annotations(cluster: Cluster, name: str) -> dict[str, str]:
    return dict(cluster.resource(name)["metadata"].get("annotations") or {})


def unschedulable() -> dict[str, Any]:
    return {
        "phase": "Pending",
        "conditions": [
            {"type": "PodScheduled", "status": "False", "reason": "Unschedulable", "message": UNSCHEDULABLE}
        ],
    }


def ready() -> dict[str, Any]:
    return {
        "phase": "Running",
        "podIP": "127.0.0.1",
        "conditions": [
            {"type": "PodScheduled", "status": "True"},
            {"type": "Initialized", "status": "True"},
            {"type": "ContainersReady", "status": "True"},
            {"type": "Ready", "status": "True"},
        ],
        "containerStatuses": [
            {
                "name": "runtime",
                "image": "runtime:test",
                "imageID": "runtime@sha256:0",
                "ready": True,
                "started": True,
                "restartCount": 0,
                "state": {"running": {"startedAt": "2026-01-01T00:00:00Z"}},
            }
        ],
    }


@pytest.fixture(scope="module")
def runtime_port(tiny_checkpoint: Path) -> Iterator[int]:
    with run_runtime(tiny_checkpoint) as runtime:
        yield runtime.port


@pytest.fixture(scope="module")
def cluster(tmp_path_factory: pytest.TempPathFactory, runtime_port: int) -> Iterator[Cluster]:
    server = SandboxAPIServer(crd_paths=[CRD], record_requests=True)
    with server, pytest.MonkeyPatch.context() as mp:
        kubeconfig = server.write_kubeconfig(tmp_path_factory.mktemp("kube") / "config")
        mp.setenv("KUBECONFIG", str(kubeconfig))  # read by the operator's login at call time
        client = server.api_client()
        yield Cluster(
            server=server,
            kubeconfig=kubeconfig,
            core=kubernetes.client.CoreV1Api(client),
            custom=kubernetes.client.CustomObjectsApi(client),
            runtime_port=runtime_port,
        )


def operator_settings(runtime_port: int) -> Settings:
    return replace(
        Settings(),
        # Long on purpose: the tests see the operator react to pod and spec changes, not to its timer.
        reconcile_interval_seconds=300.0,
        benchmark=BenchmarkSettings(port=runtime_port, check_interval_seconds=1.0, timeout_seconds=120.0),
        # The CPU example mounts the model from the node (hostPath is off by default).
        policy=PolicySettings(host_path_prefixes=("/var/lib/bloomz/",)),
    )


@contextlib.contextmanager
def running_operator(cluster: Cluster) -> Iterator[KopfRunner]:
    """The real operator in a thread, as `python -m bloomz_operator --standalone -n default` runs it."""
    registry = kopf.OperatorRegistry()
    register_handlers(registry, operator_settings(cluster.runtime_port))
    with KopfRunner(["run", "--standalone", "--namespace", NS], registry=registry, timeout=60) as runner:
        yield runner
    assert runner.exception is None, runner.output


@pytest.fixture
def operator(cluster: Cluster) -> Iterator[KopfRunner]:
    with running_operator(cluster) as runner:
        yield runner


def operator_requests(cluster: Cluster, since: int = 0) -> list[tuple[str, str, str, str]]:
    return [r for r in cluster.server.requests[since:] if r[3].startswith(("kopf", USER_AGENT))]


def test_kubectl_apply_gaudi_example_through_latency_rollout_and_delete(
    cluster: Cluster, operator: KopfRunner
) -> None:
    name = "bloomz-7b1"
    cluster.kubectl("apply", "--validate=false", "-f", str(ROOT / "examples" / "bloomz.yaml"))
    uid = cluster.resource(name)["metadata"]["uid"]

    # The Gaudi pod and the Service, owned by the resource.
    (pod,) = wait_for("the pod", lambda: cluster.pods(name))
    owner = pod["metadata"]["ownerReferences"][0]
    assert (owner["kind"], owner["name"], owner["uid"], owner["controller"]) == (
        "BloomzInference",
        name,
        uid,
        True,
    )
    limits = pod["spec"]["containers"][0]["resources"]["limits"]
    assert limits["habana.ai/gaudi"] == "8" and pod["spec"]["hostIPC"] is True
    svc = wait_for("the service", lambda: cluster.core.read_namespaced_service(name, NS))
    assert svc.metadata.owner_references[0].uid == uid
    assert {p.name: p.port for p in svc.spec.ports} == {"grpc": 50051, "metrics": 9090, "http": 8000}
    first_pod = pod["metadata"]["name"]
    wait_for("the finalizer", lambda: FINALIZER in cluster.resource(name)["metadata"].get("finalizers", []))

    # The scheduler says no: the condition carries its message.
    cluster.set_pod_status(first_pod, unschedulable())
    scheduled = wait_for(
        "Scheduled=False",
        lambda: (c := cluster.condition(name, "Scheduled")) and c["reason"] == "Unschedulable" and c,
    )
    assert UNSCHEDULABLE in scheduled["message"]
    assert cluster.resource(name)["status"]["phase"] == "Pending"
    events = cluster.core.list_namespaced_event(NS).items
    assert any(e.reason == "Unschedulable" and UNSCHEDULABLE in e.message for e in events)

    # Ready, pointing at a real runtime: status.latency comes from a real Benchmark call.
    cluster.set_pod_status(first_pod, ready())
    latency = wait_for("status.latency", lambda: cluster.resource(name).get("status", {}).get("latency"), 180)
    assert latency["seconds"] > 0 and latency["tokensPerSecond"] > 0
    assert latency["maxNewTokens"] == 100 and latency["iterations"] == 5
    assert latency["promptTokens"] > 0 and latency["firstTokenMs"] > 0
    assert latency["pods"] == [
        {
            "pod": first_pod,
            "seconds": latency["seconds"],
            "tokensPerSecond": latency["tokensPerSecond"],
            "firstTokenMs": latency["firstTokenMs"],
            "perTokenMs": latency["perTokenMs"],
            # Info's weight bytes per token / the per-token time / 8 cards x the hpu bandwidth setting.
            "bandwidthEfficiency": latency["bandwidthEfficiency"],
        }
    ]
    assert 0 < latency["bandwidthEfficiency"] < 1
    status = cluster.resource(name)["status"]
    assert status["phase"] == "Ready" and status["readyReplicas"] == 1
    assert status["endpoint"] == f"{name}.{NS}.svc:50051"
    table = cluster.kubectl("get", "bloomz")
    assert "DEVICE" in table and "TPOT-MS" in table and name in table and "hpu" in table

    # A fresh measurement on request; the annotation is removed afterwards.
    measured_before = count_events(cluster, "LatencyMeasured")
    cluster.kubectl("annotate", "bloomz", name, f"{GROUP}/benchmark=now")
    wait_for("the annotation honoured", lambda: count_events(cluster, "LatencyMeasured") > measured_before)
    wait_for("the annotation removed", lambda: f"{GROUP}/benchmark" not in annotations(cluster, name))

    # Editing the spec rolls the pod: the old one goes, a new one (new template hash) comes.
    cluster.kubectl("patch", "bloomz", name, "--type=merge", "-p", '{"spec": {"cards": 4}}')
    (new_pod,) = wait_for(
        "the rolled pod", lambda: [p for p in cluster.pods(name) if p["metadata"]["name"] != first_pod]
    )
    wait_for("the old pod gone", lambda: len(cluster.pods(name)) == 1)
    assert new_pod["spec"]["containers"][0]["resources"]["limits"]["habana.ai/gaudi"] == "4"
    assert "--world-size" in (args := new_pod["spec"]["containers"][0]["args"])
    assert args[args.index("--world-size") + 1] == "4"
    wait_for("latency cleared", lambda: "latency" not in cluster.resource(name).get("status", {}))

    # Deleting the resource: the operator removes its children and its finalizer, so it is gone.
    cluster.kubectl("delete", "bloomz", name, "--wait=false")
    wait_for("the resource gone", lambda: name not in cluster.kubectl("get", "bloomz", "-o", "name"))
    wait_for("the pods gone", lambda: not cluster.pods(name))
    assert cluster.kubectl("get", "service", name, "--ignore-not-found", "-o", "name").strip() == ""


def tiny_resource(name: str, replicas: int) -> dict[str, Any]:
    body = yaml.safe_load((ROOT / "examples" / "bloomz-cpu.yaml").read_text())
    body["metadata"] = {"name": name, "namespace": NS}
    body["spec"]["replicas"] = replicas
    body["spec"]["benchmark"]["enabled"] = False
    return dict(body)


def tiny_group_resource(name: str) -> dict[str, Any]:
    """The CPU example as a multi-node replica: 4 ranks, 2 per "node", so a leader and one worker."""
    body = tiny_resource(name, 1)
    body["spec"].update(cards=4, cardsPerNode=2)
    body["spec"]["benchmark"]["enabled"] = True
    return body


def test_failed_pod_replaced_restart_creates_nothing_twice_scale_down(cluster: Cluster) -> None:
    name = "tiny-replicas"
    with running_operator(cluster):
        cluster.custom.create_namespaced_custom_object(GROUP, VERSION, NS, PLURAL, tiny_resource(name, 2))
        pods = wait_for("two pods", lambda: len(cluster.pods(name)) == 2 and cluster.pods(name))
        by_name = {p["metadata"]["name"]: p["metadata"]["uid"] for p in pods}
        assert all(p["spec"]["containers"][0]["resources"]["requests"]["cpu"] == "2" for p in pods)
        victim = sorted(by_name)[0]

        # An evicted pod is replaced (same deterministic name, a new object).
        cluster.set_pod_status(victim, {"phase": "Failed", "reason": "Evicted", "message": "low on memory"})
        wait_for(
            "the replacement",
            lambda: any(
                p["metadata"]["name"] == victim and p["metadata"]["uid"] != by_name[victim]
                for p in cluster.pods(name)
            ),
        )
        by_name = {p["metadata"]["name"]: p["metadata"]["uid"] for p in cluster.pods(name)}
        assert len(by_name) == 2

    # While the operator is down, someone deletes the Service.
    cluster.core.delete_namespaced_service(name, NS, _preload_content=False)

    # A restarted operator resumes without creating any pod twice, and brings the Service back.
    mark = len(cluster.server.requests)
    with running_operator(cluster):
        wait_for("the Service back", lambda: cluster.core.read_namespaced_service(name, NS))
        # A pod turning ready is reported: a whole pass (creates come before the status) has run since.
        cluster.set_pod_status(victim, ready())
        wait_for("readyReplicas 1", lambda: cluster.resource(name)["status"].get("readyReplicas") == 1)
        assert {p["metadata"]["name"]: p["metadata"]["uid"] for p in cluster.pods(name)} == by_name
        assert not [r for r in operator_requests(cluster, mark) if r[0] == "POST" and r[1].endswith("/pods")]

        # Scaling down removes the extra replica and keeps replica 0.
        cluster.custom.patch_namespaced_custom_object(
            GROUP, VERSION, NS, PLURAL, name, {"spec": {"replicas": 1}}
        )
        (kept,) = wait_for("one pod left", lambda: len(cluster.pods(name)) == 1 and cluster.pods(name))
        assert kept["metadata"]["labels"][f"{GROUP}/replica-index"] == "0"
        assert kept["metadata"]["uid"] == by_name[kept["metadata"]["name"]]

        cluster.custom.delete_namespaced_custom_object(GROUP, VERSION, NS, PLURAL, name)
        wait_for("the resource gone", lambda: name not in cluster.kubectl("get", "bloomz", "-o", "name"))
        wait_for("its pods gone", lambda: not cluster.pods(name))


def test_multi_node_group_secret_services_failure_recreation_and_leader_latency(cluster: Cluster) -> None:
    name = "tiny-groups"
    mark = len(cluster.server.requests)
    with running_operator(cluster):
        cluster.custom.create_namespaced_custom_object(GROUP, VERSION, NS, PLURAL, tiny_group_resource(name))
        pods = wait_for("the group", lambda: len(cluster.pods(name)) == 2 and cluster.pods(name))
        by_role = {p["metadata"]["labels"][f"{GROUP}/role"]: p for p in pods}
        leader, worker = by_role["leader"], by_role["worker"]
        args = leader["spec"]["containers"][0]["args"]
        assert args[args.index("--hosts") + 1] == ",".join(
            f"{p['metadata']['name']}.{name}-hosts" for p in (leader, worker)
        )
        secret = cluster.core.read_namespaced_secret(f"{name}-ssh", NS)
        hash_ = leader["metadata"]["labels"][f"{GROUP}/template-hash"]
        assert set(secret.data) == {"ssh-privatekey"} | {
            f"{hash_}.{f}" for f in ("id_ed25519", "id_ed25519.pub", "authorized_keys")
        }
        assert secret.type == "kubernetes.io/ssh-auth"
        assert secret.metadata.owner_references[0].name == name
        headless = cluster.core.read_namespaced_service(f"{name}-hosts", NS)
        assert headless.spec.cluster_ip == "None" and headless.spec.publish_not_ready_addresses
        service = wait_for("the Service", lambda: cluster.core.read_namespaced_service(name, NS))
        assert service.spec.selector[f"{GROUP}/role"] == "leader"

        # The worker is evicted: the whole group is recreated and the status names the member.
        uids = {p["metadata"]["name"]: p["metadata"]["uid"] for p in pods}
        evicted = {"phase": "Failed", "reason": "Evicted", "message": "The node was low on memory."}
        cluster.set_pod_status(worker["metadata"]["name"], evicted)
        failure = wait_for(
            "lastGroupFailure", lambda: cluster.resource(name).get("status", {}).get("lastGroupFailure")
        )
        assert (failure["pod"], failure["role"], failure["reason"]) == (
            worker["metadata"]["name"],
            "worker",
            "Evicted",
        )
        wait_for(
            "the group recreated",
            lambda: (
                len(new := cluster.pods(name)) == 2
                and all(p["metadata"]["uid"] != uids[p["metadata"]["name"]] for p in new)
            ),
        )
        assert count_events(cluster, "GroupRecreated") >= 1

        # Both pods ready (the leader pointing at a real runtime): the group serves, and the latency is
        # measured on its leader only.
        for pod in cluster.pods(name):
            cluster.set_pod_status(pod["metadata"]["name"], ready())
        latency = wait_for(
            "status.latency", lambda: cluster.resource(name).get("status", {}).get("latency"), 180
        )
        assert [entry["pod"] for entry in latency["pods"]] == [leader["metadata"]["name"]]
        assert latency["seconds"] > 0
        status = cluster.resource(name)["status"]
        assert (status["phase"], status["replicas"], status["readyReplicas"]) == ("Ready", 1, 1)
        # The Services were created once and never replaced (their selectors read back as written).
        service_writes = [
            r[:2] for r in operator_requests(cluster, mark) if "/services" in r[1] and r[0] != "GET"
        ]
        assert sorted(service_writes) == [("POST", f"/api/v1/namespaces/{NS}/services")] * 2

        cluster.custom.delete_namespaced_custom_object(GROUP, VERSION, NS, PLURAL, name)
        wait_for("the resource gone", lambda: name not in cluster.kubectl("get", "bloomz", "-o", "name"))
        wait_for("its pods gone", lambda: not cluster.pods(name))
        assert (
            cluster.kubectl("get", "service", f"{name}-hosts", "--ignore-not-found", "-o", "name").strip()
            == ""
        )


def test_every_api_call_of_the_operator_is_granted_by_rbac(cluster: Cluster) -> None:
    # A short life of a resource of its own, so this test stands alone; earlier tests add their calls.
    name, multi = "tiny-rbac", "rbac-groups"
    with running_operator(cluster):
        cluster.custom.create_namespaced_custom_object(GROUP, VERSION, NS, PLURAL, tiny_resource(name, 1))
        # A multi-node resource too: its SSH Secret and headless Service are calls of their own.
        cluster.custom.create_namespaced_custom_object(GROUP, VERSION, NS, PLURAL, tiny_group_resource(multi))
        wait_for("the pod", lambda: cluster.pods(name))
        wait_for("the group", lambda: len(cluster.pods(multi)) == 2)
        # Its NetworkPolicy and PodDisruptionBudget edited behind its back (as a settings change would leave
        # them stale): the next pass (a pod change wakes it) patches them back.
        for kind, edit in (("networkpolicy", {"ingress": []}), ("pdb", {"maxUnavailable": 0})):
            cluster.kubectl("patch", kind, name, "--type=merge", "-p", json.dumps({"spec": edit}))
        pod = cluster.pods(name)[0]["metadata"]["name"]
        cluster.kubectl("annotate", "pod", pod, "test.bloomz.dev/wake=1", "--overwrite")
        wait_for(
            "the NetworkPolicy and PodDisruptionBudget patched back",
            lambda: (
                cluster.kubectl("get", "pdb", name, "-o", "jsonpath={.spec.maxUnavailable}").strip() == "1"
                and cluster.kubectl("get", "networkpolicy", name, "-o", "jsonpath={.spec.ingress[*].ports}")
            ),
            120,
        )
        # A new group template gets a key pair of its own in the SSH Secret (a patch), the old one goes.
        first = key_pairs(cluster, multi)
        cluster.custom.patch_namespaced_custom_object(
            GROUP, VERSION, NS, PLURAL, multi, {"spec": {"generation": {"maxBatchSize": 2}}}
        )
        wait_for("a new key pair only", lambda: (pairs := key_pairs(cluster, multi)) and not pairs & first)
        for resource in (name, multi):
            wait_for("a status", lambda r=resource: cluster.resource(r).get("status", {}).get("phase"))
            cluster.custom.delete_namespaced_custom_object(GROUP, VERSION, NS, PLURAL, resource)
            wait_for(
                "the resource gone",
                lambda r=resource: r not in cluster.kubectl("get", "bloomz", "-o", "name"),
            )
    calls = {call for r in operator_requests(cluster) if (call := api_call(*r[:3])) is not None}
    rules = rbac.NAMESPACED_RULES + rbac.CLUSTER_RULES
    ungranted = sorted(call for call in calls if not rbac.allows(rules, *call))
    assert ungranted == []
    # Nothing more is granted than what the operator was seen using.
    granted = {
        (group, resource, verb)
        for rule in rules
        for group in rule["apiGroups"]
        for resource in rule["resources"]
        for verb in rule["verbs"]
    }
    assert granted == calls


def test_python_m_bloomz_operator_serves_liveness_and_reconciles(cluster: Cluster, tmp_path: Path) -> None:
    """The operator as images run it: a process, settings from a file, Kopf's /healthz."""
    name = "tiny-process"
    config = tmp_path / "operator.yaml"
    config.write_text(
        "logLevel: INFO\nreconcileIntervalSeconds: 300\nbenchmark: {enabled: false}\n"
        "policy: {hostPathPrefixes: [/var/lib/bloomz/]}\n"
    )
    port = free_port()
    env = {**os.environ, "KUBECONFIG": str(cluster.kubeconfig), "BLOOMZ_BIND_HOST": "127.0.0.1"}
    log_path = tmp_path / "operator.log"
    with open(log_path, "wb") as log:
        process = subprocess.Popen(
            [
                *(sys.executable, "-m", "bloomz_operator", "--config", str(config), "--standalone"),
                *("--namespace", NS, "--liveness-port", str(port)),
            ],
            env=env,
            stdout=log,
            stderr=subprocess.STDOUT,
        )
    try:

        def healthy() -> bool:
            try:
                with urllib.request.urlopen(f"http://127.0.0.1:{port}/healthz", timeout=5) as reply:
                    return bool(reply.status == 200)
            except OSError:
                assert process.poll() is None, log_path.read_text()
                return False

        wait_for("/healthz", healthy)
        cluster.custom.create_namespaced_custom_object(GROUP, VERSION, NS, PLURAL, tiny_resource(name, 1))
        wait_for("the pod", lambda: cluster.pods(name))
        cluster.custom.delete_namespaced_custom_object(GROUP, VERSION, NS, PLURAL, name)
        wait_for("the resource gone", lambda: name not in cluster.kubectl("get", "bloomz", "-o", "name"))
    finally:
        process.terminate()
        try:
            process.wait(timeout=60)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait(timeout=30)
