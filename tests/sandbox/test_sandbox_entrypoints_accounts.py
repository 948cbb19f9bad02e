"""Pod runner, pure parts: image entrypoints from the Dockerfiles, and the service-account token mount."""

from __future__ import annotations

from pathlib import Path

import pytest
from bloomz_sandbox.node import images, service_account
from bloomz_sandbox.node.process_spec import Mount, UnsupportedContainer, build_process_spec, rewrite_paths


@pytest.mark.parametrize(
    ("image", "name"),
    [
        ("ghcr.io/bloomz-operator/operator:0.1.0", "operator"),
        ("operator", "operator"),
        ("localhost:5000/x/runtime-cpu:1@sha256:abc", "runtime-cpu"),
        ("ghcr.io/bloomz-operator/operator@sha256:abc", "operator"),
    ],
)
def test_repository_name(image: str, name: str) -> None:
    assert images.repository_name(image) == name


def test_the_project_dockerfiles_give_the_operator_and_runtime_entrypoints() -> None:
    entrypoints = images.read_entrypoints()
    assert entrypoints["operator"] == ["python3", "-m", "bloomz_operator"]
    assert entrypoints["runtime-cpu"] == ["python3", "-m", "bloomz_runtime.launch"]
    assert images.parse_entrypoint('FROM x\nENTRYPOINT ["a"]\nENTRYPOINT ["b", "c"]\n') == ["b", "c"]
    assert images.parse_entrypoint("ENTRYPOINT echo shell-form\n") is None


def _spec(container: dict, pod: dict | None = None) -> list[str]:
    pod = pod or {"metadata": {"name": "p", "namespace": "n"}, "spec": {}}
    spec = build_process_spec(
        pod,
        container,
        pod_ip="127.0.0.5",
        host_ip="127.0.0.1",
        node_name="node",
        node_root=Path("/tmp/node"),
        pod_dir=Path("/tmp/pod"),
        interpreter="/venv/bin/python",
        host_env={},
        entrypoints=images.read_entrypoints(),
    )
    return spec.argv


def test_a_container_without_command_runs_its_image_entrypoint_with_args() -> None:
    container = {
        "name": "operator",
        "image": "ghcr.io/bloomz-operator/operator:0.1.0",
        "args": ["--standalone"],
    }
    assert _spec(container) == ["/venv/bin/python", "-m", "bloomz_operator", "--standalone"]
    # a command replaces the entrypoint, as in Kubernetes
    assert _spec({**container, "command": ["python3", "-m", "other"]})[:3] == [
        "/venv/bin/python",
        "-m",
        "other",
    ]
    with pytest.raises(UnsupportedContainer, match="no entrypoint of image 'nginx:1'"):
        _spec({"name": "web", "image": "nginx:1"})


@pytest.mark.parametrize(
    ("spec", "account"),
    [
        ({}, "default"),
        ({"serviceAccountName": "bloomz-operator"}, "bloomz-operator"),
        ({"serviceAccount": "legacy"}, "legacy"),
        ({"serviceAccountName": "x", "automountServiceAccountToken": False}, None),
        ({"automountServiceAccountToken": True}, "default"),
    ],
)
def test_account_to_mount(spec: dict, account: str | None) -> None:
    assert service_account.account_to_mount({"spec": spec}) == account


def test_token_files_and_in_cluster_env(tmp_path: Path) -> None:
    files = service_account.token_files("tok", "bloomz-system", "PEM")
    service_account.write_token_files(tmp_path / "sa", files)
    assert (tmp_path / "sa" / "token").read_text() == "tok"
    assert (tmp_path / "sa" / "namespace").read_text() == "bloomz-system"
    assert (tmp_path / "sa" / "token").stat().st_mode & 0o077 == 0
    env = service_account.in_cluster_env("127.0.0.1", 6443, tmp_path / "sa")
    assert env["KUBERNETES_SERVICE_HOST"] == "127.0.0.1" and env["KUBERNETES_SERVICE_PORT"] == "6443"
    assert env["BLOOMZ_SERVICE_ACCOUNT_DIR"] == str(tmp_path / "sa")


def test_a_rewritten_path_is_not_rewritten_again_by_another_mount() -> None:
    mounts = [
        Mount("/etc/bloomz-operator", Path("/tmp/pod/volumes/settings")),
        Mount("/tmp", Path("/tmp/pod/volumes/tmp")),
    ]
    assert (
        rewrite_paths("/etc/bloomz-operator/settings.yaml", mounts)
        == "/tmp/pod/volumes/settings/settings.yaml"
    )
    assert rewrite_paths("--dir=/tmp/x", mounts) == "--dir=/tmp/pod/volumes/tmp/x"
