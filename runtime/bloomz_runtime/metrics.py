"""Prometheus series of the runtime, in a registry of its own, served on --metrics-port.

Base units (`_seconds`, `_total`); the names follow vLLM's and TGI's where they mean the same thing
(docs/runtime.md lists them side by side). Callers keep using the attributes below: new series are added,
none renamed in Python.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, Info, start_http_server

_LATENCY_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0)
_REQUEST_BUCKETS = (0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 20.0, 30.0, 60.0, 120.0, 300.0)
_TOKEN_BUCKETS = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5)
DEFAULT_PROTOCOL = "grpc"


class RequestCounter:
    """`bloomz_requests_total{method,code,protocol}`; `labels(method, code)` counts a gRPC call."""

    def __init__(self, registry: CollectorRegistry) -> None:
        self.counter = Counter(
            "bloomz_requests",
            "requests by method, result code (gRPC status name) and protocol",
            ["method", "code", "protocol"],
            registry=registry,
        )

    def labels(self, method: str, code: str, protocol: str = DEFAULT_PROTOCOL) -> Any:
        return self.counter.labels(method=method, code=code, protocol=protocol)


class RuntimeMetrics:
    def __init__(self) -> None:
        self.registry = CollectorRegistry()
        r = self.registry
        self.requests = RequestCounter(r)

        def histogram(name: str, documentation: str, buckets: Sequence[float]) -> Histogram:
            return Histogram(name, documentation, buckets=buckets, registry=r)

        # What an autoscaler scales on: requests waiting for a batch row, and the rows in use.
        self.queue_depth = Gauge(
            "bloomz_waiting_requests", "requests waiting to join the running batch", registry=r
        )
        self.waiting = self.queue_depth
        self.running = Gauge(
            "bloomz_running_requests", "requests in the running batch (the current batch size)", registry=r
        )
        self.http_requests = Counter(
            "bloomz_http_requests", "HTTP API requests by route and status", ["route", "status"], registry=r
        )
        self.batch_size = histogram("bloomz_batch_size", "rows per engine step", (1, 2, 4, 8, 16, 32, 64))
        self.kv_cache_slots_used = Gauge(
            "bloomz_kv_cache_slots_used",
            "token positions the running rows hold in the KV cache (prompt + generated tokens)",
            registry=r,
        )
        self.request_duration = histogram(
            "bloomz_request_duration_seconds",
            "end-to-end latency of a finished request: accepted -> last token or error",
            _REQUEST_BUCKETS,
        )
        self.request_queue_time = histogram(
            "bloomz_request_queue_time_seconds",
            "accepted -> admitted into the running batch",
            _LATENCY_BUCKETS,
        )
        self.finished_requests = Counter(
            "bloomz_request_finished",
            "finished requests by finish reason (length, eos, stop, error)",
            ["finish_reason"],
            registry=r,
        )
        self.time_to_first_token = histogram(
            "bloomz_time_to_first_token_seconds", "accepted -> first new token", _LATENCY_BUCKETS
        )
        self.time_per_output_token = histogram(
            "bloomz_time_per_output_token_seconds",
            "mean time per new token after the first, per request",
            _TOKEN_BUCKETS,
        )
        self.greedy_rescored = histogram(
            "bloomz_greedy_rescored_tokens",
            "vocabulary entries the int8 lm_head screen left for float32 rescoring, per forward pass "
            "(above 1/16 of the vocabulary the pass used the whole float32 lm_head)",
            (1, 4, 16, 64, 256, 1024, 4096, 16384, 65536),
        )
        self.tokens_generated = Counter("bloomz_generated_tokens", "new tokens produced", registry=r)
        self.prompt_tokens = Counter("bloomz_prompt_tokens", "prompt tokens prefilled", registry=r)
        self.model_info = Info("bloomz_model", "what this runtime serves", registry=r)

    def serve(self, port: int, host: str) -> None:
        """Start the HTTP endpoint in a daemon thread (port 0: no endpoint)."""
        if port:
            start_http_server(port, addr=host, registry=self.registry)
