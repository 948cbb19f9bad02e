"""Pod container -> local process translation (command, env, paths)."""

from pathlib import Path

import pytest
from bloomz_sandbox.node.process_spec import (
    Mount,
    UnsupportedContainer,
    build_process_spec,
    expand_references,
    host_path_failure,
    host_path_requirements,
    rewrite_paths,
    translate_command,
)

NODE_ROOT = Path("/sb/node")
POD_DIR = Path("/sb/pods/default/p")


def runtime_pod(**container_extra):
    container = {
        "name": "runtime",
        "image": "ghcr.io/x/runtime-cpu:1",
        "command": ["python3", "-m", "bloomz_runtime.launch"],
        "args": ["--model", "/models/bloomz-tiny", "--device", "cpu", "--world-size", "2"],
        "env": [
            {"name": "HF_HOME", "value": "/models/.hf"},
            {"name": "POD_IP", "valueFrom": {"fieldRef": {"fieldPath": "status.podIP"}}},
            {"name": "POD_NAME", "valueFrom": {"fieldRef": {"fieldPath": "metadata.name"}}},
            {"name": "POD_NAMESPACE", "valueFrom": {"fieldRef": {"fieldPath": "metadata.namespace"}}},
            {"name": "APP", "valueFrom": {"fieldRef": {"fieldPath": "metadata.labels['app']"}}},
            {"name": "ADDRESS", "value": "$(POD_IP):50051"},
        ],
        "volumeMounts": [
            {"name": "models", "mountPath": "/models"},
            {"name": "shm", "mountPath": "/dev/shm"},
        ],
        **container_extra,
    }
    return {
        "metadata": {"name": "bloomz-tiny-abc-0", "namespace": "team", "labels": {"app": "bloomz"}},
        "spec": {
            "containers": [container],
            "volumes": [
                {"name": "models", "hostPath": {"path": "/var/lib/bloomz/models"}},
                {"name": "shm", "emptyDir": {"medium": "Memory"}},
            ],
        },
    }


def build(pod, host_env=None):
    return build_process_spec(
        pod,
        pod["spec"]["containers"][0],
        pod_ip="127.0.0.7",
        host_ip="127.0.0.1",
        node_name="sandbox-node",
        node_root=NODE_ROOT,
        pod_dir=POD_DIR,
        interpreter="/venv/bin/python",
        host_env=host_env or {"PATH": "/usr/bin", "KUBECONFIG": "/k", "MASTER_PORT": "1"},
    )


def test_the_runtime_pod_becomes_a_local_command_on_the_node_root():
    spec = build(runtime_pod())
    assert spec.argv == [
        "/venv/bin/python",
        "-m",
        "bloomz_runtime.launch",
        "--model",
        "/sb/node/var/lib/bloomz/models/bloomz-tiny",
        "--device",
        "cpu",
        "--world-size",
        "2",
    ]
    assert spec.cwd == POD_DIR
    assert Path("/sb/node/var/lib/bloomz/models") in spec.directories
    assert POD_DIR / "volumes" / "shm" in spec.directories


def test_env_resolves_field_refs_references_and_paths_and_drops_host_only_keys():
    env = build(runtime_pod()).env
    assert env["HF_HOME"] == "/sb/node/var/lib/bloomz/models/.hf"
    assert env["POD_IP"] == "127.0.0.7"
    assert env["POD_NAME"] == "bloomz-tiny-abc-0"
    assert env["POD_NAMESPACE"] == "team"
    assert env["APP"] == "bloomz"
    assert env["ADDRESS"] == "127.0.0.7:50051"
    assert env["BLOOMZ_BIND_HOST"] == "127.0.0.7"
    assert env["HOSTNAME"] == "bloomz-tiny-abc-0"
    assert env["PATH"] == "/usr/bin"
    assert "KUBECONFIG" not in env and "MASTER_PORT" not in env


def test_pvc_and_sub_path_map_under_the_node_root():
    pod = runtime_pod(volumeMounts=[{"name": "models", "mountPath": "/models", "subPath": "hub"}])
    pod["spec"]["volumes"] = [{"name": "models", "persistentVolumeClaim": {"claimName": "bloomz-models"}}]
    spec = build(pod)
    assert spec.argv[4] == "/sb/node/persistentvolumeclaims/team/bloomz-models/hub/bloomz-tiny"


def test_paths_are_rewritten_only_where_a_path_starts():
    mounts = [Mount("/models/cache", Path("/c")), Mount("/models", Path("/m"))]
    assert rewrite_paths("/models", mounts) == "/m"
    assert rewrite_paths("/models/x", mounts) == "/m/x"
    assert rewrite_paths("/models/cache/y", mounts) == "/c/y"
    assert rewrite_paths("--model=/models/x", mounts) == "--model=/m/x"
    assert rewrite_paths("a:/models/x", mounts) == "a:/m/x"
    assert rewrite_paths("/modelsfoo", mounts) == "/modelsfoo"
    assert rewrite_paths("/data/models/x", mounts) == "/data/models/x"
    assert rewrite_paths("bigscience/bloomz-7b1", mounts) == "bigscience/bloomz-7b1"


def test_only_python_as_first_word_is_the_interpreter():
    assert translate_command(["python3", "-m", "x"], "/py") == ["/py", "-m", "x"]
    assert translate_command(["/usr/bin/python3.11", "a.py"], "/py") == ["/py", "a.py"]
    assert translate_command(["python", "-c", "python3"], "/py") == ["/py", "-c", "python3"]
    assert translate_command(["mpirun", "python3"], "/py") == ["mpirun", "python3"]


def test_reference_expansion_follows_kubernetes_rules():
    env = {"A": "1"}
    assert expand_references("$(A)-$(B)-$$(A)", env) == "1-$(B)-$(A)"


def test_mounted_working_dir_is_kept_and_an_image_one_is_not():
    assert build(runtime_pod(workingDir="/models/work")).cwd == Path("/sb/node/var/lib/bloomz/models/work")
    assert build(runtime_pod(workingDir="/app")).cwd == POD_DIR


@pytest.mark.parametrize(
    ("change", "message"),
    [
        ({"command": []}, "set command"),
        ({"env": [{"name": "S", "valueFrom": {"secretKeyRef": {"name": "s", "key": "k"}}}]}, "secretKeyRef"),
        ({"env": [{"name": "X", "valueFrom": {"fieldRef": {"fieldPath": "spec.bogus"}}}]}, "spec.bogus"),
        ({"volumeMounts": [{"name": "nope", "mountPath": "/x"}]}, "nope"),
    ],
)
def test_what_cannot_run_locally_is_refused_with_a_reason(change, message):
    with pytest.raises(UnsupportedContainer, match=message):
        build(runtime_pod(**change))


def test_host_path_types_that_must_exist_are_listed():
    pod = runtime_pod()
    pod["spec"]["volumes"] += [
        {"name": "dir", "hostPath": {"path": "/srv/d", "type": "Directory"}},
        {"name": "file", "hostPath": {"path": "/etc/f", "type": "File"}},
        {"name": "create", "hostPath": {"path": "/srv/c", "type": "DirectoryOrCreate"}},
    ]
    assert host_path_requirements(pod, NODE_ROOT) == [
        ("dir", Path("/sb/node/srv/d"), "Directory"),
        ("file", Path("/sb/node/etc/f"), "File"),
    ]
    pod["spec"]["containers"][0]["volumeMounts"] += [
        {"name": "dir", "mountPath": "/d"},
        {"name": "file", "mountPath": "/etc/config.yaml"},
    ]
    directories = build(pod).directories
    assert Path("/sb/node/srv/d") in directories and Path("/sb/node/etc/f") not in directories
    assert host_path_failure("dir", "/srv/d", "Directory") == (
        'MountVolume.SetUp failed for volume "dir" : hostPath type check failed: /srv/d is not a directory'
    )
