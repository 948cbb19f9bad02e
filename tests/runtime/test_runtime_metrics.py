"""Runtime observability with a real runtime process: every documented series scraped over HTTP and checked
by value after known traffic, and one JSON log line per finished request (`--log-format json`)."""

from __future__ import annotations

import json
import re
import urllib.request
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import grpc
import pytest
from bloomz_api.proto import generate_pb2 as pb
from bloomz_api.proto import generate_pb2_grpc as pb_grpc
from helpers import RuntimeProcess, run_runtime, wait_for
from helpers import greedy_request as greedy

pytestmark = pytest.mark.slow

DOCS = Path(__file__).resolve().parents[2] / "docs" / "runtime.md"


@pytest.fixture(scope="module")
def runtime(tiny_checkpoint: Path) -> Iterator[RuntimeProcess]:
    with run_runtime(tiny_checkpoint, extra_args=["--log-format", "json"]) as rt:
        yield rt


def scrape(rt: RuntimeProcess) -> dict[str, float]:
    body = urllib.request.urlopen(f"http://127.0.0.1:{rt.metrics_port}/metrics", timeout=10).read().decode()
    samples: dict[str, float] = {}
    for line in body.splitlines():
        if line and not line.startswith("#"):
            name, value = line.rsplit(" ", 1)
            samples[name] = float(value)
    return samples


def request_lines(rt: RuntimeProcess) -> dict[str, dict[str, Any]]:
    lines = {}
    for line in rt.log().splitlines():
        if line.startswith("{") and '"request_id"' in line:
            entry = json.loads(line)
            lines[entry["request_id"]] = entry
    return lines


def test_known_traffic_moves_every_series_by_what_it_was(runtime: RuntimeProcess) -> None:
    before = scrape(runtime)
    with grpc.insecure_channel(runtime.target) as channel:
        stub = pb_grpc.TextGenerationStub(channel)
        a = stub.Generate(greedy("DeepSpeed is", 4, "req-a"), timeout=60)
        b = stub.Generate(greedy("a machine learning framework", 3, "req-b"), timeout=60)
        streamed = list(stub.GenerateStream(greedy("hello", 2, "req-c"), timeout=60))
        with pytest.raises(grpc.RpcError):
            stub.Generate(pb.GenerateRequest(prompt="", request_id="req-bad"), timeout=60)
    idle = ("bloomz_waiting_requests", "bloomz_running_requests", "bloomz_kv_cache_slots_used")
    # the engine's next pass drops the finished rows
    wait_for("idle gauges at 0", lambda: all(scrape(runtime).get(name) == 0 for name in idle), 30, 0.1)
    after = scrape(runtime)

    def delta(name: str) -> float:
        return after.get(name, 0.0) - before.get(name, 0.0)

    grpc_ok = 'bloomz_requests_total{code="OK",method="%s",protocol="grpc"}'
    assert delta(grpc_ok % "Generate") == 2
    assert delta(grpc_ok % "GenerateStream") == 1
    assert delta('bloomz_requests_total{code="INVALID_ARGUMENT",method="Generate",protocol="grpc"}') == 1
    assert delta('bloomz_request_finished_total{finish_reason="length"}') == 3
    for histogram in (
        "bloomz_request_duration_seconds",
        "bloomz_request_queue_time_seconds",
        "bloomz_time_to_first_token_seconds",
        "bloomz_time_per_output_token_seconds",
    ):
        assert delta(f"{histogram}_count") == 3, histogram
        assert delta(f"{histogram}_sum") > 0, histogram
        assert delta(f'{histogram}_bucket{{le="+Inf"}}') == 3, histogram
    prompt_tokens = a.prompt_tokens + b.prompt_tokens + streamed[-1].prompt_tokens
    assert delta("bloomz_prompt_tokens_total") == prompt_tokens
    assert delta("bloomz_generated_tokens_total") == 4 + 3 + 2
    assert delta("bloomz_batch_size_count") >= 4  # at least one step per token of the longest request
    # Idle again: nothing waits, nothing runs, the KV cache holds nothing.
    assert after["bloomz_waiting_requests"] == after["bloomz_running_requests"] == 0
    assert after["bloomz_kv_cache_slots_used"] == 0

    lines = request_lines(runtime)
    line = lines["req-a"]
    assert (line["code"], line["protocol"], line["finish_reason"]) == ("OK", "grpc", "length")
    assert (line["prompt_tokens"], line["generated_tokens"]) == (a.prompt_tokens, 4)
    assert 0 <= line["queue_ms"] <= line["ttft_ms"] <= line["total_ms"] and line["tpot_ms"] > 0
    assert line["level"] == "INFO" and line["rank"] == 0
    assert lines["req-c"]["generated_tokens"] == 2
    assert "req-bad" not in lines  # refused before it was queued: counted, not a finished request


def test_a_cancelled_stream_ends_with_its_code_in_the_log_line(runtime: RuntimeProcess) -> None:
    before = scrape(runtime)
    with grpc.insecure_channel(runtime.target) as channel:
        stub = pb_grpc.TextGenerationStub(channel)
        call = stub.GenerateStream(greedy("DeepSpeed is", 1000, "req-gone"), timeout=60)
        next(call)  # the first token: the request runs, then its caller goes away
        call.cancel()
    wait_for("the cancelled request's log line", lambda: "req-gone" in request_lines(runtime), 30, 0.1)
    line = request_lines(runtime)["req-gone"]
    assert (line["code"], line["finish_reason"]) == ("CANCELLED", "error")
    assert 1 <= line["generated_tokens"] < 1000
    after = scrape(runtime)
    key = 'bloomz_request_finished_total{finish_reason="error"}'
    assert after.get(key, 0) - before.get(key, 0) == 1


def test_every_exported_series_is_documented(runtime: RuntimeProcess) -> None:
    names = {re.sub(r"(_bucket|_count|_sum|_created)?(\{.*)?$", "", key) for key in scrape(runtime)}
    names = {n for n in names if n.startswith("bloomz_")}
    documented = DOCS.read_text()
    missing = sorted(n for n in names if f"`{n}" not in documented)
    assert not missing, f"series not in docs/runtime.md: {missing}"
