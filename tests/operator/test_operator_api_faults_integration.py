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

import kopf
import kubernetes
import pytest
import yaml
from bloomz_operator.constants import GROUP, PLURAL, VERSION
from bloomz_operator.handlers import register_handlers
from bloomz_operator.kubeapi import USER_AGENT
from bloomz_operator.sandbox.apiserver import SandboxAPIServer
from bloomz_operator.settings import ApiSettings, BenchmarkSettings, Settings
from kopf.testing import KopfRunner

ROOT = Path(__file__).resolve().parents[2]
CRD = ROOT / "crds" / "bloomzinferences.inference.bloomz.dev.yaml"
NS = "default"
NAME = "faulty"
PSS = 'pods "x" is forbidden: violates PodSecurity "restricted:latest": allowPrivilegeEscalation != false'
T = TypeVar("T")

pytestmark = pytest.mark.slow


def wait_for(what: str, probe: Callable[[], T | None], timeout: float = 60.0) -> T:
    deadline = time.monotonic() + timeout
    last: Any = None
    while time.monotonic() < deadline:
        try:
            last = probe()
        except kubernetes.client.ApiException as error:
            last = error
        else:
            if last:
                return last
        time.sleep(0.2)
    raise AssertionError(f"timed out waiting for {what}; last seen: {last!r}")


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
