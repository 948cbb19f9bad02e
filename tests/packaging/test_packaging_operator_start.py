"""The chart's Deployment, run for real: the operator image's entry point with the Deployment's args and env
and the rendered settings file starts the real operator against the Kubernetes API emulator; its liveness
endpoint answers where the probe looks, and the runtime pods it creates use the chart's settings."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import urllib.error
import urllib.request
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import kubernetes
import pytest
from bloomz_operator.constants import GROUP, PLURAL, VERSION
from bloomz_sandbox.apiserver import SandboxAPIServer
from conftest import CHART, REPO, documents, helm_template, single
from dockerfiles import parse
from helpers import free_port, wait_for

CPU_IMAGE = "registry.example.com/ml/runtime-cpu:chart-test"
START_TIMEOUT_S = 120.0


class Operator:
    def __init__(self, process: subprocess.Popen[bytes], liveness_url: str, log: Path) -> None:
        self.process, self.liveness_url, self.log = process, liveness_url, log
        self.metrics_url = ""

    def healthz(self) -> int | None:
        try:
            with urllib.request.urlopen(self.liveness_url, timeout=5) as response:
                return int(response.status)
        except (urllib.error.URLError, OSError):
            return None


@pytest.fixture(scope="module")
def api(tmp_path_factory: pytest.TempPathFactory) -> Iterator[SandboxAPIServer]:
    crds = sorted((CHART / "crds").glob("*.yaml"))
    with SandboxAPIServer(crd_paths=crds, namespaces=("default",)) as server:
        yield server


@pytest.fixture(scope="module")
def operator(api: SandboxAPIServer, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Operator]:
    root = tmp_path_factory.mktemp("operator-pod")
    port, metrics_port = free_port(), free_port()
    objects = documents(
        helm_template(
            "--set",
            f"config.livenessPort={port}",
            "--set",
            f"config.devices.cpu.image={CPU_IMAGE}",
            "--set",
            "watchNamespaces={default}",  # the chart's default is its own namespace only
            "--set",
            f"metrics.port={metrics_port}",
            "--set",
            "extraArgs={--log-format,json}",
        ).stdout
    )  # fmt: skip
    deployment, configmap = single(objects, "Deployment"), single(objects, "ConfigMap")
    pod = deployment["spec"]["template"]["spec"]
    (container,) = pod["containers"]
    # Mount the ConfigMap as the kubelet would, under a stand-in root directory.
    volumes = {v["name"]: v for v in pod["volumes"]}
    mounted: list[str] = []
    for mount in container["volumeMounts"]:
        source = volumes[mount["name"]]
        if "configMap" in source:
            assert source["configMap"]["name"] == configmap["metadata"]["name"]
            folder = root / mount["mountPath"].lstrip("/")
            folder.mkdir(parents=True)
            for key, text in configmap["data"].items():
                (folder / key).write_text(text)
            mounted.append(mount["mountPath"])
    # Environment values that point into a mounted ConfigMap point into the stand-in root instead.
    env: dict[str, str] = {}
    for item in container["env"]:
        if "value" in item:
            value = item["value"]
            inside = any(value.startswith(path.rstrip("/") + "/") for path in mounted)
            env[item["name"]] = str(root / value.lstrip("/")) if inside else value
    env["POD_NAMESPACE"] = "bloomz-system"
    # The image's entry point with the Deployment's args; python3 -> this interpreter (the image stand-in).
    command = parse(REPO / "docker" / "operator.Dockerfile").entrypoint() + list(container.get("args", []))
    assert command[0] == "python3"
    command[0] = sys.executable
    kubeconfig = api.write_kubeconfig(root / "kubeconfig")
    log = root / "operator.log"
    probe = container["livenessProbe"]["httpGet"]
    probe_port = {p["name"]: p["containerPort"] for p in container["ports"]}[probe["port"]]
    with open(log, "wb") as out:
        process = subprocess.Popen(
            command,
            env={**os.environ, **env, "KUBECONFIG": str(kubeconfig)},
            stdout=out,
            stderr=subprocess.STDOUT,
            cwd=root,
        )
    handle = Operator(process, f"http://127.0.0.1:{probe_port}{probe['path']}", log)
    handle.metrics_url = f"http://127.0.0.1:{metrics_port}/metrics"
    try:
        yield handle
    finally:
        process.terminate()
        try:
            process.wait(timeout=30)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait(timeout=10)


def test_liveness_endpoint_answers_where_the_chart_probes(operator: Operator) -> None:
    def alive() -> bool:
        assert operator.process.poll() is None, f"operator exited:\n{operator.log.read_text()[-3000:]}"
        return operator.healthz() == 200

    wait_for("the operator's liveness endpoint", alive, START_TIMEOUT_S)


def test_operator_creates_runtime_pods_with_the_charts_settings(
    api: SandboxAPIServer, operator: Operator
) -> None:
    client = api.api_client()
    custom, core = kubernetes.client.CustomObjectsApi(client), kubernetes.client.CoreV1Api(client)
    body = {
        "apiVersion": f"{GROUP}/{VERSION}",
        "kind": "BloomzInference",
        "metadata": {"name": "chart-check", "namespace": "default"},
        "spec": {"model": "/models/bloomz-tiny", "device": "cpu", "cards": 1, "dtype": "float32"},
    }
    custom.create_namespaced_custom_object(GROUP, VERSION, "default", PLURAL, body)

    def runtime_pods() -> list[Any]:
        assert operator.process.poll() is None, f"operator exited:\n{operator.log.read_text()[-3000:]}"
        pods = core.list_namespaced_pod("default").items
        return [
            p for p in pods if p.metadata and (p.metadata.labels or {}).get(f"{GROUP}/name") == "chart-check"
        ]

    (pod,) = wait_for("the operator to create the runtime pod", runtime_pods, START_TIMEOUT_S)
    (container,) = pod.spec.containers
    assert container.image == CPU_IMAGE
    assert container.command == parse(REPO / "docker" / "runtime-cpu.Dockerfile").entrypoint()


def test_the_operators_metrics_and_json_logs_with_the_charts_settings(operator: Operator) -> None:
    """After the resource above: its series on the port the chart gives the operator, and JSON log lines."""

    def reconciled() -> float:
        assert operator.process.poll() is None, f"operator exited:\n{operator.log.read_text()[-3000:]}"
        try:
            body = urllib.request.urlopen(operator.metrics_url, timeout=5).read().decode()
        except (urllib.error.URLError, OSError):
            return 0.0
        series = 'bloomz_operator_reconciles_total{name="chart-check",namespace="default"} '
        return next((float(line.split()[-1]) for line in body.splitlines() if line.startswith(series)), 0.0)

    assert wait_for("a reconciliation counted on the operator's metrics port", reconciled) >= 1
    lines = [line for line in operator.log.read_text().splitlines() if line.strip()]
    parsed = [json.loads(line) for line in lines if line.startswith("{")]
    assert parsed and all("message" in entry for entry in parsed)
    assert len(parsed) == len(lines), [line for line in lines if not line.startswith("{")][:3]
