"""Latency: when a measurement is due and which pods to measure (pure), a Benchmark RPC per ready pod
(grpc.aio), the summary (pure).

The blog's method runs server-side in the runtime (batch 1, greedy, `maxNewTokens` tokens, EOS ignored);
the operator only asks each ready pod for it and keeps the median over pods in `status.latency`.
"""

from __future__ import annotations

import asyncio
import statistics
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any

import grpc
from bloomz_api.proto import generate_pb2, generate_pb2_grpc

from . import pods as podview
from .backoff import jittered, stable_fraction
from .constants import BENCHMARK_ANNOTATION, BENCHMARK_NOW
from .spec import BenchmarkSpec


@dataclass(frozen=True)
class PodTarget:
    pod: str
    address: str  # host:port


@dataclass(frozen=True)
class Access:
    """How the operator's latency client reaches pods with auth and/or TLS on."""

    api_key: str | None = None
    tls: bool = False
    # The TLS Secret's ca.crt when it has one (else the system's roots), and the name the certificate
    # carries: pods are dialled by IP, the certificate names the Service.
    ca_pem: bytes | None = None
    server_name: str | None = None

    def metadata(self) -> tuple[tuple[str, str], ...]:
        return (("authorization", f"Bearer {self.api_key}"),) if self.api_key else ()


def _channel(address: str, access: Access) -> grpc.aio.Channel:
    if not access.tls:
        return grpc.aio.insecure_channel(address)
    options = [("grpc.ssl_target_name_override", access.server_name)] if access.server_name else []
    credentials = grpc.ssl_channel_credentials(root_certificates=access.ca_pem)
    return grpc.aio.secure_channel(address, credentials, options=options)


@dataclass(frozen=True)
class PodMeasurement:
    pod: str
    seconds: float | None = None
    tokens_per_second: float | None = None
    first_token_ms: float | None = None
    per_token_ms: float | None = None
    prompt_tokens: int | None = None
    iterations: int | None = None
    max_new_tokens: int | None = None
    decode_weight_bytes: int | None = None  # Info: weight bytes one greedy step reads on the replica
    error: str | None = None


def parse_time(value: str) -> datetime:
    return datetime.fromisoformat(value.replace("Z", "+00:00"))


def format_time(moment: datetime) -> str:
    return moment.strftime("%Y-%m-%dT%H:%M:%SZ")


def benchmark_requested(annotations: Mapping[str, str] | None) -> bool:
    return (annotations or {}).get(BENCHMARK_ANNOTATION) == BENCHMARK_NOW


def benchmark_due(
    *,
    latency: Mapping[str, Any] | None,
    bench: BenchmarkSpec,
    requested: bool,
    current_hash: str,
    now: datetime,
    jitter_key: str | None = None,
) -> bool:
    """Whether a measurement should run now (given that there are ready pods to measure).

    `jitter_key` (the resource's uid): the interval moves by up to +-10 %, differently per resource and per
    measurement, so resources created together drift apart instead of benchmarking in the same minute."""
    if requested:
        return True
    if not bench.enabled:
        return False
    if not latency or latency.get("templateHash") != current_hash or not latency.get("measuredAt"):
        return True  # never measured, or measured on pods of another template
    if bench.interval_seconds <= 0:
        return False  # measure once per template (and on request)
    interval = float(bench.interval_seconds)
    if jitter_key is not None:
        interval = jittered(interval, stable_fraction(jitter_key, str(latency["measuredAt"])))
    return now >= parse_time(str(latency["measuredAt"])) + timedelta(seconds=interval)


def pod_address(ip: str, port: int) -> str:
    return f"[{ip}]:{port}" if ":" in ip else f"{ip}:{port}"


def benchmark_targets(observed: Sequence[Mapping[str, Any]], current_hash: str, port: int) -> list[PodTarget]:
    """The pods to measure, by name: the current template's serving pods with an address. A multi-node
    replica serves, and is measured, on its leader (its workers only run ranks)."""
    return [
        PodTarget(podview.name_of(pod), pod_address(ip, port))
        for pod in sorted(observed, key=podview.name_of)
        if podview.hash_of(pod) == current_hash
        and not podview.is_worker(pod)
        and podview.is_ready(pod)
        and not podview.is_terminating(pod)
        and (ip := podview.pod_ip(pod))
    ]


def measured_message(latency: Mapping[str, Any], measurements: Sequence[PodMeasurement]) -> str | None:
    """The LatencyMeasured event's text; None when no pod answered."""
    if "seconds" not in latency:
        return None
    answered = sum(m.error is None for m in measurements)
    return (
        f"{latency['maxNewTokens']} tokens in {latency['seconds']} s "
        f"({latency['tokensPerSecond']} tokens/s, median over {answered} pod(s))"
    )


def benchmark_request(bench: BenchmarkSpec) -> generate_pb2.BenchmarkRequest:
    return generate_pb2.BenchmarkRequest(
        prompt=bench.prompt,
        max_new_tokens=bench.max_new_tokens,
        warmup=bench.warmup,
        iterations=bench.iterations,
    )


def _describe_rpc_error(error: grpc.aio.AioRpcError) -> str:
    return f"{error.code().name}: {error.details() or 'no details'}"


async def _decode_weight_bytes(
    stub: generate_pb2_grpc.TextGenerationStub, timeout_s: float, access: Access
) -> int | None:
    """Info's weight bytes per greedy step; None when the runtime does not say (the latency still counts)."""
    try:
        info = await stub.Info(generate_pb2.InfoRequest(), timeout=timeout_s, metadata=access.metadata())
    except grpc.aio.AioRpcError:
        return None
    return int(info.decode_weight_bytes) or None


async def measure_pod(
    target: PodTarget, bench: BenchmarkSpec, timeout_s: float, access: Access | None = None
) -> PodMeasurement:
    """Run the Benchmark RPC on one pod; any failure becomes the pod's `error`, never an exception."""
    access = access or Access()
    try:
        async with _channel(target.address, access) as channel:
            stub = generate_pb2_grpc.TextGenerationStub(channel)
            reply = await stub.Benchmark(
                benchmark_request(bench), timeout=timeout_s, metadata=access.metadata()
            )
            weight_bytes = await _decode_weight_bytes(stub, timeout_s, access)
    except grpc.aio.AioRpcError as error:
        return PodMeasurement(target.pod, error=_describe_rpc_error(error))
    except (OSError, asyncio.TimeoutError) as error:
        return PodMeasurement(target.pod, error=f"{type(error).__name__}: {error}")
    return PodMeasurement(
        pod=target.pod,
        seconds=reply.latency_seconds,
        tokens_per_second=reply.tokens_per_second,
        first_token_ms=reply.first_token_ms,
        per_token_ms=reply.per_token_ms,
        prompt_tokens=reply.prompt_tokens,
        iterations=reply.iterations,
        max_new_tokens=reply.max_new_tokens or bench.max_new_tokens,
        decode_weight_bytes=weight_bytes,
    )


async def measure_pods(
    targets: Sequence[PodTarget], bench: BenchmarkSpec, timeout_s: float, access: Access | None = None
) -> list[PodMeasurement]:
    """All pods at once: each pod is its own model copy, so they do not disturb each other."""
    return list(await asyncio.gather(*(measure_pod(t, bench, timeout_s, access) for t in targets)))


def _rounded(value: float | None, digits: int) -> float | None:
    return None if value is None else round(value, digits)


def bandwidth_efficiency(
    decode_weight_bytes: int | None, per_token_ms: float | None, bandwidth: float | None
) -> float | None:
    """The fraction of the memory-bandwidth roofline a decode step reached: the weight bytes it reads per
    token over the time it took, divided by the replica's bandwidth (bytes/s, all its devices)."""
    if not decode_weight_bytes or not per_token_ms or not bandwidth:
        return None
    # Four significant digits: a tiny test model reaches a ten-thousandth of a Gaudi's roofline.
    return float(f"{decode_weight_bytes / (per_token_ms / 1000.0) / bandwidth:.4g}")


def summarize(
    measurements: Sequence[PodMeasurement],
    bench: BenchmarkSpec,
    *,
    current_hash: str,
    now: datetime,
    bandwidth: float | None = None,
) -> dict[str, Any]:
    """status.latency: the median over the pods that answered, and every pod's own values or error.
    `bandwidth`: the replica's memory bandwidth in bytes/s (None: no efficiency reported)."""
    good = [m for m in measurements if m.error is None and m.seconds is not None]
    pods: list[dict[str, Any]] = []
    for m in measurements:
        entry: dict[str, Any] = {"pod": m.pod}
        if m.error is not None:
            entry["error"] = m.error
        else:
            entry.update(
                seconds=_rounded(m.seconds, 4),
                tokensPerSecond=_rounded(m.tokens_per_second, 2),
                firstTokenMs=_rounded(m.first_token_ms, 2),
                perTokenMs=_rounded(m.per_token_ms, 2),
            )
            efficiency = bandwidth_efficiency(m.decode_weight_bytes, m.per_token_ms, bandwidth)
            if efficiency is not None:
                entry["bandwidthEfficiency"] = efficiency
        pods.append(entry)
    latency: dict[str, Any] = {
        "maxNewTokens": bench.max_new_tokens,
        "iterations": bench.iterations,
        "measuredAt": format_time(now),
        "templateHash": current_hash,
        "pods": pods,
    }
    if good:

        def median(attr: str) -> float:
            return float(statistics.median(getattr(m, attr) for m in good))

        latency.update(
            seconds=round(median("seconds"), 4),
            tokensPerSecond=round(median("tokens_per_second"), 2),
            firstTokenMs=round(median("first_token_ms"), 2),
            perTokenMs=round(median("per_token_ms"), 2),
            promptTokens=int(statistics.median(m.prompt_tokens or 0 for m in good)),
            iterations=int(statistics.median(m.iterations or 0 for m in good)),
            maxNewTokens=int(statistics.median(m.max_new_tokens or bench.max_new_tokens for m in good)),
        )
        efficiencies = [
            e
            for m in good
            if (e := bandwidth_efficiency(m.decode_weight_bytes, m.per_token_ms, bandwidth)) is not None
        ]
        if efficiencies:
            latency["bandwidthEfficiency"] = float(f"{statistics.median(efficiencies):.4g}")
    return latency
