"""The CRD: a valid CustomResourceDefinition, every example validates against its schema, bad specs do not."""

from __future__ import annotations

import copy
import subprocess
import sys
from dataclasses import asdict
from pathlib import Path
from typing import Any

import jsonschema
import pytest
import yaml
from bloomz_api.constants import GENERATION_DEFAULTS
from bloomz_api.options import ServeOptions, parse_options
from bloomz_operator import constants
from bloomz_operator.spec import BenchmarkSpec, GenerationSpec, parse_spec

ROOT = Path(__file__).resolve().parents[2]
CRD_PATH = ROOT / "crds" / "bloomzinferences.inference.bloomz.dev.yaml"
EXAMPLES = sorted((ROOT / "examples").glob("*.yaml"))


@pytest.fixture(scope="module")
def crd() -> dict[str, Any]:
    return yaml.safe_load(CRD_PATH.read_text())


@pytest.fixture(scope="module")
def schema(crd: dict[str, Any]) -> dict[str, Any]:
    return crd["spec"]["versions"][0]["schema"]["openAPIV3Schema"]


def to_json_schema(node: Any) -> Any:
    """OpenAPI v3 (Kubernetes flavour) -> JSON Schema: drop the x-kubernetes-* and `nullable` extensions."""
    if isinstance(node, dict):
        out = {k: to_json_schema(v) for k, v in node.items() if not k.startswith("x-kubernetes-")}
        if out.pop("nullable", False) and "type" in out:
            out["type"] = [out["type"], "null"]
        return out
    if isinstance(node, list):
        return [to_json_schema(v) for v in node]
    return node


def apply_defaults(schema: dict[str, Any], value: Any) -> Any:
    """The API server's defaulting: fill in `default`s of absent properties, recursively."""
    if not isinstance(value, dict) or schema.get("type") != "object":
        return value
    for key, sub in (schema.get("properties") or {}).items():
        if key not in value and "default" in sub:
            value[key] = copy.deepcopy(sub["default"])
        if key in value:
            value[key] = apply_defaults(sub, value[key])
    return value


def validate(schema: dict[str, Any], obj: dict[str, Any]) -> None:
    obj = apply_defaults(schema, copy.deepcopy(obj))
    jsonschema.Draft7Validator(to_json_schema(schema)).validate(obj)


def test_crd_names_and_subresources(crd: dict[str, Any]) -> None:
    spec = crd["spec"]
    assert crd["metadata"]["name"] == f"{constants.PLURAL}.{constants.GROUP}"
    assert spec["group"] == constants.GROUP
    assert spec["scope"] == "Namespaced"
    assert spec["names"]["kind"] == constants.KIND
    assert spec["names"]["plural"] == constants.PLURAL
    assert "bloomz" in spec["names"]["shortNames"]
    (version,) = spec["versions"]
    assert version["name"] == constants.VERSION and version["served"] and version["storage"]
    assert version["subresources"] == {
        "status": {},
        "scale": {
            "specReplicasPath": ".spec.replicas",
            "statusReplicasPath": ".status.replicas",
            "labelSelectorPath": ".status.selector",
        },
    }
    columns = {c["name"]: c["jsonPath"] for c in version["additionalPrinterColumns"]}
    assert columns["Device"] == ".spec.device"
    assert columns["Cards"] == ".spec.cards"
    assert columns["Ready"] == ".status.readyReplicas"
    # Time per output token and to the first token compare across resources whatever their maxNewTokens;
    # the total latency and tokens/s stay in status and show with -o wide (priority 1).
    assert columns["TPOT-ms"] == ".status.latency.perTokenMs"
    assert columns["TTFT-ms"] == ".status.latency.firstTokenMs"
    assert columns["Latency-s"] == ".status.latency.seconds"
    assert columns["Tokens/s"] == ".status.latency.tokensPerSecond"
    wide = {c["name"] for c in version["additionalPrinterColumns"] if c.get("priority", 0) > 0}
    assert {"Latency-s", "Tokens/s"} <= wide and not {"TPOT-ms", "TTFT-ms"} & wide
    assert columns["Age"] == ".metadata.creationTimestamp"


def test_crd_is_a_valid_kubernetes_object() -> None:
    result = subprocess.run(
        [sys.executable, "-m", "kubernetes_validate", "--strict", str(CRD_PATH)],
        capture_output=True,
        text=True,
        check=False,
    )
    assert result.returncode == 0, result.stdout + result.stderr
    assert "passed" in result.stdout


def test_preserve_unknown_fields_only_for_env_value_from(schema: dict[str, Any]) -> None:
    found: list[str] = []

    def walk(node: Any, path: str) -> None:
        if isinstance(node, dict):
            if node.get("x-kubernetes-preserve-unknown-fields"):
                found.append(path)
            for key, value in node.items():
                walk(value, f"{path}.{key}")
        elif isinstance(node, list):
            for i, value in enumerate(node):
                walk(value, f"{path}[{i}]")

    walk(schema, "")
    assert found == [".properties.spec.properties.env.items.properties.valueFrom"]


@pytest.mark.parametrize("path", EXAMPLES, ids=[p.name for p in EXAMPLES])
def test_examples_validate(schema: dict[str, Any], path: Path) -> None:
    for doc in yaml.safe_load_all(path.read_text()):
        assert doc["apiVersion"] == constants.API_VERSION
        assert doc["kind"] == constants.KIND
        validate(schema, doc)


def test_expected_examples_exist() -> None:
    names = {p.name for p in EXAMPLES}
    assert {"bloomz.yaml", "bloomz-176b.yaml", "bloomz-cpu.yaml"} <= names
    seed = yaml.safe_load((ROOT / "examples" / "bloomz.yaml").read_text())["spec"]
    assert (seed["model"], seed["device"], seed["cards"], seed["dtype"]) == (
        "bigscience/bloomz-7b1",
        "hpu",
        8,
        "bfloat16",
    )
    big = yaml.safe_load((ROOT / "examples" / "bloomz-176b.yaml").read_text())["spec"]
    assert (big["model"], big["cards"]) == ("bigscience/bloomz", 8)
    tiny = yaml.safe_load((ROOT / "examples" / "bloomz-cpu.yaml").read_text())
    assert tiny["metadata"]["name"] == "bloomz-tiny"
    assert tiny["spec"]["model"] == "/models/bloomz-tiny"
    assert (tiny["spec"]["device"], tiny["spec"]["cards"], tiny["spec"]["dtype"]) == ("cpu", 2, "float32")
    assert tiny["spec"]["storage"] == {"hostPath": {"path": "/var/lib/bloomz/models"}, "mountPath": "/models"}


def minimal(**spec: Any) -> dict[str, Any]:
    return {
        "apiVersion": constants.API_VERSION,
        "kind": constants.KIND,
        "metadata": {"name": "x"},
        "spec": {"model": "bigscience/bloomz-7b1", **spec},
    }


@pytest.mark.parametrize(
    "spec",
    [
        {"cards": "eight"},
        {"device": "tpu"},
        {"cards": 0},
        {"replicas": -1},
        {"dtype": "int8"},
        {"model": ""},
        {"generation": {"maxNewTokens": 0}},
        {"generation": {"kvCache": "yes"}},
        {"benchmark": {"iterations": 0}},
        {"benchmark": {"warmup": -1}},
        {"storage": {"mountPath": "/models"}},
        {"storage": {"pvc": {"claimName": "a"}, "hostPath": {"path": "/b"}}},
        {"storage": {"pvc": {}}},
        {"nodeSelector": {"a": 1}},
        {"tolerations": [{"operator": "Sometimes"}]},
        {"env": [{"value": "no name"}]},
        {"rollout": {"maxSurge": -1}},
        {"modelRevision": ""},
        {"modelRevision": 3},
    ],
    ids=lambda spec: str(spec),
)
def test_bad_specs_are_refused(schema: dict[str, Any], spec: dict[str, Any]) -> None:
    with pytest.raises(jsonschema.ValidationError):
        validate(schema, minimal(**spec))


def test_a_pinned_model_revision_is_accepted(schema: dict[str, Any]) -> None:
    validate(schema, minimal(modelRevision="8ab4bb8c0b6a5dda7b29cd2e44a3c62ff6f1e2f0"))


def test_missing_model_is_refused(schema: dict[str, Any]) -> None:
    obj = minimal()
    del obj["spec"]["model"]
    with pytest.raises(jsonschema.ValidationError):
        validate(schema, obj)


def test_minimal_spec_gets_the_seeds_defaults(schema: dict[str, Any]) -> None:
    obj = apply_defaults(schema, minimal())
    validate(schema, obj)
    spec = obj["spec"]
    assert (spec["device"], spec["cards"], spec["replicas"]) == ("hpu", 1, 1)
    assert spec["generation"]["kvCache"] is True and spec["generation"]["hpuGraphs"] is True
    assert spec["benchmark"]["prompt"] == constants.BENCHMARK_PROMPT
    assert spec["benchmark"]["maxNewTokens"] == constants.BENCHMARK_MAX_NEW_TOKENS


def test_operator_defaults_equal_the_crd_defaults(schema: dict[str, Any]) -> None:
    """The operator fills in the same defaults as the API server (the emulator applies none)."""
    defaulted = apply_defaults(schema, minimal())["spec"]
    assert parse_spec(defaulted) == parse_spec(minimal()["spec"])
    gen = schema["properties"]["spec"]["properties"]["generation"]["properties"]
    assert {k: v["default"] for k, v in gen.items()} == GENERATION_DEFAULTS
    assert GenerationSpec() == GenerationSpec(
        max_input_tokens=GENERATION_DEFAULTS["maxInputTokens"],
        max_new_tokens=GENERATION_DEFAULTS["maxNewTokens"],
        max_batch_size=GENERATION_DEFAULTS["maxBatchSize"],
        max_queue_size=GENERATION_DEFAULTS["maxQueueSize"],
        batch_wait_ms=GENERATION_DEFAULTS["batchWaitMs"],
        kv_cache=GENERATION_DEFAULTS["kvCache"],
        hpu_graphs=GENERATION_DEFAULTS["hpuGraphs"],
    )
    # The runtime's own defaults (its flags and ServeOptions) are the same: a pod and a bare launcher agree.
    parsed = parse_options(["--model", "m", "--device", "cpu"], environ={})
    for key, value in asdict(GenerationSpec()).items():
        assert getattr(parsed, key) == getattr(ServeOptions, key) == value, key
    bench = schema["properties"]["spec"]["properties"]["benchmark"]["properties"]
    assert {k: v["default"] for k, v in bench.items()} == {
        "enabled": BenchmarkSpec.enabled,
        "prompt": BenchmarkSpec.prompt,
        "maxNewTokens": BenchmarkSpec.max_new_tokens,
        "warmup": BenchmarkSpec.warmup,
        "iterations": BenchmarkSpec.iterations,
        "intervalSeconds": BenchmarkSpec.interval_seconds,
    }


def test_status_schema_accepts_what_the_operator_writes(schema: dict[str, Any]) -> None:
    status_schema = to_json_schema(schema["properties"]["status"])
    status = {
        "phase": "Ready",
        "conditions": [
            {
                "type": "Ready",
                "status": "True",
                "reason": "Serving",
                "message": "1/1",
                "lastTransitionTime": "x",
            }
        ],
        "replicas": 1,
        "readyReplicas": 1,
        "endpoint": "a.b.svc:50051",
        "observedGeneration": 2,
        "templateHash": "abc",
        "latency": {
            "seconds": 0.7,
            "tokensPerSecond": 135.0,
            "firstTokenMs": 20.0,
            "perTokenMs": 7.0,
            "promptTokens": 7,
            "maxNewTokens": 100,
            "iterations": 5,
            "measuredAt": "2026-01-01T00:00:00Z",
            "templateHash": "abc",
            "pods": [{"pod": "p", "seconds": 0.7}, {"pod": "q", "error": "UNAVAILABLE: down"}],
        },
    }
    jsonschema.Draft7Validator(status_schema).validate(status)
    with pytest.raises(jsonschema.ValidationError):
        jsonschema.Draft7Validator(status_schema).validate({**status, "phase": "Happy"})
