"""Aggregation and formatting of the client's latency benchmark (pure parts, no server)."""

from __future__ import annotations

from collections.abc import Iterator

import pytest
from bloomz_api.client import bench
from bloomz_api.client.formatting import BENCH_HEADERS, bench_report, format_table
from bloomz_api.proto import generate_pb2


def _timing(seconds: float, first: float, generated: int = 100) -> bench.StreamTiming:
    return bench.StreamTiming(
        seconds=seconds, first_token_s=first, prompt_tokens=7, generated_tokens=generated, token_ids=(1, 2)
    )


def test_per_token_is_the_decode_time_after_the_first_token() -> None:
    assert bench.per_token_ms(_timing(2.0, 0.02, generated=100)) == pytest.approx(1980 / 99)
    assert bench.per_token_ms(_timing(0.5, 0.5, generated=1)) == 0.0


def test_client_runs_are_summarized_by_their_medians() -> None:
    runs = [_timing(1.0, 0.010), _timing(9.0, 0.500), _timing(1.2, 0.012)]  # one slow outlier
    row = bench.summarize_client_runs("bloomz-tiny", 2, runs)
    assert row.mode == "client" and row.model == "bloomz-tiny" and row.cards == 2
    assert row.latency_s == pytest.approx(1.2)
    assert row.first_token_ms == pytest.approx(12.0)
    assert row.tokens_per_second == pytest.approx(100 / 1.2)
    assert row.per_token_ms == pytest.approx((1.2 - 0.012) * 1000 / 99)
    assert (row.prompt_tokens, row.new_tokens, row.iterations) == (7, 100, 3)
    assert row.latencies_s == [1.0, 9.0, 1.2]
    assert row.token_ids == [1, 2]


def test_no_runs_is_an_error() -> None:
    with pytest.raises(ValueError):
        bench.summarize_client_runs("m", 1, [])


def test_server_row_takes_the_world_size_from_the_benchmark_or_info() -> None:
    info = generate_pb2.InfoResponse(model="bigscience/bloomz-7b1", world_size=8)
    response = generate_pb2.BenchmarkResponse(
        latency_seconds=0.737, tokens_per_second=135.7, first_token_ms=20.0, per_token_ms=7.2,
        prompt_tokens=7, iterations=5, max_new_tokens=100, latencies_seconds=[0.74, 0.73],
    )  # fmt: skip
    row = bench.row_from_server(info, response)
    assert (row.mode, row.model, row.cards, row.latency_s) == ("server", "bigscience/bloomz-7b1", 8, 0.737)
    assert (row.new_tokens, row.iterations, row.latencies_s) == (100, 5, [0.74, 0.73])
    response.world_size = 1
    assert bench.row_from_server(info, response).cards == 1


def test_ratio_is_client_over_server_and_needs_both() -> None:
    server = bench.summarize_client_runs("m", 1, [_timing(2.0, 0.1)])
    client = bench.summarize_client_runs("m", 1, [_timing(2.1, 0.1)])
    server = bench.BenchRow(**{**server.as_dict(), "mode": "server"})
    assert bench.client_to_server_ratio([server, client]) == pytest.approx(1.05)
    assert bench.client_to_server_ratio([client]) is None


def test_table_is_padded_markdown() -> None:
    table = format_table(("a", "long header"), [["1", "2"], ["333", "4"]])
    lines = table.splitlines()
    assert lines[0] == "| a   | long header |"
    assert lines[1] == "|-----|-------------|"
    assert lines[3] == "| 333 | 4           |"
    with pytest.raises(ValueError):
        format_table(("a",), [["1", "2"]])


def test_bench_report_shows_the_seeds_columns_and_the_ratio() -> None:
    row = bench.summarize_client_runs("bloomz-tiny", 2, [_timing(1.5, 0.05)])
    report = bench_report([row], 1.02)
    header = report.splitlines()[0]
    for column in BENCH_HEADERS:
        assert column in header
    assert "| client | bloomz-tiny | 2     | 1.500" in report
    assert "100 new tokens, greedy, batch 1, prompt 7 tokens, median of 1 runs" in report
    assert report.endswith("client / server latency: 1.020")


class _ScriptedStream:
    """Plays back stream messages and advances a fake clock by a fixed step per message."""

    def __init__(self, messages: list[generate_pb2.GenerateStreamResponse], step: float) -> None:
        self.messages = messages
        self.step = step
        self.now = 0.0

    def clock(self) -> float:
        return self.now

    def generate_stream(
        self, request: generate_pb2.GenerateRequest
    ) -> Iterator[generate_pb2.GenerateStreamResponse]:
        for message in self.messages:
            self.now += self.step
            yield message


def test_time_stream_takes_the_first_message_as_the_first_token() -> None:
    messages = [generate_pb2.GenerateStreamResponse(text=f"t{i}", token_ids=[10 + i]) for i in range(3)]
    messages.append(
        generate_pb2.GenerateStreamResponse(
            text="t3",
            token_ids=[13],
            finish_reason=generate_pb2.FINISH_REASON_LENGTH,
            prompt_tokens=7,
            generated_tokens=4,
        )
    )
    stream = _ScriptedStream(messages, step=0.25)
    timing = bench.time_stream(stream, generate_pb2.GenerateRequest(prompt="p"), clock=stream.clock)  # type: ignore[arg-type]
    assert timing == bench.StreamTiming(
        seconds=1.0,
        first_token_s=0.25,
        prompt_tokens=7,
        generated_tokens=4,
        token_ids=(10, 11, 12, 13),
        text="t0t1t2t3",
    )


def test_one_iteration_server_rows_merge_by_their_medians() -> None:
    info = generate_pb2.InfoResponse(model="m", world_size=1)

    def reply(latency: float, first_ms: float, per_ms: float) -> bench.BenchRow:
        response = generate_pb2.BenchmarkResponse(
            latency_seconds=latency, first_token_ms=first_ms, per_token_ms=per_ms, prompt_tokens=7,
            iterations=1, max_new_tokens=100, latencies_seconds=[latency],
        )  # fmt: skip
        return bench.row_from_server(info, response)

    row = bench.merge_server_rows(
        [reply(8.5, 120.0, 84.0), reply(30.0, 900.0, 290.0), reply(8.7, 122.0, 86.0)]
    )
    assert (row.mode, row.iterations, row.latencies_s) == ("server", 3, [8.5, 30.0, 8.7])
    assert (row.latency_s, row.first_token_ms, row.per_token_ms) == (8.7, 122.0, 86.0)
    assert row.tokens_per_second == pytest.approx(100 / 8.7)
    with pytest.raises(ValueError):
        bench.merge_server_rows([])
