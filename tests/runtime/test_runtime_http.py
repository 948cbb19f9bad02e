"""The OpenAI-compatible HTTP API of a real runtime (2 ranks under mpirun, API keys on), called with
the ``openai`` SDK and raw HTTP, next to gRPC on the same engine: same greedy text, one batch for
both protocols, the same refusals, keys on both protocols, disconnects that free their rows."""

from __future__ import annotations

import concurrent.futures
import http.client
import json
import os
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import grpc
import openai
import pytest
from bloomz_api.proto import generate_pb2 as pb
from bloomz_api.proto import generate_pb2_grpc as pb_grpc
from bloomz_runtime.tiny import _WORDS as tiny_words
from helpers import RuntimeProcess, free_port, metric, run_runtime, wait_until_idle
from runtime_reference import PROMPTS, Reference

MAX_INPUT = 64
MAX_NEW = 300
MODEL = "bloomz-tiny"
KEY = "key-one"
ARGS = [
    "--max-input-tokens", str(MAX_INPUT), "--max-new-tokens", str(MAX_NEW), "--max-batch-size", "32",
    "--served-model-name", MODEL,
]  # fmt: skip

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def key_file(tmp_path_factory: pytest.TempPathFactory) -> Path:
    path = tmp_path_factory.mktemp("keys") / "api-keys"
    path.write_text(f"# accepted keys\n{KEY}\n")
    return path


@pytest.fixture(scope="module")
def runtime(tiny_checkpoint: Path, key_file: Path) -> Iterator[RuntimeProcess]:
    args = [*ARGS, "--api-key-file", str(key_file)]
    with run_runtime(tiny_checkpoint, world_size=2, extra_args=args, http_port=free_port()) as rt:
        yield rt


@pytest.fixture(scope="module")
def client(runtime: RuntimeProcess) -> openai.OpenAI:
    return openai.OpenAI(base_url=f"http://127.0.0.1:{runtime.http_port}/v1", api_key=KEY, max_retries=0)


@pytest.fixture(scope="module")
def stub(runtime: RuntimeProcess) -> Iterator[pb_grpc.TextGenerationStub]:
    with grpc.insecure_channel(runtime.target) as channel:
        yield pb_grpc.TextGenerationStub(channel)


AUTH = (("authorization", f"Bearer {KEY}"),)


def grpc_greedy(stub: pb_grpc.TextGenerationStub, prompt: str, n: int, **kw: Any) -> pb.GenerateResponse:
    params = pb.GenerationParameters(max_new_tokens=n, ignore_eos=True, **kw)
    return stub.Generate(pb.GenerateRequest(prompt=prompt, parameters=params), timeout=300, metadata=AUTH)


def raw(
    runtime: RuntimeProcess, method: str, path: str, body: Any = None, key: str | None = KEY
) -> tuple[int, Any]:
    """(status, parsed JSON) of one plain HTTP request."""
    conn = http.client.HTTPConnection("127.0.0.1", runtime.http_port, timeout=120)
    headers = {"Content-Type": "application/json"}
    if key is not None:
        headers["Authorization"] = f"Bearer {key}"
    data = body if isinstance(body, (str, bytes)) or body is None else json.dumps(body)
    try:
        conn.request(method, path, body=data, headers=headers)
        response = conn.getresponse()
        return response.status, json.loads(response.read() or b"null")
    finally:
        conn.close()


def test_greedy_text_over_http_equals_grpc_and_transformers(
    client: openai.OpenAI, stub: pb_grpc.TextGenerationStub, hf_greedy: Reference
) -> None:
    for prompt in PROMPTS:
        over_grpc = grpc_greedy(stub, prompt, 24)
        assert list(over_grpc.token_ids) == hf_greedy(prompt, 24)
        done = client.completions.create(
            model=MODEL, prompt=prompt, max_tokens=24, temperature=0, extra_body={"ignore_eos": True}
        )
        assert done.choices[0].text == over_grpc.text, prompt
        assert done.choices[0].finish_reason == "length"
        assert done.usage is not None
        assert (done.usage.prompt_tokens, done.usage.completion_tokens) == (over_grpc.prompt_tokens, 24)
        assert done.usage.total_tokens == over_grpc.prompt_tokens + 24
        assert done.model == MODEL and done.object == "text_completion" and done.id.startswith("cmpl-")


def test_streamed_completion_is_the_same_text_with_openai_framing(client: openai.OpenAI) -> None:
    prompt = PROMPTS[2]
    whole = client.completions.create(
        model=MODEL, prompt=prompt, max_tokens=20, temperature=0, extra_body={"ignore_eos": True}
    )
    chunks = list(
        client.completions.create(
            model=MODEL, prompt=prompt, max_tokens=20, temperature=0, stream=True,
            stream_options={"include_usage": True}, extra_body={"ignore_eos": True},
        )
    )  # fmt: skip
    pieces = [c for c in chunks if c.choices]
    assert "".join(c.choices[0].text for c in pieces) == whole.choices[0].text
    assert [c.choices[0].finish_reason for c in pieces][-1] == "length"
    assert all(c.choices[0].finish_reason is None for c in pieces[:-1])
    assert len({c.id for c in chunks}) == 1
    usage = chunks[-1].usage
    assert not chunks[-1].choices and usage is not None
    assert (usage.completion_tokens, usage.prompt_tokens) == (20, whole.usage.prompt_tokens)  # type: ignore[union-attr]


def test_sse_wire_format_ends_with_done(runtime: RuntimeProcess) -> None:
    conn = http.client.HTTPConnection("127.0.0.1", runtime.http_port, timeout=120)
    body = {"model": MODEL, "prompt": "Hello", "max_tokens": 3, "temperature": 0, "stream": True}
    conn.request("POST", "/v1/completions", json.dumps(body), {"Authorization": f"Bearer {KEY}"})
    response = conn.getresponse()
    assert response.status == 200 and response.getheader("content-type", "").startswith("text/event-stream")
    events = [e for e in response.read().decode().split("\n\n") if e]
    conn.close()
    assert all(e.startswith("data: ") for e in events)
    assert events[-1] == "data: [DONE]"
    last = json.loads(events[-2][len("data: ") :])
    assert last["choices"][0]["finish_reason"] in ("length", "stop") and "usage" not in last


def test_chat_completion_uses_the_template_streamed_or_not(
    client: openai.OpenAI, stub: pb_grpc.TextGenerationStub
) -> None:
    messages: Any = [{"role": "system", "content": "Be brief."}, {"role": "user", "content": "Hello"}]
    reply = client.chat.completions.create(
        model=MODEL, messages=messages, max_tokens=12, temperature=0, extra_body={"ignore_eos": True}
    )
    # The default template, documented in docs/runtime.md.
    expected = grpc_greedy(stub, "Be brief.\n\nUser: Hello\nAssistant:", 12)
    assert reply.choices[0].message.content == expected.text
    assert reply.choices[0].message.role == "assistant" and reply.object == "chat.completion"
    assert reply.usage is not None and reply.usage.prompt_tokens == expected.prompt_tokens
    stream = client.chat.completions.create(
        model=MODEL, messages=messages, max_tokens=12, temperature=0, stream=True,
        extra_body={"ignore_eos": True},
    )  # fmt: skip
    chunks = list(stream)
    assert chunks[0].choices[0].delta.role == "assistant"
    assert "".join(c.choices[0].delta.content or "" for c in chunks) == expected.text
    assert chunks[-1].choices[0].finish_reason == "length"
    assert all(c.object == "chat.completion.chunk" for c in chunks)


def test_stop_sequences_end_the_text_before_them(
    client: openai.OpenAI, stub: pb_grpc.TextGenerationStub
) -> None:
    full = grpc_greedy(stub, PROMPTS[0], 30).text
    stop = full[len(full) // 2 : len(full) // 2 + 3]
    assert stop.strip(), full
    done = client.completions.create(
        model=MODEL, prompt=PROMPTS[0], max_tokens=30, temperature=0, stop=[stop]
    )
    assert done.choices[0].finish_reason == "stop"
    assert done.choices[0].text == full[: full.index(stop)]
    streamed = client.completions.create(
        model=MODEL, prompt=PROMPTS[0], max_tokens=30, temperature=0, stop=stop, stream=True
    )
    assert "".join(c.choices[0].text for c in streamed) == done.choices[0].text


def test_a_prompt_list_is_one_request_per_prompt(
    client: openai.OpenAI, stub: pb_grpc.TextGenerationStub
) -> None:
    done = client.completions.create(
        model=MODEL,
        prompt=PROMPTS[:2],
        max_tokens=5,
        temperature=0,
        echo=True,
        extra_body={"ignore_eos": True},
    )
    assert [c.index for c in done.choices] == [0, 1]
    for prompt, choice in zip(PROMPTS[:2], done.choices, strict=True):
        assert choice.text == prompt + grpc_greedy(stub, prompt, 5).text


def test_models_lists_the_served_name(client: openai.OpenAI) -> None:
    assert [m.id for m in client.models.list()] == [MODEL]


def test_seeded_sampling_is_reproducible_over_http(client: openai.OpenAI) -> None:
    def sample(seed: int) -> str:
        done = client.completions.create(
            model=MODEL, prompt=PROMPTS[1], max_tokens=16, temperature=1.5, top_p=0.95, seed=seed,
            extra_body={"top_k": 50, "ignore_eos": True},
        )  # fmt: skip
        return done.choices[0].text

    assert sample(3) == sample(3)
    assert len({sample(s) for s in range(4)}) > 1


# Parameters the SDK takes as arguments; our extensions travel in extra_body.
SDK_FIELDS = {"prompt", "max_tokens", "temperature", "top_p", "stop", "n", "logprobs", "seed"}
BAD_BODIES = [
    ({"prompt": ""}, "prompt must not be empty"),
    ({"prompt": "word " * 200}, "the limit is 64"),
    ({"prompt": "x", "max_tokens": 0}, "max_new_tokens must be > 0"),
    ({"prompt": "x", "max_tokens": MAX_NEW + 1}, "exceeds the server limit"),
    ({"prompt": "x", "temperature": -1}, "temperature"),
    ({"prompt": "x", "top_p": 1.5}, "top_p"),
    ({"prompt": "x", "top_k": -2}, "top_k"),
    ({"prompt": "x", "repetition_penalty": 0}, "repetition_penalty"),
    ({"prompt": "x", "stop": [""]}, "stop strings must not be empty"),
    ({"prompt": "x", "stop": ["a"] * 9}, "at most 8 stop strings"),
    ({"prompt": "x", "n": 2}, "n must be 1"),
    ({"prompt": "x", "logprobs": 1}, "logprobs"),
    ({"prompt": 5}, "prompt"),
    ({}, "prompt: Field required"),
    ("{not json", "not valid JSON"),
]


@pytest.mark.parametrize(("body", "reason"), BAD_BODIES)
def test_bad_input_is_400_in_the_openai_shape_and_the_server_keeps_serving(
    runtime: RuntimeProcess, client: openai.OpenAI, body: Any, reason: str
) -> None:
    if isinstance(body, dict) and isinstance(body.get("prompt"), str):
        sdk = {k: v for k, v in body.items() if k in SDK_FIELDS}
        extra = {k: v for k, v in body.items() if k not in SDK_FIELDS}
        for stream in (False, True):
            with pytest.raises(openai.BadRequestError) as err:
                client.completions.create(model=MODEL, stream=stream, extra_body=extra, **sdk)  # type: ignore[call-overload]
            assert reason in err.value.message
    status, payload = raw(
        runtime, "POST", "/v1/completions", body if isinstance(body, str) else {"model": MODEL, **body}
    )
    assert status == 400
    assert set(payload["error"]) == {"message", "type", "param", "code"}
    assert payload["error"]["type"] == "invalid_request_error" and reason in payload["error"]["message"]
    assert (
        client.completions.create(model=MODEL, prompt="still fine", max_tokens=2).usage.completion_tokens == 2
    )  # type: ignore[union-attr]


def test_bad_chat_input_is_400(client: openai.OpenAI) -> None:
    with pytest.raises(openai.BadRequestError, match="messages must not be empty"):
        client.chat.completions.create(model=MODEL, messages=[])
    with pytest.raises(openai.BadRequestError, match="role"):
        client.chat.completions.create(model=MODEL, messages=[{"role": "robot", "content": "x"}])  # type: ignore[list-item,misc]


def test_unknown_model_is_404(runtime: RuntimeProcess, client: openai.OpenAI) -> None:
    with pytest.raises(openai.NotFoundError) as err:
        client.completions.create(model="gpt-4", prompt="x", max_tokens=2)
    assert err.value.code == "model_not_found"
    with pytest.raises(openai.NotFoundError):
        client.chat.completions.create(model="gpt-4", messages=[{"role": "user", "content": "x"}])
    assert raw(runtime, "GET", "/v1/nothing-here")[0] == 404


def test_keys_are_required_on_both_protocols_and_health_stays_open(
    runtime: RuntimeProcess, stub: pb_grpc.TextGenerationStub
) -> None:
    base = f"http://127.0.0.1:{runtime.http_port}/v1"
    wrong = openai.OpenAI(base_url=base, api_key="wrong", max_retries=0)
    with pytest.raises(openai.AuthenticationError) as err:
        wrong.completions.create(model=MODEL, prompt="x", max_tokens=2)
    assert err.value.code == "invalid_api_key"
    status, body = raw(runtime, "POST", "/v1/completions", {"prompt": "x"}, key=None)
    assert status == 401 and "missing API key" in body["error"]["message"]
    assert raw(runtime, "GET", "/v1/models", key=None)[0] == 401
    assert raw(runtime, "GET", "/health", key=None) == (200, {"status": "serving"})
    request = pb.GenerateRequest(prompt="x", parameters=pb.GenerationParameters(max_new_tokens=2))
    for metadata in ((), (("authorization", "Bearer wrong"),), (("authorization", KEY),)):
        with pytest.raises(grpc.RpcError) as rpc_err:
            stub.Generate(request, timeout=60, metadata=metadata)
        assert rpc_err.value.code() == grpc.StatusCode.UNAUTHENTICATED
        with pytest.raises(grpc.RpcError) as rpc_err:
            list(stub.GenerateStream(request, timeout=60, metadata=metadata))
        assert rpc_err.value.code() == grpc.StatusCode.UNAUTHENTICATED
    assert stub.Generate(request, timeout=60, metadata=AUTH).generated_tokens == 2
    assert metric(runtime, "bloomz_requests_total", method="Generate", code="UNAUTHENTICATED") >= 3


def test_a_rotated_key_file_takes_effect_without_restart(
    runtime: RuntimeProcess, key_file: Path, stub: pb_grpc.TextGenerationStub
) -> None:
    request = pb.GenerateRequest(prompt="x", parameters=pb.GenerationParameters(max_new_tokens=2))
    fresh = key_file.with_name("api-keys.new")
    fresh.write_text(f"{KEY}\nkey-two\n")
    os.replace(fresh, key_file)
    assert raw(runtime, "GET", "/v1/models", key="key-two")[0] == 200
    assert (
        stub.Generate(request, timeout=60, metadata=(("authorization", "Bearer key-two"),)).generated_tokens
        == 2
    )
    fresh.write_text(f"{KEY}\n")
    os.replace(fresh, key_file)
    assert raw(runtime, "GET", "/v1/models", key="key-two")[0] == 401


def test_sixteen_http_and_sixteen_grpc_clients_share_batches(
    runtime: RuntimeProcess, client: openai.OpenAI, stub: pb_grpc.TextGenerationStub, hf_greedy: Reference
) -> None:
    words = tiny_words[:13]
    jobs = [(" ".join(words[: 1 + i % len(words)]) + f" {i}", 20 + (i * 5) % 17) for i in range(32)]
    wait_until_idle(runtime)
    big_before = metric(runtime, "bloomz_batch_size_count") - metric(
        runtime, "bloomz_batch_size_bucket", le="16.0"
    )
    start = threading.Barrier(32)

    def over_http(prompt: str, n: int) -> str:
        start.wait()
        done = client.completions.create(
            model=MODEL, prompt=prompt, max_tokens=n, temperature=0, extra_body={"ignore_eos": True}
        )
        return done.choices[0].text

    def over_grpc(prompt: str, n: int) -> str:
        start.wait()
        resp = grpc_greedy(stub, prompt, n)
        assert list(resp.token_ids) == hf_greedy(prompt, n), prompt
        return str(resp.text)

    with concurrent.futures.ThreadPoolExecutor(32) as pool:
        futures = [pool.submit(over_http if i % 2 else over_grpc, p, n) for i, (p, n) in enumerate(jobs)]
        texts = [f.result() for f in futures]
    # Every HTTP text equals the gRPC text of the same job run alone (so: transformers' output).
    for i, ((prompt, n), text) in enumerate(zip(jobs, texts, strict=True)):
        if i % 2:
            assert text == grpc_greedy(stub, prompt, n).text, prompt
    # Steps of more than 16 rows: neither protocol's 16 requests alone could have made one.
    big_after = metric(runtime, "bloomz_batch_size_count") - metric(
        runtime, "bloomz_batch_size_bucket", le="16.0"
    )
    assert big_after > big_before


def test_a_disconnected_client_frees_its_row(runtime: RuntimeProcess, client: openai.OpenAI) -> None:
    for stream in (True, False):
        wait_until_idle(runtime)
        start = metric(runtime, "bloomz_generated_tokens_total")
        if stream:
            chunks = client.completions.create(
                model=MODEL, prompt=PROMPTS[0], max_tokens=MAX_NEW, temperature=0, stream=True,
                extra_body={"ignore_eos": True},
            )  # fmt: skip
            for _ in range(3):
                next(iter(chunks))
            chunks.close()
        else:
            with pytest.raises(openai.APITimeoutError):
                client.with_options(timeout=0.5).completions.create(
                    model=MODEL, prompt=PROMPTS[0], max_tokens=MAX_NEW, temperature=0,
                    extra_body={"ignore_eos": True},
                )  # fmt: skip
        # Once the engine has dropped the row, the token counter stops growing.
        wait_until_idle(runtime)
        before = metric(runtime, "bloomz_generated_tokens_total")
        time.sleep(1.0)
        assert metric(runtime, "bloomz_generated_tokens_total") == before
        assert before - start < MAX_NEW, stream


def test_http_requests_are_counted_by_route_and_status(runtime: RuntimeProcess) -> None:
    assert metric(runtime, "bloomz_http_requests_total", route="/v1/completions", status="200") > 0
    assert metric(runtime, "bloomz_http_requests_total", route="/v1/completions", status="400") > 0
    assert metric(runtime, "bloomz_http_requests_total", route="/v1/models", status="401") > 0
