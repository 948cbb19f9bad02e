"""The client's HTTP side without a server: addresses, SSE parsing and timing, error bodies, the
dataset reply, and which options --protocol http accepts."""

from __future__ import annotations

import json
from collections.abc import Iterator

import pytest
from bloomz_api.client import cli
from bloomz_api.client.dataset import http_batch_result
from bloomz_api.client.openai_http import (
    Endpoint,
    HttpFailure,
    error_message,
    greedy_body,
    parse_target,
    sse_payloads,
    time_sse,
)


@pytest.mark.parametrize(
    ("target", "tls", "expected"),
    [
        ("localhost:8000", False, Endpoint("localhost", 8000, False)),
        ("10.0.0.9", False, Endpoint("10.0.0.9", 8000, False)),
        ("10.0.0.9:9443", True, Endpoint("10.0.0.9", 9443, True)),
        ("https://svc.ns:8443", False, Endpoint("svc.ns", 8443, True)),
        ("http://svc.ns", False, Endpoint("svc.ns", 8000, False)),
    ],
)
def test_targets_are_host_port_or_urls(target: str, tls: bool, expected: Endpoint) -> None:
    assert parse_target(target, tls, 8000) == expected


def test_a_target_that_is_no_http_address_is_refused() -> None:
    with pytest.raises(ValueError, match="not an HTTP address"):
        parse_target("grpc://host:1", False, 8000)


def test_error_messages_come_from_the_openai_body_else_the_raw_text() -> None:
    body = {"error": {"message": "invalid api key", "type": "authentication_error", "param": None}}
    assert error_message(401, json.dumps(body).encode()) == "invalid api key"
    assert error_message(502, b"<html>bad gateway</html>") == "<html>bad gateway</html>"
    assert error_message(503, b"") == "Service Unavailable"


def _sse(*payloads: object) -> list[bytes]:
    lines: list[bytes] = [b": keep-alive\n", b"\n"]
    for payload in payloads:
        data = payload if isinstance(payload, str) else json.dumps(payload)
        lines += [f"data: {data}\n".encode(), b"\n"]
    return lines


def test_sse_payloads_stop_at_done_and_skip_comments() -> None:
    lines = _sse({"a": 1}, {"b": 2}, "[DONE]", {"after": 3})
    assert list(sse_payloads(lines)) == [{"a": 1}, {"b": 2}]


class _Arrivals:
    """Payloads arriving 0.25 s apart on a fake clock."""

    def __init__(self, payloads: list[dict[str, object]]) -> None:
        self.payloads = payloads
        self.now = 0.0

    def clock(self) -> float:
        return self.now

    def __iter__(self) -> Iterator[dict[str, object]]:
        for payload in self.payloads:
            self.now += 0.25
            yield payload


def _chunk(text: str, finish: str | None = None) -> dict[str, object]:
    return {"choices": [{"index": 0, "text": text, "finish_reason": finish}], "usage": None}


def test_time_sse_takes_the_first_text_chunk_and_the_usage_counts() -> None:
    usage = {"choices": [], "usage": {"prompt_tokens": 7, "completion_tokens": 4, "total_tokens": 11}}
    # An empty first chunk (an echo of nothing, a role delta) is not a token.
    arrivals = _Arrivals([_chunk(""), _chunk("a"), _chunk("b"), _chunk("c"), _chunk("d", "length"), usage])
    timing = time_sse(arrivals, start=0.0, clock=arrivals.clock)
    assert (timing.first_token_s, timing.seconds) == (0.5, 1.5)
    assert (timing.prompt_tokens, timing.generated_tokens, timing.text) == (7, 4, "abcd")


def test_time_sse_raises_a_mid_stream_error() -> None:
    error = {"error": {"message": "queue full", "type": "rate_limit_error"}}
    with pytest.raises(HttpFailure, match="queue full"):
        time_sse(iter([_chunk("a"), error]), start=0.0)


def test_greedy_body_is_temperature_zero_with_extensions() -> None:
    body = greedy_body("m", ["x", "y"], 5, truncate_prompt_tokens=3)
    assert body == {"model": "m", "prompt": ["x", "y"], "max_tokens": 5, "temperature": 0,
                    "truncate_prompt_tokens": 3}  # fmt: skip


def test_dataset_batch_from_a_completion_reply_keeps_prompt_order() -> None:
    reply = {
        "choices": [
            {"index": 1, "text": " two", "prompt": "B", "finish_reason": "length"},
            {"index": 0, "text": " one", "prompt": "A", "finish_reason": "length"},
        ],
        "usage": {"prompt_tokens": 2, "completion_tokens": 6, "total_tokens": 8},
    }
    result = http_batch_result(3, reply, 1.5)
    assert (result.number, result.inputs, result.outputs) == (3, ["A", "B"], ["A one", "B two"])
    assert (result.generated_tokens, result.seconds) == (6, 1.5)


def test_protocol_http_changes_the_defaults() -> None:
    args = cli.parse_args(["--protocol", "http", "bench"])
    assert (args.target, args.mode) == (cli.DEFAULT_HTTP_TARGET, "client")
    args = cli.parse_args(["bench", "--protocol", "http", "--target", "https://h:1"])
    assert (args.protocol, args.target) == ("http", "https://h:1")
    assert cli.parse_args(["bench"]).mode == "both"


@pytest.mark.parametrize(
    ("argv", "problem"),
    [
        (["--protocol", "http", "generate", "x"], "generate speaks gRPC only"),
        (["--protocol", "http", "health"], "health speaks gRPC only"),
        (["--protocol", "http", "bench", "--mode", "server"], "--mode client"),
        (["--protocol", "http", "bench", "--mode", "both"], "--mode client"),
    ],
)
def test_what_http_cannot_do_is_a_usage_error(argv: list[str], problem: str) -> None:
    import io

    err = io.StringIO()
    assert cli.main(argv, out=io.StringIO(), err=err) == cli.EXIT_USAGE
    assert problem in err.getvalue()
    assert cli.usage_problem(cli.parse_args(["--protocol", "http", "dataset"])) is None


def test_an_unreachable_http_server_exits_1_with_the_address() -> None:
    import io

    from helpers import free_port

    err = io.StringIO()
    argv = ["--protocol", "http", "--target", f"127.0.0.1:{free_port()}", "bench", "--warmup", "0"]
    assert cli.main(argv, out=io.StringIO(), err=err) == cli.EXIT_RPC_ERROR
    assert "GET /v1/models failed: no answer: cannot reach 127.0.0.1:" in err.getvalue()


def test_a_keep_alive_connection_the_server_dropped_is_retried_once() -> None:
    """uvicorn closes idle keep-alive connections after 5 s: the next call must reconnect, not fail."""
    import http.server
    import threading

    from bloomz_api.client.openai_http import OpenAIHttpClient

    served: list[str] = []

    class OneAnswerPerConnection(http.server.BaseHTTPRequestHandler):
        protocol_version = "HTTP/1.1"  # keep-alive as far as the client knows

        def do_GET(self) -> None:
            served.append(self.path)
            body = json.dumps({"object": "list", "data": [{"id": f"m{len(served)}"}]}).encode()
            self.send_response(200)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)
            self.close_connection = True  # then drop it, without saying so

        def log_message(self, *args: object) -> None:
            pass

    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), OneAnswerPerConnection)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    try:
        with OpenAIHttpClient(f"127.0.0.1:{server.server_address[1]}", timeout=10) as client:
            assert [client.model() for _ in range(3)] == ["m1", "m2", "m3"]
    finally:
        server.shutdown()
        server.server_close()
    assert served == ["/v1/models"] * 3
