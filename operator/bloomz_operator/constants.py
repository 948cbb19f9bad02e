"""Names shared by the CRD, the builders and the handlers; ports and the benchmark's method come from the
gRPC contract's package (bloomz_api.constants), re-exported here for the operator's modules."""

from __future__ import annotations

from bloomz_api.constants import (
    BENCHMARK_MAX_NEW_TOKENS,
    BENCHMARK_PROMPT,
    GRPC_PORT,
    HTTP_PORT,
    METRICS_PORT,
    SERVICE_NAME,
)

__all__ = [
    "BENCHMARK_MAX_NEW_TOKENS",
    "BENCHMARK_PROMPT",
    "GRPC_PORT",
    "HTTP_PORT",
    "METRICS_PORT",
    "SERVICE_NAME",
]

GROUP = "inference.bloomz.dev"
VERSION = "v1alpha1"
PLURAL = "bloomzinferences"
KIND = "BloomzInference"
API_VERSION = f"{GROUP}/{VERSION}"

# Labels and annotations on the children.
LABEL_NAME = "app.kubernetes.io/name"
LABEL_INSTANCE = "app.kubernetes.io/instance"
LABEL_MANAGED_BY = "app.kubernetes.io/managed-by"
LABEL_OWNER = f"{GROUP}/name"
LABEL_TEMPLATE_HASH = f"{GROUP}/template-hash"
LABEL_REPLICA_INDEX = f"{GROUP}/replica-index"
# Multi-node replicas (a group of pods per replica): the pod's place in its group.
LABEL_ROLE = f"{GROUP}/role"
LABEL_GROUP_MEMBER = f"{GROUP}/group-member"
ROLE_LEADER = "leader"
ROLE_WORKER = "worker"
RUNTIME_APP_NAME = "bloomz-runtime"
MANAGER_NAME = "bloomz-operator"

# `inference.bloomz.dev/benchmark: now` on the resource asks for a fresh latency measurement.
BENCHMARK_ANNOTATION = f"{GROUP}/benchmark"
BENCHMARK_NOW = "now"

CONTAINER_NAME = "runtime"
GRPC_PORT_NAME = "grpc"
# The OpenAI-compatible HTTP API beside gRPC (its port comes from bloomz_api.constants).
HTTP_PORT_NAME = "http"
METRICS_PORT_NAME = "metrics"
HEALTH_SERVICE = SERVICE_NAME
# Workers of a multi-node group run sshd here (not 22: never the port of a node's own sshd).
SSH_PORT = 2222
SSH_PORT_NAME = "ssh"
