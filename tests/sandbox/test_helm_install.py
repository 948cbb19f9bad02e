"""The operator's chart against the API emulator: ``helm`` install, upgrade, uninstall; its RBAC enforced."""

from __future__ import annotations

import json
import os
import subprocess
from collections.abc import Callable
from pathlib import Path

import kubernetes.client as k8s
import pytest
from bloomz_sandbox.apiserver import SandboxAPIServer
from kubernetes.client.exceptions import ApiException

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


def _as_service_account(api: SandboxAPIServer, namespace: str, name: str) -> k8s.ApiClient:
    """A client holding a token the server issued for the service account (TokenRequest API)."""
    admin = k8s.CoreV1Api(api.api_client())
    request = k8s.AuthenticationV1TokenRequest(spec=k8s.V1TokenRequestSpec(audiences=[]))
    token = admin.create_namespaced_service_account_token(name, namespace, request).status.token
    configuration = k8s.Configuration()
    configuration.host = api.url
    configuration.api_key = {"authorization": token}
    configuration.api_key_prefix = {"authorization": "Bearer"}
    return k8s.ApiClient(configuration)


def _status(call: Callable[[], object]) -> int:
    try:
        call()
    except ApiException as error:
        return int(error.status)
    return 200


def test_the_chart_rbac_is_enforced_for_the_operator_service_account(tmp_path: Path) -> None:
    with SandboxAPIServer(crd_paths=[CRD], namespaces=("default", "team-a")) as api:
        kubeconfig = api.write_kubeconfig(tmp_path / "kubeconfig")
        _run(
            HELM, tmp_path, kubeconfig, "install", RELEASE, str(CHART), "-n", NAMESPACE, "--create-namespace",
            "--set", "watchAllNamespaces=true",  # the cluster-wide install: a ClusterRole
        )  # fmt: skip
        client = _as_service_account(api, NAMESPACE, RELEASE)
        core, custom = k8s.CoreV1Api(client), k8s.CustomObjectsApi(client)
        group, version, plural = "inference.bloomz.dev", "v1alpha1", "bloomzinferences"

        assert _status(lambda: core.list_pod_for_all_namespaces()) == 200
        assert _status(lambda: custom.list_cluster_custom_object(group, version, plural)) == 200
        assert _status(lambda: core.list_namespace()) == 200
        # not granted: reading secrets by list, pods by name, deleting namespaces, another group
        assert _status(lambda: core.list_namespaced_secret("default")) == 403
        assert _status(lambda: core.read_namespaced_pod("nope", "default")) == 403
        assert _status(lambda: core.delete_namespace("team-a")) == 403
        assert _status(lambda: k8s.AppsV1Api(client).list_namespaced_deployment(NAMESPACE)) == 403
        try:
            core.list_namespaced_config_map("default")
        except ApiException as error:
            body = json.loads(error.body)
        assert body["kind"] == "Status" and body["reason"] == "Forbidden" and body["code"] == 403
        assert body["message"] == (
            f'configmaps is forbidden: User "system:serviceaccount:{NAMESPACE}:{RELEASE}" cannot list '
            'resource "configmaps" in API group "" in the namespace "default"'
        )
        # a made-up token of the service-account form is not a token
        forged = k8s.Configuration()
        forged.host, forged.api_key = api.url, {"authorization": "Bearer sandbox-sa-forged"}
        assert _status(lambda: k8s.CoreV1Api(k8s.ApiClient(forged)).list_namespace()) == 401
        # the admin kubeconfig stays unrestricted
        assert _status(lambda: k8s.CoreV1Api(api.api_client()).list_namespaced_secret("default")) == 200

        audit = api.audit_log
        user = f"system:serviceaccount:{NAMESPACE}:{RELEASE}"
        mine = [
            (r.verb, r.group, r.resource, r.subresource, r.namespace, r.code) for r in audit if r.user == user
        ]
        assert ("list", "", "pods", "", "", 200) in mine
        assert ("list", "", "secrets", "", "default", 403) in mine
        assert ("delete", "", "namespaces", "", "team-a", 403) in mine
        assert any(r.user == "sandbox-admin" and r.resource == "serviceaccounts" and r.subresource == "token"
                   for r in audit)  # fmt: skip


def test_namespaced_mode_grants_roles_in_the_watched_namespaces_only(tmp_path: Path) -> None:
    with SandboxAPIServer(crd_paths=[CRD], namespaces=("default", "team-a", "team-b")) as api:
        kubeconfig = api.write_kubeconfig(tmp_path / "kubeconfig")
        _run(
            HELM, tmp_path, kubeconfig, "install", RELEASE, str(CHART), "-n", NAMESPACE, "--create-namespace",
            "--set", "watchNamespaces={team-a}",
        )  # fmt: skip
        kinds = {kind for kind, _, _ in _objects(tmp_path, kubeconfig)}
        assert {"Role", "RoleBinding"} <= kinds
        core = k8s.CoreV1Api(_as_service_account(api, NAMESPACE, RELEASE))
        assert _status(lambda: core.list_namespaced_pod("team-a")) == 200
        assert _status(lambda: core.list_namespaced_pod("team-b")) == 403
        assert _status(lambda: core.list_namespaced_pod("default")) == 403
        assert _status(lambda: core.list_pod_for_all_namespaces()) == 403
