"""Facts the runtime, the operator and clients share: ports, the service name, the benchmark's method."""

from __future__ import annotations

GRPC_PORT = 50051
HTTP_PORT = 8000  # the OpenAI-compatible HTTP API
METRICS_PORT = 9090
# The gRPC service; grpc.health.v1 reports its serving status under this name too.
SERVICE_NAME = "bloomz.v1.TextGeneration"

# How the BLOOMZ-on-Gaudi2 latency figures were measured: batch 1, greedy search, 100 new tokens on this
# prompt (7 tokens with the BLOOM tokenizer). Benchmark requests that leave them empty get these.
BENCHMARK_PROMPT = "DeepSpeed is a machine learning framework"
BENCHMARK_MAX_NEW_TOKENS = 100
