"""Prometheus series of the runtime, in a registry of its own, served on --metrics-port."""

from __future__ import annotations

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, Info, start_http_server

_LATENCY_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0)
_TOKEN_BUCKETS = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5)


class RuntimeMetrics:
    def __init__(self) -> None:
        self.registry = CollectorRegistry()
        r = self.registry
        self.requests = Counter(
            "bloomz_requests", "gRPC requests by method and status code", ["method", "code"], registry=r
        )
        self.http_requests = Counter(
            "bloomz_http_requests", "HTTP API requests by route and status", ["route", "status"], registry=r
        )
        self.queue_depth = Gauge("bloomz_queue_depth", "requests waiting to join the batch", registry=r)
        self.running = Gauge("bloomz_running_requests", "requests in the running batch", registry=r)
        self.batch_size = Histogram(
            "bloomz_batch_size", "rows per engine step", buckets=(1, 2, 4, 8, 16, 32, 64), registry=r
        )
        self.time_to_first_token = Histogram(
            "bloomz_time_to_first_token_seconds",
            "accepted -> first new token",
            buckets=_LATENCY_BUCKETS,
            registry=r,
        )
        self.time_per_output_token = Histogram(
            "bloomz_time_per_output_token_seconds",
            "mean time per new token after the first, per request",
            buckets=_TOKEN_BUCKETS,
            registry=r,
        )
        self.greedy_rescored = Histogram(
            "bloomz_greedy_rescored_tokens",
            "vocabulary entries the int8 lm_head screen left for float32 rescoring, per forward pass "
            "(above 1/16 of the vocabulary the pass used the whole float32 lm_head)",
            buckets=(1, 4, 16, 64, 256, 1024, 4096, 16384, 65536),
            registry=r,
        )
        self.tokens_generated = Counter("bloomz_generated_tokens", "new tokens produced", registry=r)
        self.prompt_tokens = Counter("bloomz_prompt_tokens", "prompt tokens prefilled", registry=r)
        self.model_info = Info("bloomz_model", "what this runtime serves", registry=r)

    def serve(self, port: int, host: str) -> None:
        """Start the HTTP endpoint in a daemon thread (port 0: no endpoint)."""
        if port:
            start_http_server(port, addr=host, registry=self.registry)
