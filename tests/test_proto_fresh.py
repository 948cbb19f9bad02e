"""The committed gRPC stubs must be exactly what `make proto` generates from the .proto."""

from __future__ import annotations

import importlib.util
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def _load_gen_proto():
    spec = importlib.util.spec_from_file_location("gen_proto", ROOT / "scripts" / "gen_proto.py")
    assert spec and spec.loader
    module = importlib.util.module_from_spec(spec)
    sys.modules["gen_proto"] = module
    spec.loader.exec_module(module)
    return module


def test_stubs_are_fresh(tmp_path: Path) -> None:
    gen_proto = _load_gen_proto()
    fresh = gen_proto.generate(tmp_path)
    assert fresh, "protoc produced nothing"
    committed_dir = ROOT / "api" / "bloomz_api" / "proto"
    for path in fresh:
        committed = committed_dir / path.name
        assert committed.exists(), f"{committed} is missing: run `make proto`"
        assert committed.read_text() == path.read_text(), f"{committed.name} is stale: run `make proto`"


def test_fixed_contract_names() -> None:
    from bloomz_api.proto import generate_pb2 as pb

    service = pb.DESCRIPTOR.services_by_name["TextGeneration"]
    assert pb.DESCRIPTOR.package == "bloomz.v1"
    assert {m.name for m in service.methods} >= {"Generate", "GenerateStream", "Info", "Benchmark"}
    fields = {
        "GenerateRequest": {"prompt", "parameters"},
        "GenerationParameters": {
            "max_new_tokens",
            "do_sample",
            "temperature",
            "top_k",
            "top_p",
            "repetition_penalty",
            "seed",
            "stop",
            "ignore_eos",
        },
        "GenerateResponse": {"text", "prompt_tokens", "generated_tokens", "finish_reason", "timings"},
        "GenerateStreamResponse": {"text", "finish_reason", "prompt_tokens", "generated_tokens"},
        "BenchmarkRequest": {"prompt", "max_new_tokens", "warmup", "iterations"},
        "BenchmarkResponse": {
            "latency_seconds",
            "tokens_per_second",
            "first_token_ms",
            "per_token_ms",
            "prompt_tokens",
            "iterations",
        },
    }
    for message, names in fields.items():
        assert names <= set(pb.DESCRIPTOR.message_types_by_name[message].fields_by_name), message
