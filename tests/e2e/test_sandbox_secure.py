"""A shared service end to end in the sandbox: one BloomzInference with API keys (`spec.auth.apiKeySecret`)
and TLS (`spec.tls.secretName`, a kubernetes.io/tls Secret with ca.crt made here) reaches Ready with a
latency the operator measured over TLS with its own key; then the openai SDK over HTTPS and the client
over gRPC with TLS answer with a user's key, and a wrong key is refused on both.
"""

from __future__ import annotations

import base64
import ipaddress
import json
import shutil
import ssl
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import openai
import pytest
from bloomz_api.client.connection import RpcFailure, TextGenerationClient
from bloomz_api.client.requests import greedy_request
from bloomz_sandbox.stack import Sandbox, SandboxOptions
from helpers import make_ca_and_server_cert

pytestmark = pytest.mark.slow

NAME = "bloomz-secure"
NAMESPACE = "default"
KEY = "user-key-1"
MODEL_ON_NODE = Path("node/var/lib/bloomz/models/bloomz-tiny")  # the example's hostPath, under the workdir
PROMPT = "DeepSpeed is a machine learning framework"
WAIT_S = 420.0  # generous: 2 shared cores, other test suites running at the same time
# The sandbox gives each pod a loopback address from 127.0.0.2 on: the certificate names them all,
# as a cluster's would name the Service (which the operator's latency client verifies).
POD_ADDRESSES = [str(ipaddress.IPv4Address("127.0.0.2") + offset) for offset in range(250)]


def _b64(data: bytes) -> str:
    return base64.b64encode(data).decode()


def manifests(ca: Path, cert: Path, key: Path) -> list[dict[str, Any]]:
    tls = {
        "apiVersion": "v1", "kind": "Secret", "type": "kubernetes.io/tls",
        "metadata": {"name": f"{NAME}-tls"},
        "data": {"tls.crt": _b64(cert.read_bytes()), "tls.key": _b64(key.read_bytes()),
                 "ca.crt": _b64(ca.read_bytes())},
    }  # fmt: skip
    keys = {"apiVersion": "v1", "kind": "Secret", "type": "Opaque", "metadata": {"name": f"{NAME}-keys"},
            "data": {"team-a": _b64(KEY.encode())}}  # fmt: skip
    inference = {
        "apiVersion": "inference.bloomz.dev/v1alpha1", "kind": "BloomzInference",
        "metadata": {"name": NAME},
        "spec": {
            "model": "/models/bloomz-tiny", "device": "cpu", "cards": 1, "replicas": 1, "dtype": "float32",
            "generation": {"maxInputTokens": 256, "maxNewTokens": 64, "maxBatchSize": 4},
            "benchmark": {"enabled": True, "maxNewTokens": 8, "warmup": 1, "iterations": 2},
            "storage": {"hostPath": {"path": "/var/lib/bloomz/models"}, "mountPath": "/models"},
            "auth": {"apiKeySecret": f"{NAME}-keys"},
            "tls": {"secretName": f"{NAME}-tls"},
        },
    }  # fmt: skip
    return [tls, keys, inference]


@pytest.fixture(scope="module")
def certs(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path, Path]:
    names = [f"{NAME}.{NAMESPACE}.svc", f"{NAME}.{NAMESPACE}.svc.cluster.local"]
    return make_ca_and_server_cert(tmp_path_factory.mktemp("tls"), names, POD_ADDRESSES)


@pytest.fixture(scope="module")
def sandbox(tmp_path_factory: pytest.TempPathFactory, tiny_checkpoint: Path) -> Iterator[Sandbox]:
    workdir = tmp_path_factory.mktemp("sandbox-secure")
    shutil.copytree(tiny_checkpoint, workdir / MODEL_ON_NODE)
    stack = Sandbox(SandboxOptions(workdir=workdir, backoff_max_seconds=5.0))
    stack.start()
    try:
        yield stack
    finally:
        stack.stop()


def ready_with_latency(sandbox: Sandbox) -> dict[str, Any] | None:
    resource = sandbox.get_resource(NAME) or {}
    status = resource.get("status") or {}
    ready = any(c["type"] == "Ready" and c["status"] == "True" for c in status.get("conditions") or [])
    return resource if ready and (status.get("latency") or {}).get("seconds") else None


@pytest.fixture(scope="module")
def pod_ip(sandbox: Sandbox, certs: tuple[Path, Path, Path], tmp_path_factory: pytest.TempPathFactory) -> str:
    path = tmp_path_factory.mktemp("manifests") / "secure.json"
    path.write_text(json.dumps({"apiVersion": "v1", "kind": "List", "items": manifests(*certs)}))
    sandbox.kubectl("apply", "--validate=false", "-f", str(path))
    sandbox.wait_for("Ready with a latency measured over TLS", lambda: ready_with_latency(sandbox), WAIT_S)
    (address,) = sandbox.service_endpoints(NAME)
    return address


def test_ready_with_a_latency_the_operator_measured_over_tls_with_its_own_key(
    sandbox: Sandbox, pod_ip: str
) -> None:
    resource = sandbox.get_resource(NAME) or {}
    status = resource["status"]
    assert status["latency"]["seconds"] > 0 and status["latency"]["tokensPerSecond"] > 0
    assert status["endpoints"]["http"] == f"https://{NAME}.{NAMESPACE}.svc:8000/v1"
    (pod,) = [p for p in sandbox.list_pods(instance=NAME) if not p["metadata"].get("deletionTimestamp")]
    probe = pod["spec"]["containers"][0]["readinessProbe"]["httpGet"]
    assert (probe["path"], probe["scheme"]) == ("/health", "HTTPS")
    # The operator's benchmark key is its own Secret, not the user's.
    own = json.loads(sandbox.kubectl("get", "secret", f"{NAME}-api-key", "-o", "json").stdout)
    assert base64.b64decode(next(iter(own["data"].values()))).decode() != KEY


def _openai(pod_ip: str, ca: Path, key: str) -> openai.OpenAI:
    verified = openai.DefaultHttpxClient(verify=ssl.create_default_context(cafile=str(ca)), timeout=120)
    return openai.OpenAI(
        base_url=f"https://{pod_ip}:8000/v1", api_key=key, http_client=verified, max_retries=0
    )


def test_openai_sdk_over_https_with_a_key_and_grpc_over_tls_agree(
    pod_ip: str, certs: tuple[Path, Path, Path]
) -> None:
    ca = certs[0]
    client = _openai(pod_ip, ca, KEY)
    (model,) = [m.id for m in client.models.list().data]
    completion = client.completions.create(
        model=model, prompt=PROMPT, max_tokens=8, temperature=0, extra_body={"ignore_eos": True}
    )
    assert completion.usage is not None and completion.usage.completion_tokens == 8
    with TextGenerationClient(
        f"{pod_ip}:50051", timeout=120, api_key=KEY, ca_cert=ca.read_bytes()
    ) as grpc_client:
        answer = grpc_client.generate(greedy_request(PROMPT, 8, ignore_eos=True))
    assert answer.generated_tokens == 8
    assert completion.choices[0].text == answer.text  # the same greedy continuation on both protocols


def test_a_wrong_key_is_refused_on_both_protocols(pod_ip: str, certs: tuple[Path, Path, Path]) -> None:
    ca = certs[0]
    with pytest.raises(openai.AuthenticationError):
        _openai(pod_ip, ca, "not-a-key").completions.create(model="any", prompt=PROMPT, max_tokens=2)
    for key in ("not-a-key", None):
        with (
            TextGenerationClient(
                f"{pod_ip}:50051", timeout=60, api_key=key, ca_cert=ca.read_bytes()
            ) as client,
            pytest.raises(RpcFailure) as refused,
        ):
            client.generate(greedy_request(PROMPT, 2))
        assert refused.value.code.name == "UNAUTHENTICATED"
    # Health stays open, over TLS only.
    with TextGenerationClient(f"{pod_ip}:50051", timeout=60, ca_cert=ca.read_bytes()) as client:
        assert client.health() == "SERVING"
