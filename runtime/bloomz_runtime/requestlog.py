"""One record per finished request: the series it feeds (end-to-end latency, queue time, finish reason) and
its log line (request id, tokens, timings, result code), in text or JSON (`--log-format json`)."""

from __future__ import annotations

import json
import logging
from dataclasses import asdict, dataclass
from typing import Any

from bloomz_runtime.interceptors import grpc_status
from bloomz_runtime.metrics import RuntimeMetrics
from bloomz_runtime.requests import Event, FailedEvent, FinishedEvent, GenerationRequest

log = logging.getLogger("bloomz_runtime.requests")


@dataclass(frozen=True)
class FinishedRequest:
    request_id: str  # the caller's request_id when it sent one, else the runtime's own id
    protocol: str
    code: str  # gRPC status name: OK, CANCELLED, DEADLINE_EXCEEDED, ...
    finish_reason: str  # length, eos, stop, error
    prompt_tokens: int
    generated_tokens: int
    queue_ms: float | None
    ttft_ms: float | None
    tpot_ms: float | None
    total_ms: float


def _ms(start: float | None, end: float | None) -> float | None:
    return None if start is None or end is None else round((end - start) * 1000.0, 3)


def finished_request(req: GenerationRequest, event: Event, protocol: str, now: float) -> FinishedRequest:
    """The record of `req`, which `event` (a FinishedEvent or FailedEvent) just ended."""
    if isinstance(event, FailedEvent):
        code, reason = grpc_status(event.error)[0].name, "error"
    else:
        assert isinstance(event, FinishedEvent)
        code, reason = "OK", event.reason
    t = req.times
    generated = len(req.generated)
    tpot = None
    if generated > 1 and t.first_token is not None and t.finished is not None:
        tpot = round((t.finished - t.first_token) * 1000.0 / (generated - 1), 3)
    return FinishedRequest(
        request_id=req.label or req.id,
        protocol=protocol,
        code=code,
        finish_reason=reason,
        prompt_tokens=len(req.prompt_ids),
        generated_tokens=generated,
        queue_ms=_ms(t.accepted, t.scheduled),
        ttft_ms=_ms(t.accepted, t.first_token),
        tpot_ms=tpot,
        total_ms=_ms(t.accepted, t.finished if t.finished is not None else now) or 0.0,
    )


def text_of(record: FinishedRequest) -> str:
    fields = asdict(record)
    request_id = fields.pop("request_id")
    return f"request {request_id} finished: " + " ".join(
        f"{key}={value}" for key, value in fields.items() if value is not None
    )


def report(metrics: RuntimeMetrics, finished: FinishedRequest) -> None:
    """Feed the per-request series and write the request's log line."""
    metrics.request_duration.observe(finished.total_ms / 1000.0)
    if finished.queue_ms is not None:
        metrics.request_queue_time.observe(finished.queue_ms / 1000.0)
    metrics.finished_requests.labels(finish_reason=finished.finish_reason).inc()
    log.info(text_of(finished), extra={"fields": asdict(finished)})


class JsonFormatter(logging.Formatter):
    """One JSON object per line: time, level, logger, message, the rank, and a record's `fields`."""

    def format(self, entry: logging.LogRecord) -> str:
        line: dict[str, Any] = {
            "time": self.formatTime(entry, "%Y-%m-%dT%H:%M:%S"),
            "level": entry.levelname,
            "logger": entry.name,
            "message": entry.getMessage(),
        }
        if hasattr(entry, "rank"):
            line["rank"] = entry.rank
        line.update(getattr(entry, "fields", None) or {})
        if entry.exc_info:
            line["exception"] = self.formatException(entry.exc_info)
        return json.dumps(line)
