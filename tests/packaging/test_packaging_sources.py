"""The chart carries the operator's own truths: its RBAC rules, the CRD from crds/, its settings contract."""

from __future__ import annotations

import importlib.util
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
import yaml
from bloomz_operator.rbac import CLUSTER_RULES, NAMESPACED_RULES
from bloomz_operator.settings import DEFAULT_IMAGES, Settings, load_settings
from conftest import CHART, NAMESPACED_VALUES, RELEASE_NAMESPACE, REPO, Render, only, single

NAMESPACED = ("--values", str(NAMESPACED_VALUES))


def test_chart_crds_are_exact_copies_of_crds_folder() -> None:
    source = {path.name: path.read_bytes() for path in (REPO / "crds").glob("*.yaml")}
    copies = {path.name: path.read_bytes() for path in (CHART / "crds").glob("*.yaml")}
    assert source, "no CRD in crds/"
    assert copies.keys() == source.keys(), "run scripts/sync-chart.sh (make chart-sync)"
    for name in source:
        assert copies[name] == source[name], f"charts/.../crds/{name} differs from crds/: run make chart-sync"


def test_chart_readme_is_generated_from_the_documented_values() -> None:
    result = subprocess.run(
        [sys.executable, str(REPO / "scripts" / "chart_readme.py"), "--check"], capture_output=True, text=True
    )
    assert result.returncode == 0, result.stderr
    # Every value a user can set has a row; a value without its `# --` comment has none.
    readme = (CHART / "README.md").read_text()
    keys = ("image.repository", "watchNamespaces", "config.imagePullSecrets", "config.devices.hpu.memory")
    for key in keys:
        assert f"| `{key}` |" in readme


def test_chart_readme_rows_follow_the_values_file() -> None:
    spec = importlib.util.spec_from_file_location("chart_readme", REPO / "scripts" / "chart_readme.py")
    assert spec and spec.loader
    chart_readme = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(chart_readme)
    values = """# -- top
a: 1
b:
  # -- nested, on
  # two lines
  c: [x]
  d: {}
# plain comment, no row
e: true
"""
    assert chart_readme.documented_keys(values) == [("a", "top"), ("b.c", "nested, on two lines")]
    text = chart_readme.render(values, {"name": "n", "version": "1", "appVersion": "1"})
    assert '| `b.c` | list | `["x"]` | nested, on two lines |' in text and "`e`" not in text


def test_chart_rbac_file_is_generated_from_the_operator_rules() -> None:
    generated = yaml.safe_load((CHART / "files" / "rbac.yaml").read_text())
    assert generated == {"clusterRules": CLUSTER_RULES, "namespacedRules": NAMESPACED_RULES}, (
        "charts/bloomz-operator/files/rbac.yaml is stale: run make chart-sync"
    )


def _binding_subject(binding: dict[str, Any], role: dict[str, Any], service_account: str) -> None:
    assert binding["roleRef"] == {
        "apiGroup": "rbac.authorization.k8s.io",
        "kind": role["kind"],
        "name": role["metadata"]["name"],
    }
    assert binding["subjects"] == [
        {"kind": "ServiceAccount", "name": service_account, "namespace": RELEASE_NAMESPACE}
    ]


def test_cluster_wide_install_grants_exactly_the_operator_rules(render: Render) -> None:
    objects = render("--set", "watchAllNamespaces=true")
    service_account = single(objects, "ServiceAccount")["metadata"]["name"]
    role = single(objects, "ClusterRole")
    assert role["rules"] == CLUSTER_RULES + NAMESPACED_RULES
    assert not only(objects, "Role") and not only(objects, "RoleBinding")
    _binding_subject(single(objects, "ClusterRoleBinding"), role, service_account)
    deployment = single(objects, "Deployment")
    assert deployment["spec"]["template"]["spec"]["serviceAccountName"] == service_account


def test_namespaced_install_grants_namespaced_rules_per_watched_namespace(render: Render) -> None:
    objects = render(*NAMESPACED)
    service_account = single(objects, "ServiceAccount")["metadata"]["name"]
    cluster_role = single(objects, "ClusterRole")
    assert cluster_role["rules"] == CLUSTER_RULES
    _binding_subject(single(objects, "ClusterRoleBinding"), cluster_role, service_account)
    for namespace in ("team-a", "team-b"):
        (role,) = only(objects, "Role", namespace)
        (binding,) = only(objects, "RoleBinding", namespace)
        assert role["rules"] == NAMESPACED_RULES
        _binding_subject(binding, role, service_account)
    assert len(only(objects, "Role")) == 2


def test_rbac_can_be_left_to_the_platform_team(render: Render) -> None:
    for extra in ((), NAMESPACED):
        objects = render(*extra, "--set", "rbac.create=false", "--set", "serviceAccount.name=platform-sa")
        kinds = {o["kind"] for o in objects}
        assert not kinds & {"ClusterRole", "ClusterRoleBinding", "Role", "RoleBinding"}
        deployment = single(objects, "Deployment")
        assert deployment["spec"]["template"]["spec"]["serviceAccountName"] == "platform-sa"


def _settings_file(objects: list[dict[str, Any]], tmp_path: Path) -> Path:
    configmap = single(objects, "ConfigMap")
    path = tmp_path / "settings.yaml"
    path.write_text(configmap["data"]["settings.yaml"])
    return path


def test_default_settings_file_loads_and_keeps_operator_defaults(render: Render, tmp_path: Path) -> None:
    settings = load_settings(str(_settings_file(render(), tmp_path)))
    assert settings.namespaces == ("bloomz-system",)  # the release namespace unless told otherwise
    assert settings.log_level == "INFO"
    assert settings.liveness_port == 8080
    assert settings.benchmark.enabled is True
    assert settings.benchmark.timeout_seconds == 900
    assert settings.image_pull_secrets == ()
    hpu = settings.device("hpu")
    assert hpu.resource_name == "habana.ai/gaudi"
    assert (hpu.memory, hpu.hugepages_2mi, hpu.host_ipc) == (None, None, True)
    assert (hpu.memory_per_card, hpu.hugepages_2mi_per_card) == ("52352Mi", "11874Mi")
    assert settings.device("cuda").resource_name == "nvidia.com/gpu"
    # Empty image values leave the operator's built-in runtime images in force.
    assert {name: settings.device(name).image for name in DEFAULT_IMAGES} == DEFAULT_IMAGES
    # The chart's rooflines and Hub are the operator's own defaults, not a second opinion.
    bandwidth = {name: settings.device(name).memory_bandwidth for name in DEFAULT_IMAGES}
    assert bandwidth == {name: Settings().device(name).memory_bandwidth for name in DEFAULT_IMAGES}
    assert settings.hub_endpoint is None


def test_namespaced_settings_file_carries_the_values(render: Render, tmp_path: Path) -> None:
    settings = load_settings(str(_settings_file(render(*NAMESPACED), tmp_path)))
    assert settings.namespaces == ("team-a", "team-b")
    assert settings.log_level == "DEBUG"
    assert settings.liveness_port == 8081
    assert settings.image_pull_policy == "Always"
    assert settings.image_pull_secrets == ("runtime-registry",)
    assert settings.benchmark.timeout_seconds == 1200
    hpu = settings.device("hpu")
    assert hpu.image == "registry.example.com/ml/runtime-gaudi:0.1.0-synapse1.24.0"
    assert dict(hpu.node_selector) == {"habana.ai/device.type": "gaudi2"}
    assert [dict(t) for t in hpu.tolerations] == [
        {"key": "habana.ai/gaudi", "operator": "Exists", "effect": "NoSchedule"}
    ]
    assert hpu.pod_memory(1) == "400Gi"  # fixed per pod: wins over the per-card default
    assert hpu.pod_hugepages_2mi(8) is None  # "" per card and per pod in the values: none requested
    assert dict(hpu.env) == {"LOG_LEVEL_ALL": "4"}
    assert settings.device("cpu").image == "registry.example.com/ml/runtime-cpu:0.1.0"
    assert settings.device("cpu").memory_bandwidth == 2.5e10
    assert settings.device("cuda").image == DEFAULT_IMAGES["cuda"]
    assert settings.hub_endpoint == "http://hf-mirror.team-a.svc:8080"


@pytest.mark.parametrize("variant", [(), NAMESPACED])
def test_operator_liveness_port_matches_its_settings(
    render: Render, tmp_path: Path, variant: tuple[str, ...]
) -> None:
    objects = render(*variant)
    settings = load_settings(str(_settings_file(objects, tmp_path)))
    (container,) = single(objects, "Deployment")["spec"]["template"]["spec"]["containers"]
    assert {p["name"]: p["containerPort"] for p in container["ports"]}["liveness"] == settings.liveness_port
