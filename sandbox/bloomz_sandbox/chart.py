"""The operator installed the way a platform team installs it: ``helm install`` of charts/bloomz-operator.

The sandbox's Deployment controller turns the chart's Deployment into a pod, and the pod runner runs it
as a local process (the image's entrypoint, ``python3 -m bloomz_operator``) with the chart's service
account token: the operator talks to the API server in-cluster, with exactly the chart's RBAC.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

RELEASE = "bloomz-operator"
NAMESPACE = "bloomz-system"


def find_helm(repository: Path) -> str:
    bundled = repository / ".tools" / "bin" / "helm"
    if bundled.is_file():
        return str(bundled)
    found = shutil.which("helm")
    if found:
        return found
    raise FileNotFoundError("helm not found: run `make setup` (it installs .tools/bin/helm)")


def value_arguments(values: Mapping[str, str]) -> list[str]:
    """``--set key=value`` for each value."""
    arguments: list[str] = []
    for key, value in values.items():
        arguments += ["--set", f"{key}={value}"]
    return arguments


@dataclass
class ChartRelease:
    """One Helm release of the operator's chart in the sandbox (helm runs with its own cache folders)."""

    helm: str
    chart: Path
    kubeconfig: Path
    workdir: Path
    release: str = RELEASE
    namespace: str = NAMESPACE

    def run(self, *args: str, timeout: float = 120) -> str:
        env = {
            **os.environ,
            "KUBECONFIG": str(self.kubeconfig),
            "HELM_CACHE_HOME": str(self.workdir / "helm" / "cache"),
            "HELM_CONFIG_HOME": str(self.workdir / "helm" / "config"),
            "HELM_DATA_HOME": str(self.workdir / "helm" / "data"),
        }
        done = subprocess.run(
            [self.helm, *args], env=env, capture_output=True, text=True, timeout=timeout, check=False
        )
        if done.returncode != 0:
            raise RuntimeError(f"helm {' '.join(args)} failed ({done.returncode}): {done.stderr.strip()}")
        return done.stdout

    def install(self, values: Mapping[str, str] = {}, extra: Sequence[str] = ()) -> None:
        self.run(
            "upgrade", "--install", self.release, str(self.chart), "-n", self.namespace, "--create-namespace",
            *value_arguments(values), *extra,
        )  # fmt: skip

    def uninstall(self) -> None:
        self.run("uninstall", self.release, "-n", self.namespace, "--ignore-not-found")

    def status(self) -> dict[str, Any]:
        return dict(json.loads(self.run("status", self.release, "-n", self.namespace, "-o", "json")))


def operator_pod_state(pods: Sequence[Mapping[str, Any]]) -> tuple[str, bool]:
    """(name, ready) of the newest operator pod not being deleted; ("", False) when there is none."""
    live = [p for p in pods if not (p.get("metadata") or {}).get("deletionTimestamp")]
    if not live:
        return "", False
    newest = max(live, key=lambda p: (p.get("metadata") or {}).get("creationTimestamp", ""))
    conditions = (newest.get("status") or {}).get("conditions") or []
    ready = any(c.get("type") == "Ready" and c.get("status") == "True" for c in conditions)
    return str(newest["metadata"]["name"]), ready
