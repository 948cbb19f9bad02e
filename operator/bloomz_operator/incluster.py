"""In-cluster credentials: the pod's service-account token, CA and ``KUBERNETES_SERVICE_HOST/PORT``.

The token folder is the standard ``/var/run/secrets/kubernetes.io/serviceaccount`` unless
``BLOOMZ_SERVICE_ACCOUNT_DIR`` names another one: the local sandbox runs pods as processes and mounts
each pod's token in a folder of its own. The server is ``https://$KUBERNETES_SERVICE_HOST:$PORT``, as
the ``kubernetes`` client's in-cluster loader builds it (Kopf's own service-account login assumes
``kubernetes.default.svc`` resolves, which only cluster DNS guarantees).
"""

from __future__ import annotations

import os
from pathlib import Path

import kubernetes

SERVICE_ACCOUNT_DIR = "/var/run/secrets/kubernetes.io/serviceaccount"
DIR_ENV = "BLOOMZ_SERVICE_ACCOUNT_DIR"


def in_cluster() -> bool:
    """In a pod and not told to use a kubeconfig."""
    return bool(os.environ.get("KUBERNETES_SERVICE_HOST")) and not os.environ.get("KUBECONFIG")


def service_account_dir() -> Path:
    return Path(os.environ.get(DIR_ENV) or SERVICE_ACCOUNT_DIR)


def server_url() -> str:
    host = os.environ["KUBERNETES_SERVICE_HOST"]
    port = os.environ.get("KUBERNETES_SERVICE_PORT") or "443"
    return f"https://[{host}]:{port}" if ":" in host else f"https://{host}:{port}"


def read_file(name: str) -> str | None:
    path = service_account_dir() / name
    return path.read_text(encoding="utf-8").strip() if path.is_file() else None


def load_client_configuration(configuration: kubernetes.client.Configuration) -> None:
    """The ``kubernetes`` client's in-cluster configuration, from ``service_account_dir()``."""
    from kubernetes.config.incluster_config import InClusterConfigLoader

    folder = service_account_dir()
    InClusterConfigLoader(
        token_filename=str(folder / "token"), cert_filename=str(folder / "ca.crt")
    ).load_and_set(configuration)
