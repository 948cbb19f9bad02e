"""The Helm chart: lint, render, validate against Kubernetes' schemas, and refuse mistyped values."""

from __future__ import annotations

import json
import subprocess
from pathlib import Path
from typing import Any

import kubernetes_validate
import pytest
import yaml
from conftest import (
    CHART,
    NAMESPACED_VALUES,
    RELEASE_NAMESPACE,
    Render,
    documents,
    find_tool,
    helm_template,
    pyproject,
    run,
    single,
)

# Kubernetes versions kubernetes-validate bundles: the chart's minimum (kubeVersion) and a recent one.
KUBERNETES_VERSIONS = ("1.27.0", "1.33.0")
VARIANTS = {"default": (), "namespaced": ("--values", str(NAMESPACED_VALUES))}


@pytest.mark.parametrize("variant", sorted(VARIANTS))
def test_helm_lint_passes(variant: str) -> None:
    run([find_tool("helm"), "lint", "--strict", str(CHART), *VARIANTS[variant]])


@pytest.mark.parametrize("kubernetes_version", KUBERNETES_VERSIONS)
@pytest.mark.parametrize("variant", sorted(VARIANTS))
def test_rendered_manifests_pass_strict_kubernetes_validation(
    render: Render, variant: str, kubernetes_version: str
) -> None:
    objects = render(*VARIANTS[variant], "--kube-version", kubernetes_version)
    assert {o["kind"] for o in objects} >= {"ServiceAccount", "ConfigMap", "ClusterRole", "Deployment"}
    for obj in objects:
        # Raises ValidationError on a wrong type or, with strict, an unknown field.
        kubernetes_validate.validate(obj, kubernetes_version, strict=True)


def test_chart_crd_passes_strict_kubernetes_validation() -> None:
    crds = [doc for path in sorted((CHART / "crds").glob("*.yaml")) for doc in documents(path.read_text())]
    assert [crd["metadata"]["name"] for crd in crds] == ["bloomzinferences.inference.bloomz.dev"]
    for version in KUBERNETES_VERSIONS:
        kubernetes_validate.validate(crds[0], version, strict=True)


def test_helm_install_includes_the_crd(render: Render) -> None:
    objects = render("--include-crds")
    crd = single(objects, "CustomResourceDefinition")
    assert crd["spec"]["names"]["shortNames"] == ["bloomz"]


@pytest.mark.parametrize(
    ("override", "complaint"),
    [
        (("--set", "config.livenessPort=http"), "livenessPort"),
        (("--set", "config.devices.hpu.hostIPC=yes"), "hostIPC"),
        (("--set", "config.benchmark.enabled=sometimes"), "enabled"),
        (("--set", "config.logLevel=LOUD"), "logLevel"),
        (("--set", "watchNamespaces=team-a"), "watchNamespaces"),
        (("--set", "config.devices.hpu.hugepages2Mi=lots"), "hugepages2Mi"),
        (("--set", "config.devices.hpu.memoryPerCard=1.5Gi"), "memoryPerCard"),
        (("--set", "rbac.create=maybe"), "create"),
        (("--set-json", 'config.devices.cpu.env={"LOG_LEVEL": 1}'), "LOG_LEVEL"),
        (("--set", "config.devices.tpu.image=x"), "tpu"),
        (("--set", "livenesPort=8080"), "livenesPort"),
        (("--set", "config.hubEndpoint=hf-mirror:8080"), "hubEndpoint"),
        (("--set", "config.devices.cpu.memoryBandwidth=fast"), "memoryBandwidth"),
        (("--set-json", "config.devices.cuda.memoryBandwidth=0"), "memoryBandwidth"),
    ],
)
def test_values_schema_rejects_wrong_types_and_unknown_keys(
    override: tuple[str, str], complaint: str
) -> None:
    result = helm_template(*override, check=False)
    assert result.returncode != 0, f"helm accepted {override}:\n{result.stdout[:500]}"
    assert complaint in result.stderr


def test_every_value_is_documented_and_typed() -> None:
    """Each value in values.yaml has a `# --` comment (helm-docs style) and a type in values.schema.json.

    A value is a leaf, or a block the schema types as a whole (a map such as resources or nodeSelector).
    """
    schema = json.loads((CHART / "values.schema.json").read_text())
    lines = (CHART / "values.yaml").read_text().splitlines()

    def values_of(node: Any, schema_node: dict[str, Any], path: tuple[str, ...]) -> list[tuple[str, ...]]:
        assert "type" in schema_node, f"{'.'.join(path)} has no type in values.schema.json"
        if isinstance(node, dict) and node and "properties" in schema_node:
            return [
                leaf
                for key, value in node.items()
                for leaf in values_of(value, schema_node["properties"].get(key, {}), (*path, key))
            ]
        return [path]

    def documented(path: tuple[str, ...]) -> bool:
        # The `key:` line at this depth, under its parents, preceded by a comment block with a `# --` line.
        depth, start = 0, 0
        for depth, key in enumerate(path):
            prefix = f"{'  ' * depth}{key}:"
            start = next(i for i in range(start, len(lines)) if lines[i].startswith(prefix))
        above = start - 1
        while above >= 0 and lines[above].lstrip().startswith("#"):
            if lines[above].lstrip().startswith("# --"):
                return True
            above -= 1
        return False

    paths = values_of(yaml.safe_load("\n".join(lines)), schema, ())
    assert len(paths) > 30
    undocumented = [".".join(path) for path in paths if not documented(path)]
    assert not undocumented, f"values without a '# --' comment: {undocumented}"


def test_chart_is_helm3_compatible_and_versioned_like_the_package() -> None:
    chart = yaml.safe_load((CHART / "Chart.yaml").read_text())
    assert chart["apiVersion"] == "v2"  # Helm 3 and 4 both read v2 charts
    version = pyproject()["project"]["version"]
    assert chart["version"] == version
    assert chart["appVersion"] == version


def test_chart_packages(tmp_path: Path) -> None:
    run([find_tool("helm"), "package", str(CHART), "--destination", str(tmp_path)])
    (package,) = tmp_path.glob("bloomz-operator-*.tgz")
    listing = subprocess.run(["tar", "-tzf", str(package)], capture_output=True, text=True, check=True).stdout
    assert "bloomz-operator/crds/bloomzinferences.inference.bloomz.dev.yaml" in listing
    assert "bloomz-operator/files/rbac.yaml" in listing
    assert "bloomz-operator/values.schema.json" in listing


def test_operator_deployment(render: Render) -> None:
    chart = yaml.safe_load((CHART / "Chart.yaml").read_text())
    deployment = single(render(), "Deployment")
    assert deployment["metadata"]["namespace"] == RELEASE_NAMESPACE
    spec = deployment["spec"]
    assert spec["replicas"] == 1
    assert spec["strategy"] == {"type": "Recreate"}
    pod = spec["template"]["spec"]
    assert pod["securityContext"]["runAsNonRoot"] is True
    (container,) = pod["containers"]
    assert container["image"] == f"ghcr.io/bloomz-operator/operator:{chart['appVersion']}"
    assert container["args"][0] == "--standalone"
    assert container["securityContext"]["readOnlyRootFilesystem"] is True
    assert container["securityContext"]["allowPrivilegeEscalation"] is False
    assert set(container["resources"]["requests"]) == {"cpu", "memory"}
    # Kopf's liveness endpoint, on the port the settings file gives the operator.
    probe = container["livenessProbe"]["httpGet"]
    ports = {p["name"]: p["containerPort"] for p in container["ports"]}
    assert probe["path"] == "/healthz"
    assert ports[probe["port"]] == 8080
    # A writable /tmp on the read-only root filesystem.
    volumes = {v["name"]: v for v in pod["volumes"]}
    mounts = {m["mountPath"]: m["name"] for m in container["volumeMounts"]}
    assert "emptyDir" in volumes[mounts["/tmp"]]
    # The settings file: BLOOMZ_OPERATOR_CONFIG points into the mounted ConfigMap, at its key.
    env = {e["name"]: e.get("value") for e in container["env"]}
    config_path = Path(env["BLOOMZ_OPERATOR_CONFIG"])
    configmap_volume = volumes[mounts[str(config_path.parent)]]
    configmap = single(render(), "ConfigMap")
    assert configmap_volume["configMap"]["name"] == configmap["metadata"]["name"]
    assert config_path.name in configmap["data"]


def test_namespaced_values_reach_the_deployment(render: Render) -> None:
    deployment = single(render("--values", str(NAMESPACED_VALUES)), "Deployment")
    pod = deployment["spec"]["template"]["spec"]
    (container,) = pod["containers"]
    assert container["image"] == "registry.example.com/ml/bloomz-operator:0.1.0-rc1"
    assert pod["imagePullSecrets"] == [{"name": "registry-credentials"}]
    assert {p["name"]: p["containerPort"] for p in container["ports"]}["liveness"] == 8081
    assert pod["nodeSelector"] == {"kubernetes.io/os": "linux"}


def test_changed_settings_roll_the_operator(render: Render) -> None:
    def checksum(*extra: str) -> str:
        deployment = single(render(*extra), "Deployment")
        return str(deployment["spec"]["template"]["metadata"]["annotations"]["checksum/settings"])

    assert checksum() != checksum("--set", "config.logLevel=DEBUG")


def test_notes_tell_how_to_apply_a_resource_and_read_the_latency() -> None:
    result = run([find_tool("helm"), "install", "--dry-run=client", "bloomz", str(CHART)])
    notes = result.stdout.split("NOTES:", 1)[1]
    # A packaged chart has no examples/ folder: the notes carry the resource themselves, as valid JSON,
    # applied into a watched namespace (by default the release's own).
    assert "examples/" not in notes
    start = notes.index("echo '") + len("echo '")
    resource = json.loads(notes[start : notes.index("' |", start)])
    assert resource["kind"] == "BloomzInference" and resource["spec"]["device"] == "hpu"
    assert "kubectl apply -n default -f -" in notes
    assert "kubectl get bloomz" in notes and "TPOT-MS" in notes
    assert "bloomz.v1.TextGeneration/Generate" in notes


def test_chart_refuses_clusters_without_grpc_probes() -> None:
    # The runtime pods use gRPC container probes, GA in Kubernetes 1.27.
    result = helm_template("--kube-version", "1.26.0", check=False)
    assert result.returncode != 0
    assert "kubeVersion" in result.stderr
