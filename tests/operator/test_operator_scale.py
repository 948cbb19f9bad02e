"""`kubectl scale` on a BloomzInference with the real operator (Kopf in a thread) and the sandbox API
emulator (no kubelets, no runtime): replicas follow the scale subresource, status.selector selects the
pods, 0 stops everything, and the measured latency survives scaling but not a template change."""

from __future__ import annotations

import json
import subprocess
from collections.abc import Callable, Iterator
from dataclasses import replace
from pathlib import Path
from typing import Any

import kopf
import kubernetes
import pytest
import yaml
from bloomz_operator.constants import GROUP, PLURAL, VERSION
from bloomz_operator.handlers import register_handlers
from bloomz_operator.policy import PolicySettings
from bloomz_operator.settings import BenchmarkSettings, Settings
from bloomz_sandbox.apiserver import SandboxAPIServer
from helpers import wait_for as poll_until
from kopf.testing import KopfRunner

ROOT = Path(__file__).resolve().parents[2]
CRD = ROOT / "crds" / "bloomzinferences.inference.bloomz.dev.yaml"
KUBECTL = ROOT / ".tools" / "bin" / "kubectl"
NS, NAME = "default", "scaled"


def wait_for(what: str, probe: Callable[[], Any]) -> Any:
    return poll_until(what, probe, timeout=90.0)


class Cluster:
    def __init__(self, server: SandboxAPIServer, kubeconfig: Path) -> None:
        client = server.api_client()
        self.kubeconfig = kubeconfig
        self.core = kubernetes.client.CoreV1Api(client)
        self.custom = kubernetes.client.CustomObjectsApi(client)

    def kubectl(self, *args: str) -> str:
        result = subprocess.run(
            [str(KUBECTL), "--kubeconfig", str(self.kubeconfig), *args],
            capture_output=True,
            text=True,
            timeout=60,
            check=False,
        )
        assert result.returncode == 0, f"kubectl {' '.join(args)}: {result.stderr}"
        return result.stdout

    def resource(self) -> dict[str, Any]:
        return dict(self.custom.get_namespaced_custom_object(GROUP, VERSION, NS, PLURAL, NAME))

    def pods(self, selector: str = f"{GROUP}/name={NAME}") -> list[str]:
        raw = self.core.list_namespaced_pod(NS, label_selector=selector, _preload_content=False)
        return sorted(p["metadata"]["name"] for p in json.loads(raw.data)["items"])


@pytest.fixture
def cluster(tmp_path: Path) -> Iterator[Cluster]:
    with SandboxAPIServer(crd_paths=[CRD]) as server, pytest.MonkeyPatch.context() as mp:
        kubeconfig = server.write_kubeconfig(tmp_path / "config")
        mp.setenv("KUBECONFIG", str(kubeconfig))
        registry = kopf.OperatorRegistry()
        # The example mounts its model from the node (hostPath), which the policy refuses unless allowed.
        policy = PolicySettings(host_path_prefixes=("/var/lib/bloomz/",))
        settings = replace(Settings(), benchmark=BenchmarkSettings(enabled=False), policy=policy)
        register_handlers(registry, settings)
        with KopfRunner(["run", "--standalone", "--namespace", NS], registry=registry, timeout=60) as runner:
            yield Cluster(server, kubeconfig)
        assert runner.exception is None, runner.output


def test_kubectl_scale_1_2_0_1_keeps_the_latency_until_the_template_changes(cluster: Cluster) -> None:
    body = yaml.safe_load((ROOT / "examples" / "bloomz-cpu.yaml").read_text())
    body["metadata"]["namespace"] = NS
    body["metadata"]["name"] = NAME
    cluster.custom.create_namespaced_custom_object(GROUP, VERSION, NS, PLURAL, body)
    status = wait_for(
        "the first pass",
        lambda: cluster.resource().get("status", {}).get("selector") and cluster.resource()["status"],
    )
    assert status["selector"] == f"app.kubernetes.io/name=bloomz-runtime,{GROUP}/name={NAME}"
    # As the latency timer would have written it, for the pods of the current template.
    latency = {
        "seconds": 0.5,
        "perTokenMs": 30.0,
        "bandwidthEfficiency": 0.42,
        "measuredAt": "2026-01-01T00:00:00Z",
    }
    latency["templateHash"] = status["templateHash"]
    cluster.custom.patch_namespaced_custom_object_status(
        GROUP, VERSION, NS, PLURAL, NAME, {"status": {"latency": latency}}
    )

    for replicas in (2, 0, 1):
        assert "scaled" in cluster.kubectl("scale", f"bloomz/{NAME}", f"--replicas={replicas}")

        def settled(replicas: int = replicas) -> dict[str, Any] | None:
            now = cluster.resource()
            done = len(cluster.pods()) == replicas and now["status"].get("replicas") == replicas
            return (
                now
                if done and now["status"].get("observedGeneration") == now["metadata"]["generation"]
                else None
            )

        now = wait_for(f"{replicas} replica(s)", settled)
        assert cluster.pods(now["status"]["selector"]) == cluster.pods()
        scale = json.loads(
            cluster.kubectl("get", "--raw", f"/apis/{GROUP}/{VERSION}/namespaces/{NS}/{PLURAL}/{NAME}/scale")
        )
        assert scale["spec"]["replicas"] == scale["status"]["replicas"] == replicas
        assert scale["status"]["selector"] == now["status"]["selector"]
        assert now["status"]["latency"] == latency  # not blanked, not re-measured
        if replicas == 0:
            assert now["status"]["phase"] == "Stopped"

    # kubectl get -o wide: the efficiency column.
    header, row = cluster.kubectl("get", "bloomz", NAME, "-o", "wide").splitlines()
    column = header.index("BW-EFF")  # kubectl aligns the cells under their header (empty ones too)
    assert row[column:].split()[0] == "0.42"

    # A template change: the latency described other pods.
    patch = {"spec": {"generation": {"maxNewTokens": 32}}}
    cluster.custom.patch_namespaced_custom_object(GROUP, VERSION, NS, PLURAL, NAME, patch)
    wait_for("the latency dropped", lambda: not cluster.resource()["status"].get("latency"))
