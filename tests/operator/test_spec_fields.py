"""Spec fields followed from `parse_spec` through `reconcile` (a recording fake API) to the pods it
creates: every field and default, the bounds the operator checks, rollout.maxSurge, cardsPerNode, the
grace period and the probe thresholds derived from the model."""

from __future__ import annotations

import logging
from typing import Any, cast

import pytest
from bloomz_operator.builders import Owner, model_size_billions, startup_budget_seconds
from bloomz_operator.kubeapi import KubeAPI
from bloomz_operator.reconciler import reconcile
from bloomz_operator.settings import Settings
from bloomz_operator.spec import (
    BenchmarkSpec,
    GenerationSpec,
    InferenceSpec,
    SpecError,
    StorageSpec,
    parse_spec,
)
from cluster_fakes import FakeAPI, creates, deletes, observed

OWNER = Owner(name="fields", namespace="ns", uid="uid-fields")
LOG = logging.getLogger("test")
GAUDI = "habana.ai/gaudi"


def test_an_empty_spec_takes_the_crd_defaults() -> None:
    assert parse_spec({"model": "m"}) == InferenceSpec(model="m")
    nulls = {"device": None, "cards": None, "cardsPerNode": None, "replicas": None, "rollout": None}
    assert parse_spec({"model": "m", **nulls, "generation": {"maxNewTokens": None}}) == InferenceSpec(
        model="m"
    )


def test_every_field_is_read_from_its_key() -> None:
    spec = {
        "model": "bigscience/bloomz-3b",
        "device": "cuda",
        "cards": 4,
        "cardsPerNode": 2,
        "replicas": 3,
        "dtype": "bf16",
        "image": "registry/runtime:1",
        "rollout": {"maxSurge": 2},
        "generation": {
            "maxInputTokens": 11,
            "maxNewTokens": 12,
            "maxBatchSize": 13,
            "maxQueueSize": 14,
            "batchWaitMs": 15,
            "kvCache": False,
            "hpuGraphs": False,
        },
        "benchmark": {
            "enabled": False,
            "prompt": "p",
            "maxNewTokens": 21,
            "warmup": 22,
            "iterations": 23,
            "intervalSeconds": 24,
        },
        "storage": {"mountPath": "/w", "pvc": {"claimName": "c", "subPath": "s", "readOnly": True}},
        "resources": {"limits": {"memory": "1Gi"}},
        "nodeSelector": {"pool": "a"},
        "tolerations": [{"key": "k", "operator": "Exists"}],
        "env": [{"name": "A", "value": "1"}],
    }
    assert parse_spec(spec) == InferenceSpec(
        model="bigscience/bloomz-3b",
        device="cuda",
        cards=4,
        cards_per_node=2,
        replicas=3,
        dtype="bf16",
        image="registry/runtime:1",
        max_surge=2,
        generation=GenerationSpec(11, 12, 13, 14, 15, kv_cache=False, hpu_graphs=False),
        benchmark=BenchmarkSpec(False, "p", 21, 22, 23, 24),
        storage=StorageSpec("/w", pvc_claim_name="c", pvc_sub_path="s", pvc_read_only=True),
        resources={"limits": {"memory": "1Gi"}},
        node_selector={"pool": "a"},
        tolerations=({"key": "k", "operator": "Exists"},),
        env=({"name": "A", "value": "1"},),
    )


def test_storage_defaults_and_a_host_path() -> None:
    assert parse_spec({"model": "m", "storage": {"hostPath": {"path": "/data"}}}).storage == StorageSpec(
        mount_path="/models", host_path="/data"
    )
    bare = parse_spec({"model": "m", "storage": {"pvc": {"claimName": "c", "subPath": ""}}}).storage
    assert bare == StorageSpec(pvc_claim_name="c")
    assert parse_spec({"model": "m", "storage": {}}).storage is None


@pytest.mark.parametrize(
    ("fields", "message"),
    [
        ({"model": ""}, "spec.model is required"),
        ({"device": "tpu"}, "spec.device must be one of hpu, cuda, cpu, got 'tpu'"),
        ({"cards": 0}, "spec.cards must be >= 1, got 0"),
        ({"cardsPerNode": 0}, "spec.cardsPerNode must be >= 1, got 0"),
        (
            {"cards": 12, "cardsPerNode": 8},
            r"spec.cards \(12\) must be at most spec.cardsPerNode \(8\) or a multiple",
        ),
        ({"replicas": -1}, "spec.replicas must be >= 0, got -1"),
        ({"rollout": {"maxSurge": -1}}, "spec.rollout.maxSurge must be >= 0, got -1"),
        ({"cards": "many"}, "invalid spec: invalid literal"),
        ({"generation": {"maxBatchSize": "x"}}, "invalid spec: "),
    ],
)
def test_values_past_the_bounds_are_refused(fields: dict[str, Any], message: str) -> None:
    with pytest.raises(SpecError, match=message):
        parse_spec({"model": "m", **fields})


@pytest.mark.parametrize(
    ("fields", "nodes", "per_pod"),
    [
        ({"cards": 1, "cardsPerNode": 1}, 1, 1),
        ({"cards": 4}, 1, 4),
        ({"cards": 8}, 1, 8),
        ({"cards": 8, "cardsPerNode": 16}, 1, 8),
        ({"cards": 16}, 2, 8),
        ({"cards": 6, "cardsPerNode": 2}, 3, 2),
        ({"replicas": 0}, 1, 1),
        ({"rollout": {"maxSurge": 0}}, 1, 1),
    ],
)
def test_values_at_the_bounds_are_served(fields: dict[str, Any], nodes: int, per_pod: int) -> None:
    spec = parse_spec({"model": "m", **fields})
    assert (spec.nodes, spec.cards_per_pod, spec.multi_node) == (nodes, per_pod, nodes > 1)


def reconcile_pass(api: FakeAPI, spec: dict[str, Any]) -> Any:
    return reconcile(
        cast(KubeAPI, api), Settings(), owner=OWNER, spec=spec, generation=1, old_status=None, logger=LOG
    )


def serve_all(api: FakeAPI) -> None:
    """What the kubelet would do next: every pod running and ready."""
    for name, pod in list(api.pods.items()):
        api.pods[name] = observed(pod)


@pytest.mark.parametrize(
    ("cards", "per_node", "pods", "each"),
    [(8, 8, 1, "8"), (16, 8, 2, "8"), (4, 2, 2, "2"), (8, 16, 1, "8"), (6, 2, 3, "2")],
)
def test_cards_per_node_decides_the_pods_and_their_devices(
    cards: int, per_node: int, pods: int, each: str
) -> None:
    api = FakeAPI()
    outcome = reconcile_pass(
        api, {"model": "bigscience/bloomz-7b1", "cards": cards, "cardsPerNode": per_node}
    )
    assert len(api.pods) == len(creates(outcome.actions)) == pods
    for pod in api.pods.values():
        (container,) = pod["spec"]["containers"]
        assert container["resources"]["limits"][GAUDI] == each


@pytest.mark.parametrize("surge", [0, 1, 2])
def test_max_surge_reaches_the_rollout(surge: int) -> None:
    api = FakeAPI()
    old = {"model": "bigscience/bloomz-7b1", "cards": 8, "replicas": 2, "rollout": {"maxSurge": surge}}
    reconcile_pass(api, old)
    serve_all(api)
    old_pods = sorted(api.pods)
    outcome = reconcile_pass(api, {**old, "model": "bigscience/bloomz-3b"})
    if surge:
        assert len(creates(outcome.actions)) == surge and deletes(outcome.actions) == []
    else:
        assert creates(outcome.actions) == [] and deletes(outcome.actions) == old_pods[:1]
    assert len(api.pods) == 2 + surge - (0 if surge else 1)


@pytest.mark.parametrize(
    ("model", "size", "startup_failures"),
    [
        ("bigscience/bloomz-7b1", 7.1, 75),  # 600 + 20 x 7.1 = 742 s -> 75 probes of 10 s
        ("bigscience/bloom-560m", 0.56, 62),
        ("bigscience/bloomz-3b", 3.0, 66),
        ("BigScience/BLOOMZ-1B7", 1.7, 64),
        ("bigscience/bloomz", 176.0, 412),
        ("bigscience/bloomz-mt/", 176.0, 412),
        ("/models/my-checkpoint", None, 180),  # unknown size: 30 min
    ],
)
def test_grace_period_and_probe_thresholds_reach_the_pods(
    model: str, size: float | None, startup_failures: int
) -> None:
    assert model_size_billions(model) == (pytest.approx(size) if size is not None else None)
    budget = startup_budget_seconds(model)
    for spec in ({"model": model, "cards": 8}, {"model": model, "cards": 16, "cardsPerNode": 8}):
        api = FakeAPI()
        reconcile_pass(api, spec)
        # The runtime's container: the only pod of a replica, or a group's leader (its workers run sshd).
        leader = min(api.pods.values(), key=lambda pod: pod["metadata"]["name"])
        pod_spec = leader["spec"]
        (container,) = pod_spec["containers"]
        args = container["args"]
        assert args[args.index("--grace-period-s") + 1] == "30.0"  # the launcher drains this long on SIGTERM
        # The kubelet waits longer than that drain before it kills, on every pod of the replica.
        assert {pod["spec"]["terminationGracePeriodSeconds"] for pod in api.pods.values()} == {45}
        startup = container["startupProbe"]
        assert (startup["periodSeconds"], startup["failureThreshold"]) == (10, startup_failures)
        assert budget <= startup["periodSeconds"] * startup["failureThreshold"] < budget + 10
        readiness, liveness = container["readinessProbe"], container["livenessProbe"]
        assert (readiness["periodSeconds"], readiness["failureThreshold"], readiness["timeoutSeconds"]) == (
            10,
            3,
            5,
        )
        assert (liveness["periodSeconds"], liveness["failureThreshold"], liveness["timeoutSeconds"]) == (
            20,
            6,
            10,
        )


def test_the_refusals_read_exactly() -> None:
    for spec, message in (
        ({}, "spec.model is required"),
        (
            {"model": "m", "cards": 12, "cardsPerNode": 8},
            "spec.cards (12) must be at most spec.cardsPerNode (8) or a multiple of it: "
            "a replica spans whole nodes",
        ),
    ):
        with pytest.raises(SpecError) as error:
            parse_spec(spec)
        assert str(error.value) == message
