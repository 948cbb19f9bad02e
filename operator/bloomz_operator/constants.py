"""Names shared by the CRD, the builders and the handlers (contract 4 of the design)."""

from __future__ import annotations

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
GRPC_PORT = 50051
GRPC_PORT_NAME = "grpc"
# The OpenAI-compatible HTTP API beside gRPC.
HTTP_PORT = 8000
HTTP_PORT_NAME = "http"
METRICS_PORT = 9090
METRICS_PORT_NAME = "metrics"
HEALTH_SERVICE = "bloomz.v1.TextGeneration"
# Workers of a multi-node group run sshd here (not 22: never the port of a node's own sshd).
SSH_PORT = 2222
SSH_PORT_NAME = "ssh"

# What the seed measured: greedy, batch 1, 100 new tokens on this prompt.
SEED_PROMPT = "DeepSpeed is a machine learning framework"
SEED_MAX_NEW_TOKENS = 100
