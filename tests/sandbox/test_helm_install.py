"""The operator's chart installs, upgrades and uninstalls with the real ``helm`` against the API emulator."""

from __future__ import annotations

import json
import os
import subprocess
from pathlib import Path

import pytest
from bloomz_sandbox.apiserver import SandboxAPIServer

REPO = Path(__file__).resolve().parents[2]
HELM = REPO / ".tools" / "bin" / "helm"
KUBECTL = REPO / ".tools" / "bin" / "kubectl"
CHART = REPO / "charts" / "bloomz-operator"
CRD = REPO / "crds" / "bloomzinferences.inference.bloomz.dev.yaml"
RELEASE, NAMESPACE = "bloomz-operator", "bloomz-system"

pytestmark = pytest.mark.skipif(not HELM.exists() or not KUBECTL.exists(), reason="needs .tools/bin/helm")


def _run(tool: Path, tmp_path: Path, kubeconfig: Path, *args: str) -> str:
    env = {
        **os.environ,
        "KUBECONFIG": str(kubeconfig),
        "HELM_CACHE_HOME": str(tmp_path / "helm-cache"),
        "HELM_CONFIG_HOME": str(tmp_path / "helm-config"),
        "HELM_DATA_HOME": str(tmp_path / "helm-data"),
    }
    result = subprocess.run(
        [str(tool), *args], env=env, capture_output=True, text=True, timeout=120, check=False
    )
    assert result.returncode == 0, f"{tool.name} {' '.join(args)} failed: {result.stderr}"
    return result.stdout


def _objects(tmp_path: Path, kubeconfig: Path) -> set[tuple[str, str, str]]:
    """(kind, namespace, name) of everything a chart could create, all namespaces."""
    kinds = (
        "deployments,serviceaccounts,configmaps,secrets,roles,rolebindings,clusterroles,clusterrolebindings"
    )
    listed = json.loads(_run(KUBECTL, tmp_path, kubeconfig, "get", kinds, "-A", "-o", "json"))
    return {
        (item["kind"], item["metadata"].get("namespace", ""), item["metadata"]["name"])
        for item in listed["items"]
    }


def test_helm_install_upgrade_uninstall(tmp_path: Path) -> None:
    with SandboxAPIServer(crd_paths=[CRD]) as api:
        kubeconfig = api.write_kubeconfig(tmp_path / "kubeconfig")
        before = _objects(tmp_path, kubeconfig)
        _run(
            HELM, tmp_path, kubeconfig, "install", RELEASE, str(CHART), "-n", NAMESPACE, "--create-namespace"
        )
        installed = _objects(tmp_path, kubeconfig) - before
        kinds = {kind for kind, _, _ in installed}
        assert {"Deployment", "ServiceAccount", "ConfigMap", "ClusterRole", "ClusterRoleBinding"} <= kinds
        assert ("Secret", NAMESPACE, f"sh.helm.release.v1.{RELEASE}.v1") in installed  # helm's release record

        _run(
            HELM, tmp_path, kubeconfig, "upgrade", RELEASE, str(CHART), "-n", NAMESPACE,
            "--set-string", "podAnnotations.rollout=second",
        )  # fmt: skip
        deployment = json.loads(
            _run(KUBECTL, tmp_path, kubeconfig, "get", "deploy", RELEASE, "-n", NAMESPACE, "-o", "json")
        )
        assert deployment["spec"]["template"]["metadata"]["annotations"]["rollout"] == "second"
        assert deployment["metadata"]["generation"] == 2
        status = json.loads(
            _run(HELM, tmp_path, kubeconfig, "status", RELEASE, "-n", NAMESPACE, "-o", "json")
        )
        assert status["version"] == 2 and status["info"]["status"] == "deployed"

        _run(HELM, tmp_path, kubeconfig, "uninstall", RELEASE, "-n", NAMESPACE)
        assert _objects(tmp_path, kubeconfig) == before
        # The CRD came from the chart's crds/ folder: helm leaves it, as on a real cluster.
        crds = _run(KUBECTL, tmp_path, kubeconfig, "get", "crd", "-o", "name")
        assert "bloomzinferences.inference.bloomz.dev" in crds
