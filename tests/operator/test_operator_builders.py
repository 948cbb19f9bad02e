"""Builders: spec + settings -> Pods and Service (Gaudi recipe, probes, env, command line)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
import yaml
from bloomz_api.options import ServeOptions, parse_options
from bloomz_operator import constants
from bloomz_operator.builders import (
    Owner,
    build_pod_spec,
    build_service,
    model_size_billions,
    runtime_args,
    runtime_entrypoint,
    service_endpoint,
    startup_budget_seconds,
    template_hash,
)
from bloomz_operator.ownership import owner_tag
from bloomz_operator.settings import Settings, parse_settings
from bloomz_operator.spec import parse_spec
from cluster_fakes import build_pods

ROOT = Path(__file__).resolve().parents[2]
OWNER = Owner(name="bloomz-7b1", namespace="ml", uid="uid-1")


def example_spec(name: str) -> dict[str, Any]:
    return yaml.safe_load((ROOT / "examples" / name).read_text())["spec"]


def container(pod: dict[str, Any]) -> dict[str, Any]:
    (c,) = pod["spec"]["containers"]
    return c


def env_of(c: dict[str, Any]) -> dict[str, Any]:
    return {e["name"]: e.get("value", e.get("valueFrom")) for e in c["env"]}


def test_gaudi_pod_follows_intels_recipe() -> None:
    (pod,) = build_pods(OWNER, parse_spec(example_spec("bloomz.yaml")), Settings())
    c = container(pod)
    # Intel's figures for a whole server (409Gi, 95000Mi), asked per card: 8 cards.
    assert c["resources"]["limits"] == {
        "habana.ai/gaudi": "8",
        "memory": "418816Mi",
        "hugepages-2Mi": "94992Mi",
    }
    assert c["securityContext"] == {
        "allowPrivilegeEscalation": False,
        "capabilities": {"drop": ["ALL"], "add": ["SYS_NICE"]},
    }
    assert pod["spec"]["hostIPC"] is True
    assert pod["spec"]["restartPolicy"] == "Always"
    volumes = {v["name"]: v for v in pod["spec"]["volumes"]}
    assert volumes["dshm"] == {"name": "dshm", "emptyDir": {"medium": "Memory"}}
    assert {"name": "dshm", "mountPath": "/dev/shm"} in c["volumeMounts"]
    assert volumes["models"]["persistentVolumeClaim"] == {"claimName": "bloomz-models"}
    env = env_of(c)
    assert env["PT_HPU_LAZY_MODE"] == "1"
    assert env["PT_HPU_ENABLE_LAZY_COLLECTIVES"] == "true"
    assert env["HF_HOME"] == "/models/huggingface"  # Hub id: downloads land on the volume
    assert c["image"].startswith("ghcr.io/bloomz-operator/runtime-gaudi:")


def test_command_line_is_the_launcher_contract() -> None:
    (pod,) = build_pods(OWNER, parse_spec(example_spec("bloomz.yaml")), Settings())
    c = container(pod)
    assert c["name"] == "runtime"
    assert c["command"] == ["python3", "-m", "bloomz_runtime.launch"] == runtime_entrypoint()
    # The required flags, the ports and grace period the pod depends on, and what differs from the defaults.
    assert c["args"] == [
        "--model", "bigscience/bloomz-7b1", "--device", "hpu", "--world-size", "8",
        "--port", "50051", "--metrics-port", "9090", "--dtype", "bfloat16", "--http-port", "8000",
        "--grace-period-s", "30.0",
    ]  # fmt: skip
    assert parse_options(c["args"], environ={}) == ServeOptions(
        model="bigscience/bloomz-7b1", device="hpu", world_size=8, dtype="bfloat16", grace_period_s=30.0
    )
    ports = {p["name"]: p["containerPort"] for p in c["ports"]}
    assert ports == {"grpc": 50051, "metrics": 9090, "http": 8000}


def test_dtype_left_to_the_launcher_when_unset_and_flags_switch_off() -> None:
    spec = parse_spec({"model": "m", "device": "cpu", "generation": {"kvCache": False, "hpuGraphs": False}})
    args = runtime_args(spec)
    assert "--dtype" not in args  # the launcher picks float32 on cpu, bfloat16 on hpu/cuda
    assert "--no-kv-cache" in args
    assert "--hpu-graphs" not in args and "--no-hpu-graphs" not in args  # cpu: not an HPU flag
    hpu = runtime_args(parse_spec({"model": "m", "generation": {"hpuGraphs": False}}))
    assert "--no-hpu-graphs" in hpu


def test_every_generation_setting_and_the_revision_reach_the_launcher() -> None:
    spec = parse_spec(
        {
            "model": "bigscience/bloomz-7b1",
            "modelRevision": "0123abcd",
            "device": "cuda",
            "cards": 2,
            "generation": {
                "maxInputTokens": 512,
                "maxNewTokens": 64,
                "maxBatchSize": 4,
                "maxQueueSize": 9,
                "batchWaitMs": 0,
                "kvCache": False,
            },
        }
    )
    opts = parse_options(runtime_args(spec), environ={})
    assert (opts.revision, opts.world_size, opts.device) == ("0123abcd", 2, "cuda")
    assert (opts.max_input_tokens, opts.max_new_tokens, opts.max_batch_size) == (512, 64, 4)
    assert (opts.max_queue_size, opts.batch_wait_ms, opts.kv_cache) == (9, 0, False)
    assert "--revision" not in runtime_args(parse_spec({"model": "m"}))


def test_probes_use_grpc_health_and_the_startup_budget_scales_with_the_model() -> None:
    small = build_pod_spec(parse_spec(example_spec("bloomz.yaml")), Settings())["containers"][0]
    big = build_pod_spec(parse_spec(example_spec("bloomz-176b.yaml")), Settings())["containers"][0]
    for probe in ("startupProbe", "readinessProbe", "livenessProbe"):
        assert big[probe]["grpc"] == {"port": 50051, "service": "bloomz.v1.TextGeneration"}

    def budget(c: dict[str, Any]) -> int:
        return int(c["startupProbe"]["periodSeconds"] * c["startupProbe"]["failureThreshold"])

    assert budget(big) >= 60 * 60  # 176B: load + shard + HPU graph warm-up, tens of minutes
    assert 10 * 60 <= budget(small) < budget(big)
    assert big["livenessProbe"]["failureThreshold"] * big["livenessProbe"]["periodSeconds"] >= 60


@pytest.mark.parametrize(
    ("model", "size"),
    [
        ("bigscience/bloomz", 176.0),
        ("bigscience/bloom", 176.0),
        ("bigscience/bloomz-mt", 176.0),
        ("bigscience/bloomz-7b1", 7.1),
        ("bigscience/bloomz-1b7", 1.7),
        ("bigscience/bloom-560m", 0.56),
        ("bigscience/bloomz-3b", 3.0),
        ("/models/bloomz-tiny", None),
    ],
)
def test_model_size_from_name(model: str, size: float | None) -> None:
    assert model_size_billions(model) == size


def test_unknown_model_size_gets_a_generous_budget() -> None:
    assert startup_budget_seconds("/models/my-model") >= startup_budget_seconds("bigscience/bloomz-7b1")


def test_cuda_pod_asks_for_gpus_only() -> None:
    pods = build_pods(OWNER, parse_spec(example_spec("bloomz-cuda.yaml")), Settings())
    assert len(pods) == 2
    c = container(pods[0])
    assert c["resources"]["limits"] == {"nvidia.com/gpu": "2"}
    assert "add" not in c["securityContext"]["capabilities"] and "hostIPC" not in pods[0]["spec"]
    assert "PT_HPU_LAZY_MODE" not in env_of(c)
    assert pods[0]["spec"]["tolerations"] == [
        {"key": "nvidia.com/gpu", "operator": "Exists", "effect": "NoSchedule"}
    ]


def test_cpu_pod_sizes_cpu_and_memory_from_cards_and_mounts_host_path() -> None:
    (pod,) = build_pods(OWNER, parse_spec(example_spec("bloomz-cpu.yaml")), Settings())
    c = container(pod)
    assert c["resources"] == {"limits": {"memory": "8Gi"}, "requests": {"cpu": "2", "memory": "4Gi"}}
    volumes = {v["name"]: v for v in pod["spec"]["volumes"]}
    assert volumes["models"]["hostPath"] == {"path": "/var/lib/bloomz/models", "type": "Directory"}
    assert {"name": "models", "mountPath": "/models", "readOnly": True} in c["volumeMounts"]
    assert "HF_HOME" not in env_of(c)  # a local path needs no Hub cache
    assert c["args"][:6] == ["--model", "/models/bloomz-tiny", "--device", "cpu", "--world-size", "2"]
    assert "--dtype" in c["args"] and c["args"][c["args"].index("--dtype") + 1] == "float32"


def test_spec_pass_through_and_settings_merge() -> None:
    settings = parse_settings(
        {
            "imagePullPolicy": "Always",
            "imagePullSecrets": ["registry-local", "mirror"],
            "devices": {
                "hpu": {
                    "image": "registry.local/gaudi:1",
                    "nodeSelector": {"habana.ai/device.type": "gaudi2"},
                    "tolerations": [{"key": "habana.ai/gaudi", "operator": "Exists"}],
                    "env": {"LOG_LEVEL_ALL": "4"},
                }
            },
        }
    )
    spec = parse_spec(
        {
            "model": "bigscience/bloomz-7b1",
            "cards": 2,
            "nodeSelector": {"zone": "a"},
            "resources": {"limits": {"memory": "200Gi"}, "requests": {"cpu": 16}},
            "env": [
                {"name": "LOG_LEVEL_ALL", "value": "3"},
                {"name": "X", "valueFrom": {"secretKeyRef": {}}},
            ],
            "storage": {"pvc": {"claimName": "c", "subPath": "hub", "readOnly": True}, "mountPath": "/data"},
        }
    )
    pod = build_pod_spec(spec, settings)
    c = pod["containers"][0]
    assert c["image"] == "registry.local/gaudi:1" and c["imagePullPolicy"] == "Always"
    assert pod["imagePullSecrets"] == [{"name": "registry-local"}, {"name": "mirror"}]
    assert "imagePullSecrets" not in build_pod_spec(spec, Settings())
    assert pod["nodeSelector"] == {"habana.ai/device.type": "gaudi2", "zone": "a"}
    assert pod["tolerations"] == [{"key": "habana.ai/gaudi", "operator": "Exists"}]
    assert c["resources"]["limits"] == {"habana.ai/gaudi": "2", "memory": "200Gi", "hugepages-2Mi": "23748Mi"}
    assert c["resources"]["requests"] == {"cpu": "16"}
    env = env_of(c)
    assert env["LOG_LEVEL_ALL"] == "3"  # the resource's env wins over the operator's
    assert env["X"] == {"secretKeyRef": {}}
    assert env["HF_HOME"] == "/data/huggingface"
    assert {"name": "models", "mountPath": "/data", "readOnly": True, "subPath": "hub"} in c["volumeMounts"]
    image_spec = parse_spec({"model": "m", "image": "mine:2"})
    assert build_pod_spec(image_spec, settings)["containers"][0]["image"] == "mine:2"


def test_pods_names_labels_and_owner() -> None:
    spec = parse_spec({**example_spec("bloomz.yaml"), "replicas": 3})
    pods = build_pods(OWNER, spec, Settings())
    hash_ = template_hash(build_pod_spec(spec, Settings()))
    assert [p["metadata"]["name"] for p in pods] == [
        f"bloomz-7b1-{owner_tag(OWNER.uid)}-{hash_}-{i}" for i in range(3)
    ]
    for index, pod in enumerate(pods):
        meta = pod["metadata"]
        assert meta["namespace"] == "ml"
        assert meta["labels"] == {
            "app.kubernetes.io/name": "bloomz-runtime",
            "app.kubernetes.io/instance": "bloomz-7b1",
            "app.kubernetes.io/managed-by": "bloomz-operator",
            "inference.bloomz.dev/name": "bloomz-7b1",
            "inference.bloomz.dev/template-hash": hash_,
            "inference.bloomz.dev/replica-index": str(index),
        }
        assert meta["ownerReferences"] == [
            {
                "apiVersion": "inference.bloomz.dev/v1alpha1",
                "kind": "BloomzInference",
                "name": "bloomz-7b1",
                "uid": "uid-1",
                "controller": True,
                "blockOwnerDeletion": True,
            }
        ]
    pods[0]["spec"]["containers"][0]["args"].append("--mutated")
    assert "--mutated" not in pods[1]["spec"]["containers"][0]["args"]


def test_template_hash_changes_with_the_pod_template_only() -> None:
    base = example_spec("bloomz.yaml")
    h = template_hash(build_pod_spec(parse_spec(base), Settings()))
    assert h == template_hash(build_pod_spec(parse_spec(dict(base)), Settings()))  # stable
    assert h != template_hash(build_pod_spec(parse_spec({**base, "cards": 4}), Settings()))
    assert h != template_hash(
        build_pod_spec(parse_spec({**base, "model": "bigscience/bloomz-3b"}), Settings())
    )
    # Scaling or a new benchmark setting does not touch the pods.
    assert h == template_hash(build_pod_spec(parse_spec({**base, "replicas": 5}), Settings()))
    assert h == template_hash(
        build_pod_spec(parse_spec({**base, "benchmark": {"maxNewTokens": 10}}), Settings())
    )


def test_long_names_stay_valid() -> None:
    owner = Owner(name="a" * 60, namespace="ns", uid="u")
    (pod,) = build_pods(owner, parse_spec({"model": "m"}), Settings())
    assert len(pod["metadata"]["name"]) <= 63


def test_service_exposes_grpc_and_metrics() -> None:
    svc = build_service(OWNER)
    assert svc["metadata"]["name"] == "bloomz-7b1"
    assert svc["metadata"]["ownerReferences"][0]["uid"] == "uid-1"
    assert svc["spec"]["selector"] == {
        "app.kubernetes.io/name": "bloomz-runtime",
        "inference.bloomz.dev/name": "bloomz-7b1",
    }
    ports = {(p["name"], p["port"], p["targetPort"]) for p in svc["spec"]["ports"]}
    assert ports == {("grpc", 50051, "grpc"), ("metrics", 9090, "metrics"), ("http", 8000, "http")}
    assert service_endpoint(OWNER) == "bloomz-7b1.ml.svc:50051"
    # The selector picks the pods.
    (pod,) = build_pods(OWNER, parse_spec({"model": "m"}), Settings())
    assert svc["spec"]["selector"].items() <= pod["metadata"]["labels"].items()
    assert constants.GRPC_PORT == 50051
