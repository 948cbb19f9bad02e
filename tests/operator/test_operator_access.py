"""Auth, TLS, served model name and chat template: spec -> launcher flags, pod volumes, probes,
the operator's own key Secret, status endpoints, and the latency client's credentials (pure)."""

from __future__ import annotations

import base64
from typing import Any

from bloomz_operator.access import API_KEYS_DIR, api_key_secret_name, service_endpoints
from bloomz_operator.apikeys import build_api_key_secret, generate_api_key, secret_value
from bloomz_operator.builders import Owner
from bloomz_operator.groups import build_replicas, current_template_hash
from bloomz_operator.handlers import latency_access
from bloomz_operator.latency import Access
from bloomz_operator.settings import Settings
from bloomz_operator.spec import parse_spec
from cluster_fakes import build_pods

OWNER = Owner(name="svc", namespace="team", uid="uid-9")
SPEC: dict[str, Any] = {
    "model": "bigscience/bloomz-560m",
    "device": "cpu",
    "servedModelName": "bloomz",
    "chatTemplate": "{% for m in messages %}{{ m.content }}{% endfor %}",
    "auth": {"apiKeySecret": "team-keys"},
    "tls": {"secretName": "svc-tls"},
}


def _container(pod: dict[str, Any]) -> dict[str, Any]:
    (c,) = pod["spec"]["containers"]
    return c


def test_service_flags_follow_the_spec() -> None:
    (pod,) = build_pods(OWNER, parse_spec(SPEC), Settings())
    args = _container(pod)["args"]
    assert args[args.index("--http-port") + 1] == "8000"
    assert args[args.index("--served-model-name") + 1] == "bloomz"
    assert args[args.index("--chat-template") + 1] == SPEC["chatTemplate"]
    assert args[args.index("--api-key-file") + 1] == API_KEYS_DIR
    assert args[args.index("--tls-cert-file") + 1] == "/etc/bloomz/tls/tls.crt"
    assert args[args.index("--tls-key-file") + 1] == "/etc/bloomz/tls/tls.key"
    (plain,) = build_pods(OWNER, parse_spec({"model": "m", "device": "cpu"}), Settings())
    assert not {"--api-key-file", "--tls-cert-file", "--served-model-name"} & set(_container(plain)["args"])


def test_keys_of_users_and_operator_are_projected_into_one_directory() -> None:
    (pod,) = build_pods(OWNER, parse_spec(SPEC), Settings())
    volumes = {v["name"]: v for v in pod["spec"]["volumes"]}
    sources = volumes["api-keys"]["projected"]["sources"]
    assert sources[0] == {"secret": {"name": "team-keys"}}
    assert sources[1]["secret"]["name"] == api_key_secret_name("svc") == "svc-api-key"
    assert volumes["tls"] == {"name": "tls", "secret": {"secretName": "svc-tls"}}
    mounts = {m["name"]: m for m in _container(pod)["volumeMounts"]}
    assert mounts["api-keys"]["readOnly"] and mounts["tls"]["mountPath"] == "/etc/bloomz/tls"
    leader = build_replicas(OWNER, parse_spec({**SPEC, "cards": 4, "cardsPerNode": 2}), Settings())[0][0]
    leader_sources = {v["name"]: v for v in leader["spec"]["volumes"]}["api-keys"]["projected"]["sources"]
    assert leader_sources[1]["secret"]["name"] == "svc-api-key"


def test_template_hash_does_not_depend_on_the_owner_but_on_the_access_spec() -> None:
    spec = parse_spec(SPEC)
    (pod,) = build_pods(OWNER, spec, Settings())
    assert pod["metadata"]["labels"]["inference.bloomz.dev/template-hash"] == current_template_hash(
        spec, Settings()
    )
    assert current_template_hash(spec, Settings()) != current_template_hash(
        parse_spec({**SPEC, "tls": None}), Settings()
    )


def test_with_tls_the_probes_ask_https_health() -> None:
    (pod,) = build_pods(OWNER, parse_spec(SPEC), Settings())
    c = _container(pod)
    for probe in ("startupProbe", "readinessProbe", "livenessProbe"):
        assert c[probe]["httpGet"] == {"path": "/health", "port": "http", "scheme": "HTTPS"}
        assert "grpc" not in c[probe]
    (plain,) = build_pods(OWNER, parse_spec({"model": "m", "device": "cpu"}), Settings())
    assert "grpc" in _container(plain)["readinessProbe"]


def test_operator_key_secret_is_owned_and_decodes() -> None:
    key = generate_api_key()
    assert key != generate_api_key() and len(key) > 40
    secret = build_api_key_secret(OWNER, key)
    assert secret["metadata"]["name"] == "svc-api-key"
    assert secret["metadata"]["ownerReferences"][0]["uid"] == "uid-9"
    assert secret_value(secret, "bloomz-operator") == key
    assert secret_value(None, "bloomz-operator") is None


def test_status_endpoints_name_both_protocols() -> None:
    assert service_endpoints("svc", "team", parse_spec(SPEC)) == {
        "grpc": "svc.team.svc:50051",
        "http": "https://svc.team.svc:8000/v1",
    }
    assert service_endpoints("svc", "team")["http"] == "http://svc.team.svc:8000/v1"


class _Secrets:
    def __init__(self, secrets: dict[str, dict[str, str]]) -> None:
        self.secrets = secrets

    def read_secret(self, namespace: str, name: str) -> dict[str, Any] | None:
        data = self.secrets.get(name)
        if data is None:
            return None
        return {"data": {k: base64.b64encode(v.encode()).decode() for k, v in data.items()}}


def test_latency_client_sends_the_operator_key_and_trusts_the_ca() -> None:
    api: Any = _Secrets({"svc-api-key": {"bloomz-operator": "op-key"}, "svc-tls": {"ca.crt": "PEM"}})
    access = latency_access(api, OWNER, parse_spec(SPEC))
    assert access == Access(api_key="op-key", tls=True, ca_pem=b"PEM", server_name="svc.team.svc")
    assert access.metadata() == (("authorization", "Bearer op-key"),)
    no_ca: Any = _Secrets({"svc-api-key": {"bloomz-operator": "k"}, "svc-tls": {"tls.crt": "x"}})
    assert latency_access(no_ca, OWNER, parse_spec(SPEC)).ca_pem is None  # the system's roots
    assert latency_access(api, OWNER, parse_spec({"model": "m"})) == Access()
