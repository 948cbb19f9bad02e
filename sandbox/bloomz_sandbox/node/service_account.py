"""The service-account token a kubelet mounts into each pod, for a pod that runs as a local process.

A real kubelet projects ``token``, ``namespace`` and ``ca.crt`` at
``/var/run/secrets/kubernetes.io/serviceaccount`` and the pod finds the API server through
``KUBERNETES_SERVICE_HOST/PORT``. Here the folder is per pod (``<pod dir>/serviceaccount``) and
``BLOOMZ_SERVICE_ACCOUNT_DIR`` tells in-cluster clients (the operator's) where it is. Pure functions
except ``write_token_files``.
"""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path
from typing import Any

from bloomz_operator.incluster import DIR_ENV, SERVICE_ACCOUNT_DIR

__all__ = ["DIR_ENV", "SERVICE_ACCOUNT_DIR", "account_to_mount", "in_cluster_env", "token_files"]
DEFAULT_ACCOUNT = "default"


def account_to_mount(pod: Mapping[str, Any]) -> str | None:
    """The service account whose token the pod gets; None when the pod opts out."""
    spec = pod.get("spec") or {}
    if spec.get("automountServiceAccountToken") is False:
        return None
    return spec.get("serviceAccountName") or spec.get("serviceAccount") or DEFAULT_ACCOUNT


def token_files(token: str, namespace: str, ca_pem: str) -> dict[str, str]:
    # No trailing newline: the kubernetes client's in-cluster loader sends the file as it is.
    return {"token": token, "namespace": namespace, "ca.crt": ca_pem}


def in_cluster_env(host: str, port: int, folder: Path) -> dict[str, str]:
    return {
        "KUBERNETES_SERVICE_HOST": host,
        "KUBERNETES_SERVICE_PORT": str(port),
        "KUBERNETES_SERVICE_PORT_HTTPS": str(port),
        DIR_ENV: str(folder),
    }


def write_token_files(folder: Path, files: Mapping[str, str]) -> None:
    folder.mkdir(parents=True, exist_ok=True)
    for name, content in files.items():
        path = folder / name
        path.write_text(content, encoding="utf-8")
        path.chmod(0o600 if name == "token" else 0o644)
