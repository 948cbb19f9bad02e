"""The runtime as a real process (1 rank): correctness, streaming, batching, errors, cancellation,
reflection, metrics, Info and Benchmark. One server for the whole module."""

from __future__ import annotations

import concurrent.futures
import json
import time
import urllib.request
from collections.abc import Iterator
from pathlib import Path

import grpc
import pytest
from bloomz_api.proto import generate_pb2 as pb
from bloomz_api.proto import generate_pb2_grpc as pb_grpc
from bloomz_runtime.tiny import _WORDS as tiny_words
from grpc_reflection.v1alpha.proto_reflection_descriptor_database import ProtoReflectionDescriptorDatabase
from helpers import RuntimeProcess, metric, run_runtime, wait_until_idle
from helpers import greedy_request as greedy
from runtime_reference import PROMPTS, Reference

MAX_INPUT = 64
MAX_NEW = 300
# --screened-greedy: the greedy tests run through the int8 screen on every CPU, AVX-512 or not.
ARGS = ["--max-input-tokens", str(MAX_INPUT), "--max-new-tokens", str(MAX_NEW), "--max-batch-size", "8"]
ARGS.append("--screened-greedy")

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def runtime(tiny_checkpoint: Path) -> Iterator[RuntimeProcess]:
    with run_runtime(tiny_checkpoint, world_size=1, extra_args=ARGS) as rt:
        yield rt


@pytest.fixture(scope="module")
def stub(runtime: RuntimeProcess) -> Iterator[pb_grpc.TextGenerationStub]:
    with grpc.insecure_channel(runtime.target) as channel:
        yield pb_grpc.TextGenerationStub(channel)


def test_greedy_generate_equals_transformers(stub: pb_grpc.TextGenerationStub, hf_greedy: Reference) -> None:
    for prompt in PROMPTS:
        resp = stub.Generate(greedy(prompt, 24), timeout=120)
        assert list(resp.token_ids) == hf_greedy(prompt, 24), prompt
        assert resp.generated_tokens == 24
        assert resp.finish_reason == pb.FINISH_REASON_LENGTH
        assert resp.prompt == prompt
        assert resp.timings.total_ms > 0


def test_stream_yields_the_same_tokens_and_text(stub: pb_grpc.TextGenerationStub) -> None:
    prompt = PROMPTS[2]
    unary = stub.Generate(greedy(prompt, 20), timeout=120)
    messages = list(stub.GenerateStream(greedy(prompt, 20), timeout=120))
    assert [t for m in messages for t in m.token_ids] == list(unary.token_ids)
    assert "".join(m.text for m in messages) == unary.text
    assert sum(1 for m in messages if m.token_ids) == 20  # one message per token
    last = messages[-1]
    assert last.finish_reason == pb.FINISH_REASON_LENGTH and last.generated_tokens == 20
    assert last.prompt_tokens == unary.prompt_tokens
    assert all(m.finish_reason == pb.FINISH_REASON_UNSPECIFIED for m in messages[:-1])


def test_sixteen_concurrent_requests_each_get_their_solo_output(
    stub: pb_grpc.TextGenerationStub, hf_greedy: Reference
) -> None:
    # Words the tiny checkpoint's tokenizer was trained on (tiny.py), so prompts tokenize compactly.
    words = tiny_words[:13]
    jobs = []
    for i in range(16):
        prompt = " ".join(words[: 1 + i % len(words)]) + f" {i}"
        jobs.append((prompt, 6 + (i * 5) % 17))
    with concurrent.futures.ThreadPoolExecutor(16) as pool:
        futures = [pool.submit(stub.Generate, greedy(p, n), timeout=300) for p, n in jobs]
        results = [f.result() for f in futures]
    for (prompt, n), resp in zip(jobs, results, strict=True):
        assert list(resp.token_ids) == hf_greedy(prompt, n), prompt


BAD_REQUESTS = [
    (pb.GenerateRequest(prompt=""), "prompt must not be empty"),
    (pb.GenerateRequest(prompt="word " * 200), "the limit is 64"),
    (pb.GenerateRequest(prompt="x", parameters=pb.GenerationParameters(max_new_tokens=0)), "max_new_tokens"),
    (pb.GenerateRequest(prompt="x", parameters=pb.GenerationParameters(max_new_tokens=MAX_NEW + 1)), "limit"),
    (
        pb.GenerateRequest(prompt="x", parameters=pb.GenerationParameters(do_sample=True, temperature=0)),
        "temperature",
    ),
    (pb.GenerateRequest(prompt="x", parameters=pb.GenerationParameters(top_k=-2)), "top_k"),
    (pb.GenerateRequest(prompt="x", parameters=pb.GenerationParameters(top_p=1.5)), "top_p"),
    (pb.GenerateRequest(prompt="x", parameters=pb.GenerationParameters(repetition_penalty=0)), "repetition"),
    (pb.GenerateRequest(prompt="x", parameters=pb.GenerationParameters(stop=[""])), "stop"),
    (pb.GenerateRequest(prompt="x", parameters=pb.GenerationParameters(stop=["a"] * 9)), "stop"),
    (
        pb.GenerateRequest(prompt="x", parameters=pb.GenerationParameters(truncate_prompt_tokens=0)),
        "truncate",
    ),
]


@pytest.mark.parametrize(("request_", "reason"), BAD_REQUESTS)
def test_bad_input_is_invalid_argument_and_the_server_keeps_serving(
    stub: pb_grpc.TextGenerationStub, request_: pb.GenerateRequest, reason: str
) -> None:
    for call in (stub.Generate, lambda r, timeout: list(stub.GenerateStream(r, timeout=timeout))):
        with pytest.raises(grpc.RpcError) as err:
            call(request_, timeout=60)
        assert err.value.code() == grpc.StatusCode.INVALID_ARGUMENT
        assert reason in (err.value.details() or "")
    assert stub.Generate(greedy("still fine", 2), timeout=60).generated_tokens == 2


def test_stop_string_ends_the_text_before_it(stub: pb_grpc.TextGenerationStub) -> None:
    full = stub.Generate(greedy(PROMPTS[0], 30), timeout=120).text
    stop = full[len(full) // 2 : len(full) // 2 + 3]
    assert stop.strip(), full
    resp = stub.Generate(greedy(PROMPTS[0], 30, stop=[stop]), timeout=120)
    assert resp.finish_reason == pb.FINISH_REASON_STOP
    assert resp.text == full[: full.index(stop)]
    streamed = list(stub.GenerateStream(greedy(PROMPTS[0], 30, stop=[stop]), timeout=120))
    assert "".join(m.text for m in streamed) == resp.text


def test_truncate_prompt_tokens_keeps_the_first_tokens(stub: pb_grpc.TextGenerationStub) -> None:
    resp = stub.Generate(greedy(PROMPTS[3], 3, truncate_prompt_tokens=4), timeout=60)
    assert resp.prompt_tokens == 4
    assert PROMPTS[3].startswith(resp.prompt)


def test_seeded_sampling_is_reproducible(stub: pb_grpc.TextGenerationStub) -> None:
    def sample(seed: int) -> list[int]:
        r = greedy(PROMPTS[1], 16, do_sample=True, temperature=1.5, top_k=50, top_p=0.95, seed=seed)
        return list(stub.Generate(r, timeout=60).token_ids)

    assert sample(3) == sample(3)
    assert len({tuple(sample(s)) for s in range(4)}) > 1


def test_cancelled_stream_stops_generating(runtime: RuntimeProcess, stub: pb_grpc.TextGenerationStub) -> None:
    wait_until_idle(runtime)
    start = metric(runtime, "bloomz_generated_tokens_total")
    call = stub.GenerateStream(greedy(PROMPTS[0], MAX_NEW), timeout=300)
    for _ in range(3):
        next(call)
    call.cancel()
    # Once the engine has dropped the row, the token counter stops growing.
    wait_until_idle(runtime)
    before = metric(runtime, "bloomz_generated_tokens_total")
    time.sleep(1.0)
    assert metric(runtime, "bloomz_generated_tokens_total") == before
    assert before - start < MAX_NEW


def test_deadline_exceeded_stops_the_generation(
    runtime: RuntimeProcess, stub: pb_grpc.TextGenerationStub
) -> None:
    wait_until_idle(runtime)
    start = metric(runtime, "bloomz_generated_tokens_total")
    with pytest.raises(grpc.RpcError) as err:
        stub.Generate(greedy(PROMPTS[0], MAX_NEW), timeout=0.5)
    assert err.value.code() == grpc.StatusCode.DEADLINE_EXCEEDED
    wait_until_idle(runtime)
    before = metric(runtime, "bloomz_generated_tokens_total")
    time.sleep(1.0)
    assert metric(runtime, "bloomz_generated_tokens_total") == before
    assert before - start < MAX_NEW


def test_reflection_lists_the_services(runtime: RuntimeProcess) -> None:
    with grpc.insecure_channel(runtime.target) as channel:
        db = ProtoReflectionDescriptorDatabase(channel)
        services = set(db.get_services())
        assert {"bloomz.v1.TextGeneration", "grpc.health.v1.Health"} <= services
        proto_file = db.FindFileContainingSymbol("bloomz.v1.TextGeneration")
        assert proto_file.package == "bloomz.v1"
        methods = {m.name for s in proto_file.service for m in s.method}
        assert methods == {"Generate", "GenerateStream", "Info", "Benchmark"}


def test_info_describes_the_deployment(stub: pb_grpc.TextGenerationStub, tiny_checkpoint: Path) -> None:
    info = stub.Info(pb.InfoRequest(), timeout=30)
    assert info.model == str(tiny_checkpoint)
    assert (info.device, info.world_size, info.dtype, info.model_type) == ("cpu", 1, "float32", "bloom")
    assert info.limits.max_input_tokens == MAX_INPUT and info.limits.max_new_tokens == MAX_NEW
    assert info.parameters > 1_000_000 and info.kv_cache
    assert {"torch", "bloomz_runtime", "grpcio"} <= set(info.versions)
    # Greedy steps read the int8 screen (1 byte + a float32 scale per row) instead of the float32
    # lm_head, and one row of the (untied) input embedding: the bytes the roofline counts say so.
    config = json.loads((tiny_checkpoint / "config.json").read_text())
    vocab, hidden = config["vocab_size"], config["hidden_size"]
    assert info.greedy_head == "int8-screened" and not config["tie_word_embeddings"]
    matrix = vocab * hidden
    assert info.decode_weight_bytes == (info.parameters - 2 * matrix) * 4 + matrix + vocab * 4


def test_benchmark_follows_the_seed_method(stub: pb_grpc.TextGenerationStub) -> None:
    resp = stub.Benchmark(pb.BenchmarkRequest(max_new_tokens=16, warmup=1, iterations=3), timeout=300)
    assert resp.iterations == 3 and len(resp.latencies_seconds) == 3 and resp.max_new_tokens == 16
    assert resp.prompt_tokens == 11  # "DeepSpeed is a machine learning framework" in the tiny tokenizer
    assert resp.latency_seconds > 0 and resp.first_token_ms > 0 and resp.per_token_ms > 0
    assert resp.tokens_per_second == pytest.approx(16 / resp.latency_seconds)
    sorted_lat = sorted(resp.latencies_seconds)
    assert resp.latency_seconds == sorted_lat[1]  # the median
    with pytest.raises(grpc.RpcError) as err:
        stub.Benchmark(pb.BenchmarkRequest(iterations=0), timeout=30)
    assert err.value.code() == grpc.StatusCode.INVALID_ARGUMENT


def test_metrics_endpoint_exposes_the_series(
    runtime: RuntimeProcess, stub: pb_grpc.TextGenerationStub
) -> None:
    stub.Generate(greedy("count me", 2), timeout=60)
    with pytest.raises(grpc.RpcError):
        stub.Generate(pb.GenerateRequest(prompt=""), timeout=60)
    body = (
        urllib.request.urlopen(f"http://127.0.0.1:{runtime.metrics_port}/metrics", timeout=10).read().decode()
    )
    for series in (
        'bloomz_requests_total{code="OK",method="Generate",protocol="grpc"}',
        'bloomz_requests_total{code="INVALID_ARGUMENT",method="Generate",protocol="grpc"}',
        "bloomz_waiting_requests",
        "bloomz_running_requests",
        "bloomz_batch_size_bucket",
        "bloomz_time_to_first_token_seconds_bucket",
        "bloomz_time_per_output_token_seconds_bucket",
        "bloomz_generated_tokens_total",
        "bloomz_prompt_tokens_total",
        "bloomz_model_info{",
        "bloomz_greedy_rescored_tokens_bucket",
    ):
        assert series in body, series
    # Greedy requests went through the int8 screen.
    assert metric(runtime, "bloomz_greedy_rescored_tokens_count") > 0
