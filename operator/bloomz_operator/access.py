"""How clients reach a runtime: HTTP port, served model id, chat template, API keys and TLS (pure).

The launcher's service flags, the pod volumes that carry the Secrets, and the endpoints for status.
"""

from __future__ import annotations

from typing import Any

from .constants import GRPC_PORT, HTTP_PORT
from .spec import InferenceSpec

# API keys: the users' Secret and the operator's own benchmark key, projected into one directory
# (the runtime reads every file in it); TLS: the kubernetes.io/tls Secret.
API_KEYS_VOLUME = "api-keys"
API_KEYS_DIR = "/etc/bloomz/api-keys"
OPERATOR_KEY_ITEM = "bloomz-operator"
TLS_VOLUME = "tls"
TLS_DIR = "/etc/bloomz/tls"


def api_key_secret_name(owner_name: str) -> str:
    """The operator's own Secret with the key its Benchmark calls send when auth is on."""
    return f"{owner_name[:240].rstrip('-')}-api-key"


def service_options(spec: InferenceSpec) -> dict[str, Any]:
    """The launcher's service options (ServeOptions fields): HTTP port, model id, chat template, API keys,
    TLS; the paths are where service_volumes mounts the Secrets."""
    tls = bool(spec.tls_secret)
    return {
        "http_port": HTTP_PORT,
        "served_model_name": spec.served_model_name or None,
        "chat_template": spec.chat_template or None,
        "api_key_file": API_KEYS_DIR if spec.api_key_secret else None,
        "tls_cert_file": f"{TLS_DIR}/tls.crt" if tls else None,
        "tls_key_file": f"{TLS_DIR}/tls.key" if tls else None,
    }


def service_volumes(spec: InferenceSpec) -> tuple[list[dict[str, Any]], list[dict[str, Any]]]:
    """Volumes and mounts for API keys and TLS (none when the spec asks for neither). The operator's
    key Secret is named per owner by ``fill_owner_secrets``, after the template hash is taken."""
    volumes: list[dict[str, Any]] = []
    mounts: list[dict[str, Any]] = []
    if spec.api_key_secret:
        operator_key = {"name": "", "items": [{"key": OPERATOR_KEY_ITEM, "path": OPERATOR_KEY_ITEM}]}
        sources = [{"secret": {"name": spec.api_key_secret}}, {"secret": operator_key}]
        volumes.append({"name": API_KEYS_VOLUME, "projected": {"sources": sources}})
        mounts.append({"name": API_KEYS_VOLUME, "mountPath": API_KEYS_DIR, "readOnly": True})
    if spec.tls_secret:
        volumes.append({"name": TLS_VOLUME, "secret": {"secretName": spec.tls_secret}})
        mounts.append({"name": TLS_VOLUME, "mountPath": TLS_DIR, "readOnly": True})
    return volumes, mounts


def fill_owner_secrets(pod_spec: dict[str, Any], owner_name: str) -> None:
    """Name the operator's API key Secret in a pod's projected key volume (in place)."""
    for volume in pod_spec.get("volumes", ()):
        if volume["name"] == API_KEYS_VOLUME:
            for source in volume["projected"]["sources"]:
                if source["secret"]["name"] == "":
                    source["secret"]["name"] = api_key_secret_name(owner_name)


def service_host(name: str, namespace: str) -> str:
    """The Service's DNS name (what a TLS certificate for the service names)."""
    return f"{name}.{namespace}.svc"


def service_endpoints(name: str, namespace: str, spec: InferenceSpec | None = None) -> dict[str, str]:
    """status.endpoints: the gRPC host:port and the OpenAI-compatible base URL."""
    host = service_host(name, namespace)
    scheme = "https" if spec is not None and spec.tls_secret else "http"
    return {"grpc": f"{host}:{GRPC_PORT}", "http": f"{scheme}://{host}:{HTTP_PORT}/v1"}
