"""The gRPC face of rank 0: bloomz.v1.TextGeneration over the coordinator, plus health and reflection."""

from __future__ import annotations

import asyncio
import concurrent.futures
import statistics
import threading
import time
from collections.abc import AsyncIterator, Mapping
from dataclasses import dataclass
from typing import Any

import grpc
from bloomz_api.constants import BENCHMARK_MAX_NEW_TOKENS, BENCHMARK_PROMPT
from bloomz_api.options import ServeOptions
from bloomz_api.proto import generate_pb2 as pb
from bloomz_api.proto import generate_pb2_grpc as pb_grpc
from grpc_health.v1 import health_pb2, health_pb2_grpc
from grpc_health.v1._async import HealthServicer
from grpc_reflection.v1alpha import reflection

from bloomz_runtime import __version__, requestlog
from bloomz_runtime.auth import ApiKeys
from bloomz_runtime.backends.base import ModelRunner
from bloomz_runtime.coordinator import Coordinator
from bloomz_runtime.errors import InvalidArgument, Unavailable
from bloomz_runtime.interceptors import ServiceInterceptor
from bloomz_runtime.metrics import DEFAULT_PROTOCOL, RuntimeMetrics
from bloomz_runtime.requests import (
    FINISH_EOS,
    FINISH_LENGTH,
    FINISH_STOP,
    Event,
    FinishedEvent,
    GenerationRequest,
    TokenEvent,
)
from bloomz_runtime.scheduler import RequestQueue
from bloomz_runtime.validation import (
    Limits,
    SamplingParams,
    ValidatedParams,
    longest_token_bytes,
    validate_parameters,
    validate_prompt,
    validate_prompt_size,
    validate_prompt_tokens,
    validate_total_tokens,
)

SERVICE_NAME = "bloomz.v1.TextGeneration"
BENCH_WARMUP = 2
BENCH_ITERATIONS = 5
MAX_BENCH_ITERATIONS = 100

FINISH_REASONS = {
    FINISH_LENGTH: pb.FINISH_REASON_LENGTH,
    FINISH_EOS: pb.FINISH_REASON_EOS,
    FINISH_STOP: pb.FINISH_REASON_STOP,
}


@dataclass
class Attached:
    """What exists once the model is loaded."""

    runner: ModelRunner
    coordinator: Coordinator
    queue: RequestQueue


def _ms(a: float | None, b: float | None) -> float:
    return (b - a) * 1000.0 if a is not None and b is not None else 0.0


def timings_of(req: GenerationRequest) -> pb.Timings:
    t = req.times
    per_token = 0.0
    if len(req.generated) > 1:
        per_token = _ms(t.first_token, t.finished) / (len(req.generated) - 1)
    return pb.Timings(
        queue_ms=_ms(t.accepted, t.scheduled),
        first_token_ms=_ms(t.scheduled, t.first_token),
        per_token_ms=per_token,
        total_ms=_ms(t.accepted, t.finished),
    )


def proto_params(msg: pb.GenerationParameters | None) -> dict[str, Any]:
    """The fields a caller set in a GenerationParameters message, for the shared validator."""
    if msg is None:
        return {}
    return {field.name: value for field, value in msg.ListFields()}


class EventRelay:
    """Hands the engine thread's events to the event loop with one wake-up per batch of them.

    ``call_soon_threadsafe`` writes to the loop's self-pipe and wakes it, taking the GIL from the
    engine thread each time; per token of every row that is several hand-offs per step. Here the
    first event posted after a drain schedules one drain; events posted before it runs ride along.
    """

    def __init__(self, loop: asyncio.AbstractEventLoop) -> None:
        self.loop = loop
        self._lock = threading.Lock()
        self._pending: list[tuple[asyncio.Queue[Event], Event]] = []

    def post(self, queue: asyncio.Queue[Event], event: Event) -> None:
        with self._lock:
            self._pending.append((queue, event))
            if len(self._pending) > 1:
                return  # a drain is already scheduled
        self.loop.call_soon_threadsafe(self._drain)

    def _drain(self) -> None:
        with self._lock:
            batch, self._pending = self._pending, []
        for queue, event in batch:
            queue.put_nowait(event)


class TextGenerationService(pb_grpc.TextGenerationServicer):
    """The servicer, and the engine front both protocols use (``prepare``, ``submit``, ``run_to_end``).

    Domain errors and the request counter are the interceptor's job (interceptors.py)."""

    def __init__(self, opts: ServeOptions, metrics: RuntimeMetrics) -> None:
        self.opts = opts
        self.metrics = metrics
        self.limits = Limits(
            max_input_tokens=opts.max_input_tokens,
            max_new_tokens=opts.max_new_tokens,
            max_total_tokens=opts.total_tokens_limit,
        )
        self.attached: Attached | None = None
        self.draining = False
        # Tokenizing runs here, off the event loop that also answers health checks (one thread:
        # a tokenizer object is not shared between concurrent calls).
        self._tokenizing = concurrent.futures.ThreadPoolExecutor(1, thread_name_prefix="tokenize")
        self._token_bytes = 1
        self._relay: EventRelay | None = None
        # True while health says SERVING (loaded, warmed up, not draining); HTTP /health reads it.
        self.serving = False

    def attach(self, runner: ModelRunner, coordinator: Coordinator, queue: RequestQueue) -> None:
        self._token_bytes = longest_token_bytes(runner.tokenizer.get_vocab())
        self.attached = Attached(runner, coordinator, queue)

    def _ready(self, warming_up: bool = False) -> Attached:
        """The engine, for callers; ``warming_up``: for the warm-up itself, which runs before SERVING."""
        if self.draining:
            raise Unavailable("server is draining (shutting down)")
        if self.attached is None:
            raise Unavailable("model is still loading")
        if not (self.serving or warming_up):
            # Callers wait for health to say SERVING: the warm-up must not compete with them for the queue.
            raise Unavailable("model is warming up")
        return self.attached

    # -- submitting work -------------------------------------------------------------------
    def submit(
        self,
        prompt_ids: list[int],
        params: ValidatedParams,
        deadline_s: float | None = None,
        urgent: bool = False,
        label: str = "",
        warming_up: bool = False,
        protocol: str = DEFAULT_PROTOCOL,
        stream: bool = True,
    ) -> tuple[GenerationRequest, asyncio.Queue[Event]]:
        """Queue one request; its events arrive on the returned queue. ``stream``: a TokenEvent per
        token; otherwise only the end, whose FinishedEvent carries the whole text."""
        att = self._ready(warming_up)
        loop = asyncio.get_running_loop()
        if self._relay is None or self._relay.loop is not loop:
            self._relay = EventRelay(loop)
        relay = self._relay
        events: asyncio.Queue[Event] = asyncio.Queue()

        def sink(event: Event) -> None:
            if not isinstance(event, TokenEvent):  # the request ended: its metrics and log line
                requestlog.report(
                    self.metrics, requestlog.finished_request(req, event, protocol, time.monotonic())
                )
            relay.post(events, event)

        deadline = time.monotonic() + deadline_s if deadline_s is not None else None
        req = GenerationRequest(
            prompt_ids, params, att.runner.tokenizer, att.runner.eos_id, sink, deadline, urgent, label, stream
        )
        att.queue.put(req)
        self.metrics.queue_depth.set(len(att.queue))
        return req, events

    async def prepare(self, prompt: str, fields: Mapping[str, Any]) -> tuple[list[int], ValidatedParams]:
        """Admission of one request, cheapest checks first: loaded and not draining, room in the queue,
        parameters (``fields``: those the caller set; one validator for gRPC and HTTP), prompt size in
        bytes; only then tokenizing (in a worker thread), then the token limits."""
        att = self._ready()
        att.queue.check_room()
        validate_prompt(prompt)
        params = validate_parameters(fields, self.limits)
        truncated = params.truncate_prompt_tokens is not None
        validate_prompt_size(prompt, self.limits, self._token_bytes, truncated)
        ids = await asyncio.get_running_loop().run_in_executor(
            self._tokenizing, self._tokenize, att.runner.tokenizer, prompt
        )
        if params.truncate_prompt_tokens is not None:
            ids = ids[: params.truncate_prompt_tokens]
        validate_prompt_tokens(len(ids), self.limits)
        validate_total_tokens(len(ids), params, self.limits)
        return ids, params

    @staticmethod
    def _tokenize(tokenizer: Any, text: str) -> list[int]:
        return list(tokenizer(text, add_special_tokens=False).input_ids)

    async def _prepare(self, request: pb.GenerateRequest) -> tuple[list[int], ValidatedParams]:
        fields = proto_params(request.parameters if request.HasField("parameters") else None)
        return await self.prepare(request.prompt, fields)

    async def run_to_end(self, req: GenerationRequest, events: asyncio.Queue[Event]) -> tuple[str, str]:
        """(text, finish reason) once the request ends; cancels it if the caller goes away."""
        pieces: list[str] = []
        try:
            while True:
                event = await events.get()
                if isinstance(event, TokenEvent):
                    pieces.append(event.text)
                elif isinstance(event, FinishedEvent):
                    pieces.append(event.text)
                    return "".join(pieces), event.reason
                else:
                    raise event.error
        finally:
            if not req.done:
                req.cancelled = True

    # -- RPCs ------------------------------------------------------------------------------
    async def Generate(
        self, request: pb.GenerateRequest, context: grpc.aio.ServicerContext
    ) -> pb.GenerateResponse:
        ids, params = await self._prepare(request)
        req, events = self.submit(
            ids, params, context.time_remaining(), label=request.request_id, stream=False
        )
        text, reason = await self.run_to_end(req, events)
        return pb.GenerateResponse(
            text=text,
            prompt_tokens=len(ids),
            generated_tokens=len(req.generated),
            finish_reason=FINISH_REASONS[reason],
            timings=timings_of(req),
            token_ids=req.generated,
            prompt=self._decode_prompt(ids),
        )

    def _decode_prompt(self, ids: list[int]) -> str:
        return self.decode(ids)

    def decode(self, ids: list[int]) -> str:
        return str(self._ready().runner.tokenizer.decode(ids, skip_special_tokens=True))

    async def GenerateStream(
        self, request: pb.GenerateRequest, context: grpc.aio.ServicerContext
    ) -> AsyncIterator[pb.GenerateStreamResponse]:
        req: GenerationRequest | None = None
        try:
            ids, params = await self._prepare(request)
            req, events = self.submit(ids, params, context.time_remaining(), label=request.request_id)
            while True:
                event = await events.get()
                if isinstance(event, TokenEvent):
                    yield pb.GenerateStreamResponse(text=event.text, token_ids=[event.token_id])
                elif isinstance(event, FinishedEvent):
                    yield pb.GenerateStreamResponse(
                        text=event.text,
                        finish_reason=FINISH_REASONS[event.reason],
                        prompt_tokens=len(ids),
                        generated_tokens=len(req.generated),
                        timings=timings_of(req),
                    )
                    break
                else:
                    raise event.error
        finally:
            if req is not None and not req.done:
                req.cancelled = True

    async def Info(self, request: pb.InfoRequest, context: grpc.aio.ServicerContext) -> pb.InfoResponse:
        att = self._ready()
        runner = att.runner
        o = self.opts
        config = getattr(runner.model, "config", None)
        return pb.InfoResponse(
            model=o.model_name,
            device=o.device,
            world_size=o.world_size,
            dtype=o.torch_dtype_name,
            limits=pb.Limits(
                max_input_tokens=o.max_input_tokens,
                max_new_tokens=o.max_new_tokens,
                max_batch_size=o.max_batch_size,
                max_queue_size=o.max_queue_size,
                batch_wait_ms=o.batch_wait_ms,
            ),
            versions={"bloomz_runtime": __version__, "grpcio": grpc.__version__, **runner.versions},
            model_type=str(getattr(config, "model_type", "")),
            parameters=runner.parameters,
            kv_cache=o.kv_cache,
            hpu_graphs=o.hpu_graphs and o.device == "hpu",
            backend=runner.backend,
            greedy_head=runner.greedy_head_name,
            decode_weight_bytes=runner.decode_weight_bytes,
        )

    async def Benchmark(
        self, request: pb.BenchmarkRequest, context: grpc.aio.ServicerContext
    ) -> pb.BenchmarkResponse:
        att = self._ready()
        prompt = request.prompt or BENCHMARK_PROMPT
        new_tokens = request.max_new_tokens or BENCHMARK_MAX_NEW_TOKENS
        warmup = request.warmup if request.HasField("warmup") else BENCH_WARMUP
        iterations = request.iterations if request.HasField("iterations") else BENCH_ITERATIONS
        if not 1 <= iterations <= MAX_BENCH_ITERATIONS:
            raise InvalidArgument(f"iterations must be in [1, {MAX_BENCH_ITERATIONS}], got {iterations}")
        if warmup > MAX_BENCH_ITERATIONS:
            raise InvalidArgument(f"warmup must be <= {MAX_BENCH_ITERATIONS}, got {warmup}")
        if new_tokens > self.limits.max_new_tokens:
            raise InvalidArgument(
                f"max_new_tokens {new_tokens} exceeds the server limit {self.limits.max_new_tokens}"
            )
        ids = list(att.runner.tokenizer(prompt, add_special_tokens=False).input_ids)
        validate_prompt_tokens(len(ids), self.limits)
        # The blog's method: greedy, batch 1, eos ignored so every run makes exactly new_tokens.
        params = ValidatedParams(max_new_tokens=new_tokens, sampling=SamplingParams(), ignore_eos=True)
        runs: list[GenerationRequest] = []
        for i in range(warmup + iterations):
            req, events = self.submit(
                ids, params, context.time_remaining(), urgent=True, label="benchmark", stream=False
            )
            await self.run_to_end(req, events)
            if i >= warmup:
                runs.append(req)
        latencies = [_seconds(r.times.scheduled, r.times.finished) for r in runs]
        first = [_seconds(r.times.scheduled, r.times.first_token) for r in runs]
        per_token = [
            _seconds(r.times.first_token, r.times.finished) / max(1, len(r.generated) - 1) for r in runs
        ]
        latency = statistics.median(latencies)
        return pb.BenchmarkResponse(
            latency_seconds=latency,
            tokens_per_second=new_tokens / latency if latency > 0 else 0.0,
            first_token_ms=statistics.median(first) * 1000.0,
            per_token_ms=statistics.median(per_token) * 1000.0,
            prompt_tokens=len(ids),
            iterations=iterations,
            latencies_seconds=latencies,
            max_new_tokens=new_tokens,
            world_size=self.opts.world_size,
            device=self.opts.device,
            dtype=self.opts.torch_dtype_name,
            warmup=warmup,
        )

    async def warmup(self) -> None:
        """Exercise prefill, decode, and joining a running batch before reporting SERVING."""
        att = self._ready(warming_up=True)
        ids = list(att.runner.tokenizer(BENCHMARK_PROMPT, add_special_tokens=False).input_ids)
        # Three tokens: the second request, submitted while the first's second step runs, joins the
        # batch at its third (with two the first could be done before the second is admitted).
        params = ValidatedParams(max_new_tokens=3, sampling=SamplingParams(), ignore_eos=True)
        first, first_events = self.submit(ids, params, urgent=True, label="warmup", warming_up=True)
        # Once the first has its first token it is in the batch and the queue is empty again
        # (even a queue of one has room); the second then joins the running batch.
        head = await first_events.get()
        first_events.put_nowait(head)
        second = self.submit(ids[:2], params, label="warmup", warming_up=True)
        await self.run_to_end(first, first_events)
        await self.run_to_end(*second)


def _seconds(a: float | None, b: float | None) -> float:
    return (b - a) if a is not None and b is not None else 0.0


async def start_grpc_server(
    service: TextGenerationService,
    health: HealthServicer,
    host: str,
    port: int,
    api_keys: ApiKeys | None = None,
    tls: tuple[bytes, bytes] | None = None,
) -> tuple[grpc.aio.Server, int]:
    """Serve TextGeneration, health and reflection; returns the server and the bound port.

    ``tls``: (certificate chain, private key) in PEM; ``api_keys``: required on TextGeneration."""
    # No SO_REUSEPORT (grpcio's default is on): a second server on the same address must fail to
    # start, not silently share the port with the first.
    server = grpc.aio.server(
        interceptors=[ServiceInterceptor(SERVICE_NAME, service.metrics, api_keys)],
        options=[("grpc.so_reuseport", 0)],
    )
    pb_grpc.add_TextGenerationServicer_to_server(service, server)
    health_pb2_grpc.add_HealthServicer_to_server(health, server)
    names = (
        pb.DESCRIPTOR.services_by_name["TextGeneration"].full_name,
        health_pb2.DESCRIPTOR.services_by_name["Health"].full_name,
        reflection.SERVICE_NAME,
    )
    reflection.enable_server_reflection(names, server)
    address = f"[{host}]:{port}" if ":" in host else f"{host}:{port}"
    if tls is None:
        bound = server.add_insecure_port(address)
    else:
        cert, key = tls
        bound = server.add_secure_port(address, grpc.ssl_server_credentials([(key, cert)]))
    await server.start()
    return server, bound


async def set_health(health: HealthServicer, serving: bool) -> None:
    status = health_pb2.HealthCheckResponse.SERVING if serving else health_pb2.HealthCheckResponse.NOT_SERVING
    for name in ("", SERVICE_NAME):
        await health.set(name, status)
