"""`client bench` and `client dataset` over HTTP against a real runtime (2 ranks under mpirun, API
keys and TLS on both protocols): the same greedy text as over gRPC, refusals as clear exits."""

from __future__ import annotations

import io
import json
import ssl
import time
import urllib.request
from collections.abc import Iterator
from pathlib import Path

import pytest
from bloomz_api.client import cli
from helpers import RuntimeProcess, free_port, make_ca_and_server_cert, run_runtime

pytestmark = pytest.mark.slow

KEY = "client-key"
PROMPT = "DeepSpeed is a machine learning framework"


@pytest.fixture(scope="module")
def certs(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path, Path]:
    return make_ca_and_server_cert(tmp_path_factory.mktemp("tls"))


@pytest.fixture(scope="module")
def runtime(tiny_checkpoint: Path, certs: tuple[Path, Path, Path]) -> Iterator[RuntimeProcess]:
    ca, cert, key = certs
    keys = cert.parent / "keys"
    keys.write_text(KEY + "\n")
    args = [
        "--tls-cert-file", str(cert), "--tls-key-file", str(key), "--api-key-file", str(keys),
        "--max-new-tokens", "64",
    ]  # fmt: skip
    context = ssl.create_default_context(cafile=str(ca))

    def serving_over_https(rt: RuntimeProcess) -> None:
        deadline = time.monotonic() + 300
        while time.monotonic() < deadline:
            if rt.process.poll() is not None:
                raise RuntimeError(f"runtime exited with {rt.process.returncode}")
            try:
                url = f"https://127.0.0.1:{rt.http_port}/health"
                with urllib.request.urlopen(url, timeout=5, context=context) as answer:
                    if answer.status == 200:
                        return
            except OSError:
                pass
            time.sleep(0.2)
        raise TimeoutError("not serving over HTTPS")

    http_port = free_port()
    with run_runtime(
        tiny_checkpoint, world_size=2, extra_args=args, http_port=http_port, health_target=serving_over_https
    ) as rt:
        yield rt


def run_cli(*argv: str) -> tuple[int, str, str]:
    out, err = io.StringIO(), io.StringIO()
    code = cli.main(list(argv), out=out, err=err)
    return code, out.getvalue(), err.getvalue()


def over(protocol: str, runtime: RuntimeProcess, ca: Path, key: str = KEY) -> tuple[str, ...]:
    target = runtime.target if protocol == "grpc" else f"127.0.0.1:{runtime.http_port}"
    return ("--protocol", protocol, "--target", target, "--ca-cert", str(ca), "--api-key", key)


def test_bench_over_http_streams_the_same_greedy_text_as_grpc(
    runtime: RuntimeProcess, certs: tuple[Path, Path, Path], tokenizer, hf_greedy
) -> None:
    ca = certs[0]
    measure = ("--prompt", PROMPT, "--max-new-tokens", "12", "--warmup", "1", "--iterations", "2", "--json")
    code, out, err = run_cli(*over("http", runtime, ca), "bench", *measure)
    assert code == 0, err
    (http_row,) = json.loads(out)["rows"]
    code, out, err = run_cli(*over("grpc", runtime, ca), "bench", "--mode", "client", *measure)
    assert code == 0, err
    (grpc_row,) = json.loads(out)["rows"]
    expected = hf_greedy(PROMPT, 12)
    assert grpc_row["token_ids"] == expected
    assert http_row["text"] == grpc_row["text"] == tokenizer.decode(expected)
    assert http_row["mode"] == "client-http" and http_row["model"] == grpc_row["model"]
    assert (http_row["new_tokens"], http_row["prompt_tokens"]) == (12, grpc_row["prompt_tokens"])
    assert http_row["iterations"] == 2 and len(http_row["latencies_s"]) == 2
    assert 0 < http_row["first_token_ms"] < http_row["latency_s"] * 1000 and http_row["per_token_ms"] > 0

    code, out, _ = run_cli(*over("http", runtime, ca), "bench", *measure[:-1])
    table = out.splitlines()
    assert code == 0 and table[2].split("|")[1].strip() == "client-http"
    assert table[2].split("|")[3].strip() == "-"  # the cards are not known over HTTP


def test_dataset_over_http_prints_what_grpc_prints(
    runtime: RuntimeProcess, certs: tuple[Path, Path, Path]
) -> None:
    ca = certs[0]
    args = ("dataset", "--limit", "5", "--batch-size", "2", "--input-tokens", "6", "--max-new-tokens", "4",
            "--no-progress", "--json")  # fmt: skip
    records = {}
    for protocol in ("grpc", "http"):
        code, out, err = run_cli(*over(protocol, runtime, ca), *args)
        assert code == 0, err
        records[protocol] = [json.loads(line) for line in out.splitlines()]
    batches = {p: [(r["batch"], r["inputs"], r["outputs"]) for r in rs[:-1]] for p, rs in records.items()}
    assert batches["http"] == batches["grpc"]
    assert [number for number, _, _ in batches["http"]] == [1, 2, 3]
    summary = records["http"][-1]["summary"]
    assert (summary["samples"], summary["generated_tokens"]) == (5, 20)


def test_refusals_over_http_exit_1_with_the_reason(
    runtime: RuntimeProcess, certs: tuple[Path, Path, Path]
) -> None:
    ca = certs[0]
    code, out, err = run_cli(*over("http", runtime, ca, key="wrong"), "bench", "--warmup", "0")
    assert (code, out) == (cli.EXIT_RPC_ERROR, "")
    assert err.startswith("error: GET /v1/models failed: HTTP 401: ") and "key" in err
    code, _, err = run_cli(*over("grpc", runtime, ca, key="wrong"), "bench", "--warmup", "0")
    assert code == cli.EXIT_RPC_ERROR and "UNAUTHENTICATED" in err
    # Over the server's --max-new-tokens 64: the shared validator's reason, as a 400.
    code, _, err = run_cli(*over("http", runtime, ca), "dataset", "--limit", "2", "--max-new-tokens", "65",
                           "--no-progress")  # fmt: skip
    assert code == cli.EXIT_RPC_ERROR
    assert err.startswith("error: POST /v1/completions failed: HTTP 400: ") and "65" in err
    # Without the CA, the server's certificate is not trusted: a clear exit, not a traceback.
    target = f"https://127.0.0.1:{runtime.http_port}"
    code, _, err = run_cli("--protocol", "http", "--target", target, "--api-key", KEY, "bench")
    assert code == cli.EXIT_RPC_ERROR and "CERTIFICATE_VERIFY_FAILED" in err
    # The server kept serving.
    code, out, err = run_cli(*over("http", runtime, ca), "bench", "--warmup", "0", "--iterations", "1",
                             "--max-new-tokens", "2")  # fmt: skip
    assert code == 0, err
