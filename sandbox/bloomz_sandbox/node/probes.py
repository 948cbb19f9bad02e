"""Readiness checks of a pod's container, as the sandbox runs them against the pod's loopback IP.

`readiness_probe` (pure) reads the container's readinessProbe: grpc -> the standard
grpc.health.v1 check (the runtime's health service), tcpSocket -> a connect, httpGet -> a GET
answering 2xx/3xx (scheme HTTPS: over TLS, the certificate not verified, as a kubelet does);
no probe (or exec) -> ready while running, as a kubelet does.
Liveness and startup probes are not enforced by the sandbox.
"""

from __future__ import annotations

import socket
import ssl
import urllib.error
import urllib.request
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any, Literal

import grpc
from grpc_health.v1 import health_pb2, health_pb2_grpc

ProbeKind = Literal["grpc", "tcp", "http", "none"]


@dataclass(frozen=True)
class ReadinessProbe:
    kind: ProbeKind
    port: int = 0
    service: str = ""  # grpc service name, or http path
    scheme: str = "http"  # httpGet's scheme, lower case


def _port(value: Any, container: Mapping[str, Any]) -> int:
    if isinstance(value, int) or (isinstance(value, str) and value.isdigit()):
        return int(value)
    for port in container.get("ports") or []:
        if port.get("name") == value:
            return int(port["containerPort"])
    raise ValueError(f"container port {value!r} is not declared")


def readiness_probe(container: Mapping[str, Any]) -> ReadinessProbe:
    probe = container.get("readinessProbe") or {}
    if probe.get("grpc"):
        return ReadinessProbe("grpc", int(probe["grpc"]["port"]), probe["grpc"].get("service") or "")
    if probe.get("tcpSocket"):
        return ReadinessProbe("tcp", _port(probe["tcpSocket"]["port"], container))
    if probe.get("httpGet"):
        get = probe["httpGet"]
        scheme = str(get.get("scheme") or "HTTP").lower()
        return ReadinessProbe("http", _port(get["port"], container), get.get("path") or "/", scheme)
    return ReadinessProbe("none")


def check(probe: ReadinessProbe, address: str, timeout: float = 1.0) -> bool:
    """Run the probe once against the pod's address; any failure is "not ready"."""
    if probe.kind == "none":
        return True
    if probe.kind == "tcp":
        with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as connection:
            connection.settimeout(timeout)
            return connection.connect_ex((address, probe.port)) == 0
    if probe.kind == "http":
        context = ssl._create_unverified_context() if probe.scheme == "https" else None
        try:
            with urllib.request.urlopen(
                f"{probe.scheme}://{address}:{probe.port}{probe.service}", timeout=timeout, context=context
            ) as answer:
                return 200 <= answer.status < 400
        except (urllib.error.URLError, OSError):
            return False
    with grpc.insecure_channel(f"{address}:{probe.port}") as channel:
        try:
            answer = health_pb2_grpc.HealthStub(channel).Check(
                health_pb2.HealthCheckRequest(service=probe.service), timeout=timeout
            )
        except grpc.RpcError:
            return False
        return bool(answer.status == health_pb2.HealthCheckResponse.SERVING)
