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

# Generation limits and switches when a resource or the launcher says nothing: the CRD's spec.generation
# defaults, the operator's GenerationSpec and the runtime's flags all take them from here (a test compares
# the CRD with these).
MAX_INPUT_TOKENS = 2048
MAX_NEW_TOKENS = 1024
MAX_BATCH_SIZE = 8
MAX_QUEUE_SIZE = 64
BATCH_WAIT_MS = 5
KV_CACHE = True
HPU_GRAPHS = True
# The same, by the CRD's field names (spec.generation).
GENERATION_DEFAULTS = {
    "maxInputTokens": MAX_INPUT_TOKENS,
    "maxNewTokens": MAX_NEW_TOKENS,
    "maxBatchSize": MAX_BATCH_SIZE,
    "maxQueueSize": MAX_QUEUE_SIZE,
    "batchWaitMs": BATCH_WAIT_MS,
    "kvCache": KV_CACHE,
    "hpuGraphs": HPU_GRAPHS,
}
