"""The BloomzInference spec as typed values, with the CRD's defaults applied.

A real API server applies the CRD's defaults; the emulator and old objects may not, so the operator applies
the same defaults here (a test keeps them equal to the CRD's). Validation proper is the CRD schema's job.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from bloomz_api import constants as api_constants

from .constants import BENCHMARK_MAX_NEW_TOKENS, BENCHMARK_PROMPT

DEFAULT_MOUNT_PATH = "/models"


@dataclass(frozen=True)
class GenerationSpec:
    max_input_tokens: int = api_constants.MAX_INPUT_TOKENS
    max_new_tokens: int = api_constants.MAX_NEW_TOKENS
    max_batch_size: int = api_constants.MAX_BATCH_SIZE
    max_queue_size: int = api_constants.MAX_QUEUE_SIZE
    batch_wait_ms: int = api_constants.BATCH_WAIT_MS
    kv_cache: bool = api_constants.KV_CACHE
    hpu_graphs: bool = api_constants.HPU_GRAPHS


@dataclass(frozen=True)
class BenchmarkSpec:
    enabled: bool = True
    prompt: str = BENCHMARK_PROMPT
    max_new_tokens: int = BENCHMARK_MAX_NEW_TOKENS
    warmup: int = 2
    iterations: int = 5
    interval_seconds: int = 3600


@dataclass(frozen=True)
class StorageSpec:
    mount_path: str = DEFAULT_MOUNT_PATH
    pvc_claim_name: str | None = None
    pvc_sub_path: str | None = None
    pvc_read_only: bool = False
    host_path: str | None = None


@dataclass(frozen=True)
class InferenceSpec:
    model: str
    device: str = "hpu"
    # A Hub branch, tag or commit of `model` (None: the default branch).
    model_revision: str | None = None
    cards: int = 1
    # Devices one node (pod) of a replica uses; a replica with more cards is a group of pods on several nodes.
    cards_per_node: int = 8
    replicas: int = 1
    dtype: str | None = None
    image: str | None = None
    generation: GenerationSpec = field(default_factory=GenerationSpec)
    benchmark: BenchmarkSpec = field(default_factory=BenchmarkSpec)
    max_surge: int = 0
    storage: StorageSpec | None = None
    resources: Mapping[str, Mapping[str, Any]] = field(default_factory=dict)
    node_selector: Mapping[str, str] = field(default_factory=dict)
    tolerations: tuple[Mapping[str, Any], ...] = ()
    env: tuple[Mapping[str, Any], ...] = ()
    # The service face: the model id of the OpenAI-compatible API, its chat template, API keys, TLS.
    served_model_name: str | None = None
    chat_template: str | None = None
    api_key_secret: str | None = None
    tls_secret: str | None = None

    @property
    def nodes(self) -> int:
        """Pods per replica: 1 when the cards fit one node, else cards / cardsPerNode (leader + workers)."""
        return 1 if self.cards <= self.cards_per_node else self.cards // self.cards_per_node

    @property
    def multi_node(self) -> bool:
        return self.nodes > 1

    @property
    def cards_per_pod(self) -> int:
        return self.cards_per_node if self.multi_node else self.cards


DEVICES = ("hpu", "cuda", "cpu")


class SpecError(ValueError):
    """A spec the CRD schema should have refused (an API server without validation let it through)."""


def cards_per_node_message(cards: int, cards_per_node: int) -> str:
    # The same words as the CRD's validation rule, so both ways of refusing read alike.
    return (
        f"spec.cards ({cards}) must be at most spec.cardsPerNode ({cards_per_node}) or a multiple of it: "
        "a replica spans whole nodes"
    )


def _pick(data: Mapping[str, Any], key: str, default: Any) -> Any:
    value = data.get(key)
    return default if value is None else value


def parse_spec(spec: Mapping[str, Any]) -> InferenceSpec:
    """Read a resource's `spec` (a plain mapping) into an InferenceSpec, filling in the CRD's defaults.

    Raises SpecError for a spec that cannot be served (missing model, unknown device, bad counts)."""
    if not spec.get("model"):
        raise SpecError("spec.model is required")
    try:
        return _parse(spec)
    except (TypeError, ValueError, AttributeError) as error:
        if isinstance(error, SpecError):
            raise
        raise SpecError(f"invalid spec: {error}") from error


def _parse(spec: Mapping[str, Any]) -> InferenceSpec:
    gen = spec.get("generation") or {}
    gen_defaults = GenerationSpec()
    generation = GenerationSpec(
        max_input_tokens=int(_pick(gen, "maxInputTokens", gen_defaults.max_input_tokens)),
        max_new_tokens=int(_pick(gen, "maxNewTokens", gen_defaults.max_new_tokens)),
        max_batch_size=int(_pick(gen, "maxBatchSize", gen_defaults.max_batch_size)),
        max_queue_size=int(_pick(gen, "maxQueueSize", gen_defaults.max_queue_size)),
        batch_wait_ms=int(_pick(gen, "batchWaitMs", gen_defaults.batch_wait_ms)),
        kv_cache=bool(_pick(gen, "kvCache", gen_defaults.kv_cache)),
        hpu_graphs=bool(_pick(gen, "hpuGraphs", gen_defaults.hpu_graphs)),
    )
    bench = spec.get("benchmark") or {}
    bench_defaults = BenchmarkSpec()
    benchmark = BenchmarkSpec(
        enabled=bool(_pick(bench, "enabled", bench_defaults.enabled)),
        prompt=str(_pick(bench, "prompt", bench_defaults.prompt)),
        max_new_tokens=int(_pick(bench, "maxNewTokens", bench_defaults.max_new_tokens)),
        warmup=int(_pick(bench, "warmup", bench_defaults.warmup)),
        iterations=int(_pick(bench, "iterations", bench_defaults.iterations)),
        interval_seconds=int(_pick(bench, "intervalSeconds", bench_defaults.interval_seconds)),
    )
    storage: StorageSpec | None = None
    raw_storage = spec.get("storage")
    if raw_storage:
        pvc = raw_storage.get("pvc") or {}
        host = raw_storage.get("hostPath") or {}
        storage = StorageSpec(
            mount_path=str(_pick(raw_storage, "mountPath", DEFAULT_MOUNT_PATH)),
            pvc_claim_name=pvc.get("claimName"),
            pvc_sub_path=pvc.get("subPath") or None,
            pvc_read_only=bool(pvc.get("readOnly", False)),
            host_path=host.get("path"),
        )
    rollout = spec.get("rollout") or {}
    parsed = InferenceSpec(
        model=str(spec["model"]),
        device=str(_pick(spec, "device", "hpu")),
        model_revision=spec.get("modelRevision") or None,
        cards=int(_pick(spec, "cards", 1)),
        cards_per_node=int(_pick(spec, "cardsPerNode", 8)),
        replicas=int(_pick(spec, "replicas", 1)),
        dtype=spec.get("dtype") or None,
        image=spec.get("image") or None,
        generation=generation,
        benchmark=benchmark,
        max_surge=int(_pick(rollout, "maxSurge", 0)),
        storage=storage,
        resources={k: dict(v) for k, v in (spec.get("resources") or {}).items()},
        node_selector=dict(spec.get("nodeSelector") or {}),
        tolerations=tuple(dict(t) for t in spec.get("tolerations") or ()),
        env=tuple(dict(e) for e in spec.get("env") or ()),
        served_model_name=spec.get("servedModelName") or None,
        chat_template=spec.get("chatTemplate") or None,
        api_key_secret=(spec.get("auth") or {}).get("apiKeySecret") or None,
        tls_secret=(spec.get("tls") or {}).get("secretName") or None,
    )
    _check(parsed)
    return parsed


def _check(spec: InferenceSpec) -> None:
    # The few rules the operator relies on; the CRD schema holds the complete ones.
    if not spec.model:
        raise SpecError("spec.model must not be empty")
    if spec.device not in DEVICES:
        raise SpecError(f"spec.device must be one of {', '.join(DEVICES)}, got {spec.device!r}")
    if spec.cards < 1:
        raise SpecError(f"spec.cards must be >= 1, got {spec.cards}")
    if spec.cards_per_node < 1:
        raise SpecError(f"spec.cardsPerNode must be >= 1, got {spec.cards_per_node}")
    if spec.cards > spec.cards_per_node and spec.cards % spec.cards_per_node:
        raise SpecError(cards_per_node_message(spec.cards, spec.cards_per_node))
    if spec.replicas < 0:
        raise SpecError(f"spec.replicas must be >= 0, got {spec.replicas}")
    if spec.max_surge < 0:
        raise SpecError(f"spec.rollout.maxSurge must be >= 0, got {spec.max_surge}")
