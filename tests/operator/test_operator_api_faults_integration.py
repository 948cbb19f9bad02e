"""The real operator (Kopf, in a thread) against the sandbox API server while it misbehaves: a pod create
refused by admission, 500s, stalled requests, then everything failing for a while. The operator shows each
fault in the resource's status, never hangs, and converges once the server behaves again.

No runtime runs here (benchmarks off): the pods only have to exist.
"""

from __future__ import annotations

import json
import time
from collections.abc import Callable, Iterator
from dataclasses import replace
from pathlib import Path
from typing import Any, TypeVar

import helpers
import kopf
import kubernetes
import pytest
import yaml
from bloomz_operator.constants import GROUP, PLURAL, VERSION
from bloomz_operator.handlers import register_handlers
from bloomz_operator.kubeapi import USER_AGENT
from bloomz_operator.policy import PolicySettings
from bloomz_operator.settings import ApiSettings, BenchmarkSettings, RolloutSettings, Settings
from bloomz_sandbox.apiserver import SandboxAPIServer
from kopf.testing import KopfRunner

ROOT = Path(__file__).resolve().parents[2]
CRD = ROOT / "crds" / "bloomzinferences.inference.bloomz.dev.yaml"
NS = "default"
NAME = "faulty"
PSS = 'pods "x" is forbidden: violates PodSecurity "restricted:latest": allowPrivilegeEscalation != false'
T = TypeVar("T")

pytestmark = pytest.mark.slow


def wait_for(what: str, probe: Callable[[], T | None], timeout: float = 60.0) -> T:
    """Poll until `probe` returns something truthy; an ApiException (not created yet) is "not yet"."""
    found: T = helpers.wait_for(what, probe, timeout, retry_on=(kubernetes.client.ApiException,))
    return found


@pytest.fixture
def server(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[SandboxAPIServer]:
    with SandboxAPIServer(crd_paths=[CRD]) as api:
        monkeypatch.setenv("KUBECONFIG", str(api.write_kubeconfig(tmp_path / "kubeconfig")))
        yield api


def resource() -> dict[str, Any]:
    body = yaml.safe_load((ROOT / "examples" / "bloomz-cpu.yaml").read_text())
    body["metadata"] = {"name": NAME, "namespace": NS}
    body["spec"]["replicas"] = 1
    body["spec"]["benchmark"]["enabled"] = False
    return dict(body)


def settings() -> Settings:
    return replace(
        Settings(),
        # Long: passes here come from pod events and retries, not from the safety-net timer.
        reconcile_interval_seconds=300.0,
        benchmark=BenchmarkSettings(enabled=False),
        # The example mounts its model from the node (hostPath), which the policy refuses unless allowed.
        policy=PolicySettings(host_path_prefixes=("/var/lib/bloomz/",)),
        api=ApiSettings(
            request_timeout_seconds=2.0,
            connect_timeout_seconds=2.0,
            watch_timeout_seconds=30.0,
            retry_base_seconds=0.5,
            retry_max_seconds=2.0,
        ),
    )


def test_operator_reports_api_faults_in_status_and_recovers(server: SandboxAPIServer) -> None:
    client = server.api_client()
    core = kubernetes.client.CoreV1Api(client)
    custom = kubernetes.client.CustomObjectsApi(client)

    def pods() -> list[dict[str, Any]]:
        items = json.loads(core.list_namespaced_pod(NS, _preload_content=False).data)["items"]
        return [p for p in items if not p["metadata"].get("deletionTimestamp")]

    def reconciled() -> dict[str, Any]:
        body = custom.get_namespaced_custom_object(GROUP, VERSION, NS, PLURAL, NAME)
        conditions = (body.get("status") or {}).get("conditions") or []
        return next((c for c in conditions if c["type"] == "Reconciled"), {})

    def delete_pods() -> None:
        for pod in pods():
            core.delete_namespaced_pod(pod["metadata"]["name"], NS, grace_period_seconds=0)

    registry = kopf.OperatorRegistry()
    register_handlers(registry, settings())
    faults = server.faults
    with KopfRunner(["run", "--standalone", "--namespace", NS], registry=registry, timeout=60) as runner:
        # 1. Admission refuses the pod (Pod Security): the condition carries the API server's message.
        refused = faults.fail(403, PSS, methods={"POST"}, path_contains="/pods", user_agent=USER_AGENT)
        custom.create_namespaced_custom_object(GROUP, VERSION, NS, PLURAL, resource())
        cond = wait_for(
            "Reconciled=False Forbidden", lambda: (c := reconciled()).get("reason") == "Forbidden" and c
        )
        assert cond["status"] == "False" and "violates PodSecurity" in cond["message"]
        events = core.list_namespaced_event(NS).items
        assert any(e.reason == "Forbidden" and "violates PodSecurity" in e.message for e in events)
        assert not pods()
        tries = refused.hits
        wait_for("retries with backoff", lambda: refused.hits >= tries + 2)
        faults.remove(refused)  # the namespace's policy is fixed: the retry creates the pod
        wait_for("the pod", pods)
        wait_for("Reconciled=True", lambda: reconciled().get("status") == "True")

        # 2. Listing pods fails with 500s: failed passes are reported (the status patch still goes through).
        broken = faults.fail(500, "etcdserver: leader changed", methods={"GET"}, path_contains="/pods",
                             user_agent=USER_AGENT)  # fmt: skip
        delete_pods()  # a pod event wakes the operator into the failing pass
        cond = wait_for(
            "the 500 in status", lambda: (c := reconciled()).get("reason") == "InternalError" and c
        )
        assert "etcdserver: leader changed" in cond["message"] and cond["status"] == "False"
        faults.remove(broken)
        wait_for("the pod recreated after the 500s", pods)
        wait_for("Reconciled=True again", lambda: reconciled().get("status") == "True")

        # 3. The API server stops answering (requests hang): each pass gives up after its request timeout,
        # holding no lock forever, and says so in the status.
        stalled = faults.stall(methods={"GET"}, path_contains="/pods", user_agent=USER_AGENT)
        delete_pods()
        cond = wait_for(
            "the stall in status", lambda: (c := reconciled()).get("reason") == "APIUnreachable" and c
        )
        assert "timed out" in cond["message"].lower()
        assert stalled.hits >= 2  # retried, not stuck on the first request
        faults.remove(stalled)
        wait_for("the pod recreated after the stall", pods)

        # 4. Everything fails for a while, Kopf's own calls and watches included, then comes back: the
        # watches reconnect and a spec change still rolls the pod.
        outage = faults.fail(500, "apiserver restarting", watches=True)
        wait_for("requests refused during the outage", lambda: outage.hits >= 5)
        faults.remove(outage)
        (before,) = wait_for("one pod", pods)
        custom.patch_namespaced_custom_object(GROUP, VERSION, NS, PLURAL, NAME, {"spec": {"cards": 1}})
        rolled = wait_for(
            "the rolled pod",
            lambda: [p for p in pods() if p["metadata"]["name"] != before["metadata"]["name"]],
            timeout=90,
        )
        assert rolled[0]["spec"]["containers"][0]["resources"]["requests"]["cpu"] == "1"
        wait_for("Reconciled=True at the end", lambda: reconciled().get("status") == "True")

        custom.delete_namespaced_custom_object(GROUP, VERSION, NS, PLURAL, NAME)
        wait_for(
            "the resource gone",
            lambda: not custom.list_namespaced_custom_object(GROUP, VERSION, NS, PLURAL)["items"],
        )
    assert runner.exception is None, runner.output


def ready_status() -> dict[str, Any]:
    running = {"running": {"startedAt": "2026-01-01T00:00:00Z"}}
    return {
        "phase": "Running",
        "podIP": "127.0.0.1",
        "conditions": [{"type": "PodScheduled", "status": "True"}, {"type": "Ready", "status": "True"}],
        "containerStatuses": [
            {"name": "runtime", "ready": True, "started": True, "restartCount": 0, "state": running}
        ],
    }


def test_a_new_default_image_rolls_one_resource_at_a_time(server: SandboxAPIServer) -> None:
    client = server.api_client()
    core = kubernetes.client.CoreV1Api(client)
    custom = kubernetes.client.CustomObjectsApi(client)
    names = ["roll-a", "roll-b", "roll-c"]

    def pods_by_owner() -> dict[str, list[dict[str, Any]]]:
        items = json.loads(core.list_namespaced_pod(NS, _preload_content=False).data)["items"]
        owned: dict[str, list[dict[str, Any]]] = {name: [] for name in names}
        for pod in items:
            owner = pod["metadata"]["labels"].get(f"{GROUP}/name")
            if owner in owned and not pod["metadata"].get("deletionTimestamp"):
                owned[owner].append(pod)
        return owned

    def image(pod: dict[str, Any]) -> str:
        return str(pod["spec"]["containers"][0]["image"])

    def make_ready(pods: list[dict[str, Any]]) -> None:
        for pod in pods:
            if pod.get("status", {}).get("phase") != "Running":
                core.patch_namespaced_pod_status(
                    pod["metadata"]["name"], NS, {"status": ready_status()}, _preload_content=False
                )

    def run(operator_settings: Settings) -> KopfRunner:
        registry = kopf.OperatorRegistry()
        register_handlers(registry, operator_settings)
        return KopfRunner(["run", "--standalone", "--namespace", NS], registry=registry, timeout=60)

    old = settings()
    with run(old) as runner:
        for name in names:
            body = resource()
            body["metadata"]["name"] = name
            custom.create_namespaced_custom_object(GROUP, VERSION, NS, PLURAL, body)
        wait_for("a pod per resource", lambda: all(pods_by_owner().values()) and pods_by_owner())
        make_ready([p for pods in pods_by_owner().values() for p in pods])
        wait_for(
            "every resource Ready",
            lambda: all(
                (custom.get_namespaced_custom_object(GROUP, VERSION, NS, PLURAL, n).get("status") or {}).get(
                    "phase"
                )
                == "Ready"
                for n in names
            ),
        )
    assert runner.exception is None, runner.output

    # The operator comes back with a new default CPU image (a chart upgrade) and a gate of one at a time.
    cpu = replace(old.devices["cpu"], image="ghcr.io/bloomz-operator/runtime-cpu:0.2.0")
    new = replace(old, devices={**old.devices, "cpu": cpu}, rollout=RolloutSettings(max_resources_at_once=1))
    rolled: list[str] = []
    with run(new) as runner:
        while len(rolled) < len(names):
            # Exactly one resource at a time has pods of the new template; the others keep their old pods.
            def one_rolling() -> str | None:
                current = pods_by_owner()
                rolling = [
                    n
                    for n, pods in current.items()
                    if n not in rolled and any(image(p).endswith("0.2.0") for p in pods)
                ]
                return rolling[0] if len(rolling) == 1 else None

            name = wait_for("one resource rolling", one_rolling)
            time.sleep(2.0)  # give the operator the chance to start another one (it must not)
            current = pods_by_owner()
            others = [n for n in names if n not in rolled and n != name]
            assert all(image(p).endswith("0.1.0") for n in others for p in current[n]), current
            assert all(current[n] for n in others)  # still serving: nothing was deleted
            make_ready(current[name])
            wait_for(
                f"{name} rolled", lambda n=name: all(image(p).endswith("0.2.0") for p in pods_by_owner()[n])
            )
            make_ready(pods_by_owner()[name])
            rolled.append(name)
    assert runner.exception is None, runner.output
    assert sorted(rolled) == names
