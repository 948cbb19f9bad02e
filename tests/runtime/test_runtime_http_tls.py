"""TLS on both protocols with a CA made here, back-pressure (429), loading and draining (503) over
HTTPS: one runtime (1 rank) with TLS, API keys, a batch of 1 and a queue of 1."""

from __future__ import annotations

import datetime
import http.client
import io
import ipaddress
import json
import signal
import ssl
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import grpc
import openai
import pytest
from bloomz_api.proto import generate_pb2 as pb
from bloomz_api.proto import generate_pb2_grpc as pb_grpc
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID
from helpers import RuntimeProcess, free_port, metric, run_runtime
from runtime_reference import PROMPTS

KEY = "tls-key"
MODEL = "tiny-tls"
MAX_NEW = 400

pytestmark = pytest.mark.slow


def _name(cn: str) -> x509.Name:
    return x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, cn)])


def make_ca_and_server_cert(out: Path) -> tuple[Path, Path, Path]:
    """(ca.crt, tls.crt, tls.key) like a cert-manager Secret, for 127.0.0.1 and localhost."""
    now = datetime.datetime.now(datetime.timezone.utc)
    start, end = now - datetime.timedelta(minutes=5), now + datetime.timedelta(days=1)
    ca_key = ec.generate_private_key(ec.SECP256R1())
    ca = (
        x509.CertificateBuilder().subject_name(_name("test CA")).issuer_name(_name("test CA"))
        .public_key(ca_key.public_key()).serial_number(x509.random_serial_number())
        .not_valid_before(start).not_valid_after(end)
        .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
        .sign(ca_key, hashes.SHA256())
    )  # fmt: skip
    key = ec.generate_private_key(ec.SECP256R1())
    san = x509.SubjectAlternativeName(
        [x509.DNSName("localhost"), x509.IPAddress(ipaddress.ip_address("127.0.0.1"))]
    )
    cert = (
        x509.CertificateBuilder().subject_name(_name("bloomz")).issuer_name(ca.subject)
        .public_key(key.public_key()).serial_number(x509.random_serial_number())
        .not_valid_before(start).not_valid_after(end)
        .add_extension(san, critical=False)
        .sign(ca_key, hashes.SHA256())
    )  # fmt: skip
    paths = out / "ca.crt", out / "tls.crt", out / "tls.key"
    paths[0].write_bytes(ca.public_bytes(serialization.Encoding.PEM))
    paths[1].write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    paths[2].write_bytes(
        key.private_bytes(
            serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
        )
    )
    return paths


@pytest.fixture(scope="module")
def certs(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path, Path]:
    return make_ca_and_server_cert(tmp_path_factory.mktemp("tls"))


def https(port: int, ca: Path, method: str, path: str, body: Any = None) -> tuple[int, Any]:
    conn = http.client.HTTPSConnection(
        "127.0.0.1", port, timeout=30, context=ssl.create_default_context(cafile=str(ca))
    )
    try:
        conn.request(method, path, json.dumps(body) if body is not None else None,
                     {"Authorization": f"Bearer {KEY}", "Content-Type": "application/json"})  # fmt: skip
        response = conn.getresponse()
        return response.status, json.loads(response.read() or b"null")
    finally:
        conn.close()


# What the runtime answered while it was loading (filled by the start-up poll below).
LOADING: list[tuple[str, int, Any]] = []


@pytest.fixture(scope="module")
def runtime(tiny_checkpoint: Path, certs: tuple[Path, Path, Path]) -> Iterator[RuntimeProcess]:
    ca, cert, key = certs
    keys = cert.parent / "keys"
    keys.write_text(KEY + "\n")
    args = [
        "--tls-cert-file", str(cert), "--tls-key-file", str(key), "--api-key-file", str(keys),
        "--served-model-name", MODEL, "--max-batch-size", "1", "--max-queue-size", "1",
        "--max-new-tokens", str(MAX_NEW),
    ]  # fmt: skip

    def wait_serving_over_https(rt: RuntimeProcess) -> None:
        deadline = time.monotonic() + 300
        while time.monotonic() < deadline:
            if rt.process.poll() is not None:
                raise RuntimeError(f"runtime exited with {rt.process.returncode}")
            try:
                status, body = https(rt.http_port, ca, "GET", "/health")
                if status == 200:
                    return
                LOADING.append(("health", status, body))
                answer = https(rt.http_port, ca, "POST", "/v1/completions", {"prompt": "x", "max_tokens": 2})
                LOADING.append(("completions", *answer))
            except OSError:
                pass
            time.sleep(0.05)
        raise TimeoutError("not serving over HTTPS")

    with run_runtime(
        tiny_checkpoint, extra_args=args, http_port=free_port(), health_target=wait_serving_over_https
    ) as rt:
        yield rt


def tls_client(rt: RuntimeProcess, ca: Path | None) -> openai.OpenAI:
    verify: Any = ssl.create_default_context(cafile=str(ca)) if ca else True
    return openai.OpenAI(
        base_url=f"https://127.0.0.1:{rt.http_port}/v1", api_key=KEY, max_retries=0,
        http_client=openai.DefaultHttpx2Client(verify=verify),
    )  # fmt: skip


def test_loading_is_503_on_health_and_on_requests(runtime: RuntimeProcess) -> None:
    assert LOADING, "the runtime answered HTTPS only once it was serving"
    refused = [body["error"]["message"] for what, status, body in LOADING if what == "completions"]
    assert all(status == 503 for _, status, _ in LOADING), LOADING
    assert "model is still loading" in refused
    assert set(refused) <= {"model is still loading", "model is warming up"}


def test_both_protocols_serve_tls_verified_by_the_ca(
    runtime: RuntimeProcess, certs: tuple[Path, Path, Path]
) -> None:
    ca = certs[0]
    done = tls_client(runtime, ca).completions.create(
        model=MODEL, prompt=PROMPTS[0], max_tokens=4, temperature=0
    )
    credentials = grpc.ssl_channel_credentials(root_certificates=ca.read_bytes())
    with grpc.secure_channel(runtime.target, credentials) as channel:
        stub = pb_grpc.TextGenerationStub(channel)
        request = pb.GenerateRequest(prompt=PROMPTS[0], parameters=pb.GenerationParameters(max_new_tokens=4))
        resp = stub.Generate(request, timeout=60, metadata=(("authorization", f"Bearer {KEY}"),))
        assert resp.text == done.choices[0].text
        with pytest.raises(grpc.RpcError) as err:
            stub.Generate(request, timeout=60, metadata=(("authorization", "Bearer nope"),))
        assert err.value.code() == grpc.StatusCode.UNAUTHENTICATED
    # Without the CA the certificate is not trusted; plaintext is not served at all.
    with pytest.raises(openai.APIConnectionError):
        tls_client(runtime, None).models.list()
    with grpc.insecure_channel(runtime.target) as channel, pytest.raises(grpc.RpcError) as err:
        pb_grpc.TextGenerationStub(channel).Generate(request, timeout=10)
    assert err.value.code() == grpc.StatusCode.UNAVAILABLE


def test_a_full_queue_is_429_and_the_server_keeps_serving(
    runtime: RuntimeProcess, certs: tuple[Path, Path, Path]
) -> None:
    client = tls_client(runtime, certs[0])
    body: Any = {"model": MODEL, "prompt": PROMPTS[0], "max_tokens": MAX_NEW, "temperature": 0,
                 "stream": True, "extra_body": {"ignore_eos": True}}  # fmt: skip
    running = client.completions.create(**body)
    next(iter(running))  # it holds the only batch slot
    waiting = client.completions.create(**body)
    deadline = time.monotonic() + 60
    while metric(runtime, "bloomz_waiting_requests") < 1:
        assert time.monotonic() < deadline
        time.sleep(0.05)
    with pytest.raises(openai.RateLimitError, match="queue is full"):
        client.completions.create(model=MODEL, prompt="x", max_tokens=2)
    running.close()
    waiting.close()
    # Both rows are dropped once the engine sees their clients gone.
    while metric(runtime, "bloomz_waiting_requests") + metric(runtime, "bloomz_running_requests") > 0:
        assert time.monotonic() < deadline + 60
        time.sleep(0.05)
    assert client.completions.create(model=MODEL, prompt="x", max_tokens=2).usage.completion_tokens == 2  # type: ignore[union-attr]


def test_client_cli_with_key_and_ca(runtime: RuntimeProcess, certs: tuple[Path, Path, Path]) -> None:
    from bloomz_api.client.cli import main

    base = ["--target", runtime.target, "--ca-cert", str(certs[0]), "--json"]
    out, err = io.StringIO(), io.StringIO()
    assert main([*base, "--api-key", KEY, "generate", "Hello", "--max-new-tokens", "3"], out, err) == 0
    assert json.loads(out.getvalue())["generated_tokens"] == 3
    out, err = io.StringIO(), io.StringIO()
    assert main([*base, "--api-key", "nope", "info"], out, err) == 1
    assert "UNAUTHENTICATED" in err.getvalue()


def test_draining_is_503_while_in_flight_work_finishes(
    runtime: RuntimeProcess, certs: tuple[Path, Path, Path]
) -> None:
    # Last in this module: it stops the runtime.
    client = tls_client(runtime, certs[0])
    stream = client.completions.create(
        model=MODEL,
        prompt=PROMPTS[0],
        max_tokens=60,
        temperature=0,
        stream=True,
        extra_body={"ignore_eos": True},
    )
    chunks = iter(stream)
    first = next(chunks)
    runtime.process.send_signal(signal.SIGTERM)
    deadline = time.monotonic() + 60
    while True:
        assert time.monotonic() < deadline, "never refused new work while draining"
        try:
            status, _ = https(runtime.http_port, certs[0], "GET", "/health")
        except OSError:
            continue
        if status == 503:
            break
    with pytest.raises(openai.InternalServerError) as err:
        client.completions.create(model=MODEL, prompt="x", max_tokens=2)
    assert err.value.status_code == 503 and "draining" in err.value.message
    rest = list(chunks)
    assert rest[-1].choices[0].finish_reason == "length"
    assert len([first, *rest]) >= 2
    assert runtime.process.wait(timeout=60) == 0
