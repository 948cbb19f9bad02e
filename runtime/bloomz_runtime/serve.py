"""One rank of the runtime (what mpirun starts N times; ``launch`` starts it directly for N = 1).

Every rank: rank variables from Open MPI, torch.distributed, model load and sharding.
Rank 0 also serves gRPC, the OpenAI-compatible HTTP API and metrics, all on one event loop, and
drives the engine; the others follow its commands.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import signal
import sys
import time
from typing import TYPE_CHECKING, Any

from bloomz_api.constants import BENCHMARK_PROMPT
from bloomz_api.options import ServeOptions, parse_options

from bloomz_runtime.auth import ApiKeys
from bloomz_runtime.backends import get_backend
from bloomz_runtime.commands import ControlChannel
from bloomz_runtime.coordinator import Coordinator, worker_loop
from bloomz_runtime.dist import DistContext, init_distributed, shorten_collective_timeout
from bloomz_runtime.engine import BatchEngine
from bloomz_runtime.http.chat import load_chat_template
from bloomz_runtime.launch import LEADER_PIDFILE_ENV
from bloomz_runtime.lifetime import die_with_parent
from bloomz_runtime.metrics import RuntimeMetrics
from bloomz_runtime.passing_thread import in_passing_thread
from bloomz_runtime.requestlog import JsonFormatter
from bloomz_runtime.scheduler import RequestQueue, largest_prefill
from bloomz_runtime.server import TextGenerationService, set_health, start_grpc_server
from bloomz_runtime.watchdog import FLUSH_S, exit_stuck, fail_all, overdue, stuck_error

if TYPE_CHECKING:
    from bloomz_runtime.http import HttpServer

log = logging.getLogger("bloomz_runtime.serve")
MPI_RANK_ENV = "OMPI_COMM_WORLD_RANK"  # set by Open MPI in every rank it starts


def _load_engine(opts: ServeOptions, ctx: DistContext) -> BatchEngine:
    runner = get_backend(opts.device).load(opts, ctx)
    return BatchEngine(runner, kv_cache=opts.kv_cache)


def _warm_up_largest(opts: ServeOptions, coordinator: Coordinator) -> None:
    rows, length = largest_prefill(opts.max_batch_size, opts.max_input_tokens, opts.max_prefill_tokens)
    seed = coordinator.engine.runner.tokenizer(BENCHMARK_PROMPT, add_special_tokens=False).input_ids
    prompt = tuple(seed[i % len(seed)] for i in range(length))
    started = time.monotonic()
    coordinator.warm_up_largest(rows, prompt)
    log.info(
        "warm-up at the largest prefill (%d x %d tokens) in %.1f s", rows, length, time.monotonic() - started
    )


async def _give_up_if_stuck(coordinator: Coordinator, health: Any, limit_s: float) -> None:
    """The watchdog: a step over the limit -> NOT_SERVING, every accepted request UNAVAILABLE, exit."""
    if not overdue(coordinator.step_started, time.monotonic(), limit_s):
        return
    await set_health(health, serving=False)
    failed = fail_all(coordinator.unanswered(), stuck_error(limit_s))
    log.error(
        "engine stuck: a step ran over %.0f s; %d request(s) answered UNAVAILABLE; exiting", limit_s, failed
    )
    await asyncio.sleep(FLUSH_S)  # let those answers go out
    exit_stuck()


def _read_tls(opts: ServeOptions) -> tuple[bytes, bytes] | None:
    if opts.tls_cert_file is None or opts.tls_key_file is None:
        return None
    with open(opts.tls_cert_file, "rb") as cert, open(opts.tls_key_file, "rb") as key:
        return cert.read(), key.read()


async def run_leader(opts: ServeOptions, ctx: DistContext) -> int:
    from grpc_health.v1._async import HealthServicer

    metrics = RuntimeMetrics()
    metrics.serve(opts.metrics_port, opts.bind_host)
    health = HealthServicer()
    await set_health(health, serving=False)
    service = TextGenerationService(opts, metrics)
    api_keys = ApiKeys(opts.api_key_file) if opts.api_key_file else None
    tls = _read_tls(opts)
    server, port = await start_grpc_server(service, health, opts.bind_host, opts.port, api_keys, tls)
    scheme = "TLS" if tls else "plaintext"
    log.info("gRPC (%s) on %s:%d (NOT_SERVING until loaded and warmed up)", scheme, opts.bind_host, port)
    http: HttpServer | None = None
    chat = load_chat_template(opts.chat_template)
    if opts.http_port:
        # Imported only here: FastAPI and uvicorn are a few tenths of a second of start-up.
        from bloomz_runtime.http import create_app, start_http_server

        app = create_app(service, opts.model_name, chat, metrics, api_keys)
        http = await start_http_server(
            app, opts.bind_host, opts.http_port, opts.tls_cert_file, opts.tls_key_file
        )
        log.info("HTTP (%s, OpenAI-compatible) on %s:%d", scheme, opts.bind_host, http.port)
    if api_keys is None:
        log.info("no --api-key-file: the service is open to anyone who can reach it")

    stopping = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stopping.set)

    started = time.monotonic()
    # Loading runs in a thread so health checks are answered (NOT_SERVING) meanwhile; one that ends
    # with it, so the engine thread's OpenMP pool is the only one left (passing_thread.py).
    engine = await in_passing_thread(_load_engine, opts, ctx, name="load")
    runner = engine.runner
    metrics.model_info.info(
        {"model": opts.model_name, "device": opts.device, "dtype": opts.torch_dtype_name,
         "world_size": str(opts.world_size), "backend": runner.backend}
    )  # fmt: skip
    queue = RequestQueue(opts.max_queue_size, opts.max_prefill_tokens)
    coordinator = Coordinator(
        engine,
        ControlChannel(ctx, opts.max_batch_size),
        queue,
        metrics,
        opts.max_batch_size,
        opts.batch_wait_ms / 1000.0,
    )
    if opts.warms_up_largest and not stopping.is_set():
        await in_passing_thread(_warm_up_largest, opts, coordinator, name="warm-up")
    coordinator.start()
    service.attach(runner, coordinator, queue)
    chat.bos_token = getattr(runner.tokenizer, "bos_token", None) or ""
    chat.eos_token = getattr(runner.tokenizer, "eos_token", None) or ""
    if opts.warmup and not stopping.is_set():
        await service.warmup()
    log.info("model loaded in %.1f s", time.monotonic() - started)
    # Loading and warm-up (graph compiles) may keep a collective waiting for long; serving steps may
    # not. Rank 0's side is enough: its failed collective ends the job, and the other ranks wait on
    # the control channel, which has its own shorter timeout.
    shorten_collective_timeout(ctx, opts.step_timeout_s)
    if not stopping.is_set():
        await set_health(health, serving=True)
        service.serving = True
        log.info("SERVING")

    while not stopping.is_set() and coordinator.failure is None:
        with contextlib.suppress(asyncio.TimeoutError):
            await asyncio.wait_for(stopping.wait(), timeout=0.5)
        await _give_up_if_stuck(coordinator, health, opts.step_timeout_s)
    if coordinator.failure is not None:
        log.error("engine failed: %s", coordinator.failure)
        return 1

    # Drain: stop taking work, let what is in flight finish within the grace period.
    log.info("draining (grace period %.0f s)", opts.grace_period_s)
    await set_health(health, serving=False)
    service.serving = False
    service.draining = True
    drain_deadline = time.monotonic() + opts.grace_period_s
    while coordinator.busy and time.monotonic() < drain_deadline and coordinator.failure is None:
        await asyncio.sleep(0.05)
        await _give_up_if_stuck(coordinator, health, opts.step_timeout_s)
    # Past the grace period: whatever is left, running or waiting, is answered UNAVAILABLE (retry).
    coordinator.shut_down_all()
    coordinator.stop()
    await asyncio.to_thread(coordinator.thread.join, 30.0)
    await server.stop(grace=1.0)
    if http is not None:
        await http.stop(grace_s=1.0)
    log.info("stopped")
    return 1 if coordinator.failure is not None else 0


def main(argv: list[str] | None = None) -> int:
    if MPI_RANK_ENV in os.environ:
        # Started by mpirun (or an orted): a killed mpirun must not leave this rank running.
        die_with_parent(signal.SIGKILL, os.getppid())
    opts = parse_options(argv)
    logging.basicConfig(
        level=logging.INFO,
        format="%(asctime)s %(levelname)s rank=%(rank)s %(name)s: %(message)s",
        stream=sys.stderr,
    )
    if opts.log_format == "json":
        for handler in logging.getLogger().handlers:
            handler.setFormatter(JsonFormatter())
    ctx = init_distributed(opts.device, opts.world_size)
    old_factory = logging.getLogRecordFactory()

    def factory(*args: object, **kwargs: object) -> logging.LogRecord:
        record = old_factory(*args, **kwargs)
        record.rank = ctx.rank
        return record

    logging.setLogRecordFactory(factory)
    if ctx.is_leader:
        pidfile = os.environ.get(LEADER_PIDFILE_ENV)
        if pidfile:
            with open(pidfile, "w") as f:
                f.write(str(os.getpid()))
        try:
            code = asyncio.run(run_leader(opts, ctx))
        except Exception:
            log.exception("rank 0 failed")
            code = 1
    else:
        # Only rank 0 decides when to stop (after draining); it tells us with a Shutdown command.
        signal.signal(signal.SIGTERM, signal.SIG_IGN)
        signal.signal(signal.SIGINT, signal.SIG_IGN)
        try:
            worker_loop(_load_engine(opts, ctx), ControlChannel(ctx, opts.max_batch_size))
            code = 0
        except Exception:
            log.exception("rank %d failed", ctx.rank)
            code = 1
    sys.stdout.flush()
    sys.stderr.flush()
    # Skip interpreter teardown: process groups and DeepSpeed hooks can block at exit,
    # and a rank that hangs would keep the pod alive.
    os._exit(code)


if __name__ == "__main__":
    main()
