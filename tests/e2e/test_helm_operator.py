"""The operator from its Helm chart in the sandbox: a pod from the chart's Deployment, running as a local
process with its service account's token (in-cluster config over HTTPS), its RBAC enforced."""

from __future__ import annotations

import json
import os
import subprocess
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import kubernetes.client as k8s
import pytest
import yaml
from bloomz_sandbox.apiserver import SandboxAPIServer
from bloomz_sandbox.controllers.deployments import DeploymentController
from bloomz_sandbox.node.podrunner import PodRunner, RunnerConfig
from helpers import LIFECYCLE_UNREACHED_RULES

REPO = Path(__file__).resolve().parents[2]
HELM = REPO / ".tools" / "bin" / "helm"
CHART = REPO / "charts" / "bloomz-operator"
CRD = REPO / "crds" / "bloomzinferences.inference.bloomz.dev.yaml"
RELEASE, NAMESPACE = "bloomz-operator", "bloomz-system"
USER = f"system:serviceaccount:{NAMESPACE}:{RELEASE}"

pytestmark = pytest.mark.skipif(not HELM.exists(), reason="needs .tools/bin/helm")


class Cluster:
    def __init__(self, api: SandboxAPIServer, runner: PodRunner, tmp_path: Path) -> None:
        self.api, self.runner, self.tmp_path = api, runner, tmp_path
        self.kubeconfig = api.write_kubeconfig(tmp_path / "kubeconfig")
        self.core: Any = k8s.CoreV1Api(api.api_client())

    def helm(self, *args: str) -> str:
        env = {
            **os.environ,
            "KUBECONFIG": str(self.kubeconfig),
            "HELM_CACHE_HOME": str(self.tmp_path / "helm-cache"),
            "HELM_CONFIG_HOME": str(self.tmp_path / "helm-config"),
            "HELM_DATA_HOME": str(self.tmp_path / "helm-data"),
        }
        done = subprocess.run(
            [str(HELM), *args], env=env, capture_output=True, text=True, timeout=120, check=False
        )
        assert done.returncode == 0, f"helm {' '.join(args)}: {done.stderr}"
        return done.stdout

    def operator_pods(self) -> list[dict[str, Any]]:
        listed = self.core.list_namespaced_pod(NAMESPACE, _preload_content=False)
        return list(json.loads(listed.data)["items"])

    def wait(self, what: str, condition: Callable[[], Any], timeout: float = 120.0) -> Any:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            value = condition()
            if value:
                return value
            time.sleep(0.3)
        logs = "\n".join(p.read_text()[-3000:] for p in (self.tmp_path / "logs").rglob("*.log"))
        raise AssertionError(f"timed out waiting for {what}; pods: {self.operator_pods()}\n{logs}")

    def ready_operator_pod(self, not_named: str = "") -> str:
        def ready() -> str:
            for pod in self.operator_pods():
                conditions = (pod.get("status") or {}).get("conditions") or []
                is_ready = any(c["type"] == "Ready" and c["status"] == "True" for c in conditions)
                if (
                    is_ready
                    and pod["metadata"]["name"] != not_named
                    and not pod["metadata"].get("deletionTimestamp")
                ):
                    return str(pod["metadata"]["name"])
            return ""

        return str(self.wait("a Ready operator pod", ready))

    def operator_records(self) -> list[Any]:
        return [r for r in self.api.audit_log if r.user == USER]


@pytest.fixture
def cluster(tmp_path: Path) -> Iterator[Cluster]:
    with SandboxAPIServer(crd_paths=[CRD], tls_dir=tmp_path / "tls", namespaces=("default", "team-a")) as api:
        assert api.tls_port and api.ca_path
        config = RunnerConfig(
            node_root=tmp_path / "node",
            log_dir=tmp_path / "logs",
            api_tls_port=api.tls_port,
            api_ca_path=api.ca_path,
            max_grace_seconds=10.0,
        )
        runner = PodRunner(api.api_client(), config).start()
        controller = DeploymentController(api.api_client()).start()
        try:
            yield Cluster(api, runner, tmp_path)
        finally:
            controller.stop()
            runner.stop()
        assert runner.running_process_ids() == []


def test_the_operator_runs_from_its_chart_with_its_own_rbac(cluster: Cluster) -> None:
    cluster.helm("install", RELEASE, str(CHART), "-n", NAMESPACE, "--create-namespace")
    first = cluster.ready_operator_pod()
    # The operator logged in with its token over HTTPS and watches its resources cluster-wide.
    cluster.wait(
        "the operator's watch on bloomzinferences",
        lambda: any(
            r.verb == "watch" and r.resource == "bloomzinferences" for r in cluster.operator_records()
        ),
    )
    refused = [r for r in cluster.operator_records() if r.code in (401, 403)]
    assert not refused, refused

    # helm upgrade with a changed value rolls the pod (Recreate: the old one goes first)
    cluster.helm("upgrade", RELEASE, str(CHART), "-n", NAMESPACE, "--set-string", "podAnnotations.rollout=2")
    second = cluster.ready_operator_pod(not_named=first)
    cluster.wait(
        "the old pod gone", lambda: first not in {p["metadata"]["name"] for p in cluster.operator_pods()}
    )
    assert second != first

    # Kopf's discovery, CRD and namespace-wide watches and the operator's pod watch, all allowed.
    used = {(r.verb, r.group, r.resource) for r in cluster.operator_records() if r.resource}
    assert {
        ("list", "apiextensions.k8s.io", "customresourcedefinitions"),
        ("watch", "inference.bloomz.dev", "bloomzinferences"),
        ("watch", "", "pods"),
    } <= used
    cluster.helm("uninstall", RELEASE, "-n", NAMESPACE)
    cluster.wait("no operator pod", lambda: not cluster.operator_pods())
    cluster.wait("no operator process", lambda: not cluster.runner.running_process_ids())
    refused = [r for r in cluster.operator_records() if r.code in (401, 403)]
    assert not refused, refused


def test_namespaced_mode_runs_with_roles_in_the_watched_namespace_only(cluster: Cluster) -> None:
    watch = ("--set", "watchNamespaces={team-a}")
    cluster.helm("install", RELEASE, str(CHART), "-n", NAMESPACE, "--create-namespace", *watch)
    cluster.ready_operator_pod()
    cluster.wait(
        "the operator's watch on bloomzinferences in team-a",
        lambda: any(
            r.verb == "watch" and r.resource == "bloomzinferences" and r.namespace == "team-a"
            for r in cluster.operator_records()
        ),
    )
    records = cluster.operator_records()
    assert not [r for r in records if r.code in (401, 403)]
    # namespaced resources only in team-a; cluster-wide only the CRD and namespace rules of the ClusterRole
    namespaced = {r.namespace for r in records if r.resource in ("pods", "bloomzinferences", "events")}
    assert namespaced == {"team-a"}
    # Kopf lists and watches namespaces only in this mode (cluster-wide it does not need them)
    assert {("list", "namespaces"), ("watch", "namespaces")} <= {(r.verb, r.resource) for r in records}
    cluster.helm("uninstall", RELEASE, "-n", NAMESPACE)
    cluster.wait("no operator pod", lambda: not cluster.operator_pods())


def test_least_privilege_over_a_lifecycle(tmp_path: Path) -> None:
    """The sandbox stack (helm-installed operator): create, scale, a pod failure, a spec change, deletion
    of a Gaudi resource (its pods are bound but never started, so this needs no runtime); then every call
    of the operator was allowed and every rule the chart grants was used (or is a lifecycle-unreached one)."""
    from bloomz_operator.constants import GROUP, PLURAL, VERSION
    from bloomz_operator.rbac import CLUSTER_RULES, NAMESPACED_RULES
    from bloomz_sandbox.stack import Sandbox, SandboxOptions

    example = yaml.safe_load((REPO / "examples" / "bloomz.yaml").read_text())
    name = example["metadata"]["name"]
    sandbox = Sandbox(SandboxOptions(workdir=tmp_path / "sandbox", gaudi_cards=16))
    sandbox.start()
    try:
        custom: Any = k8s.CustomObjectsApi(sandbox.api_client)

        def pods() -> dict[str, str]:
            """uid -> name of the resource's live pods (names are stable: -0, -1; uids are not)."""
            return {p["metadata"]["uid"]: p["metadata"]["name"] for p in sandbox.list_pods(instance=name)
                    if not p["metadata"].get("deletionTimestamp")}  # fmt: skip

        def patch(spec: dict[str, Any]) -> None:
            custom.patch_namespaced_custom_object(GROUP, VERSION, "default", PLURAL, name, {"spec": spec})

        sandbox.kubectl("apply", "--validate=false", "-f", str(REPO / "examples" / "bloomz.yaml"))
        first = sandbox.wait_for("the first pod", pods, timeout=120)
        patch({"replicas": 2})  # scale
        sandbox.wait_for("two pods", lambda: len(pods()) == 2, timeout=120)
        (uid, pod_name), *_ = first.items()
        sandbox.kubectl("delete", "pod", pod_name, "--wait=false")  # a pod failure: the operator recreates it
        sandbox.wait_for("the pod recreated", lambda: len(pods()) == 2 and uid not in pods(), timeout=120)
        before = set(pods())
        patch({"cards": 4})  # a spec change: new pods from a new template
        sandbox.wait_for(
            "new pods for the new spec", lambda: pods() and not set(pods()) & before, timeout=120
        )
        sandbox.kubectl("delete", "-f", str(REPO / "examples" / "bloomz.yaml"), "--wait=false")
        sandbox.wait_for(
            "everything deleted", lambda: not pods() and not sandbox.get_resource(name), timeout=120
        )
        records = [r for r in sandbox.apiserver.audit_log if r.user == USER]
    finally:
        sandbox.stop()

    refused = sorted(
        {(r.verb, r.group, r.resource, r.subresource, r.namespace) for r in records if r.code in (401, 403)}
    )
    assert not refused, f"refused: {refused}"
    used = {
        (r.group, f"{r.resource}/{r.subresource}" if r.subresource else r.resource, r.verb)
        for r in records
        if r.resource and r.code < 500
    }
    granted = {
        (group, resource, verb)
        for rule in NAMESPACED_RULES + CLUSTER_RULES
        for group in rule["apiGroups"]
        for resource in rule["resources"]
        for verb in rule["verbs"]
    }
    assert set(LIFECYCLE_UNREACHED_RULES) <= granted
    assert not sorted(granted - used - set(LIFECYCLE_UNREACHED_RULES)), "granted but never used"
