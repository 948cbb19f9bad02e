"""One rank of the runtime (what mpirun starts N times; ``launch`` starts it directly for N = 1).

Every rank: rank variables from Open MPI, torch.distributed, model load and sharding.
Rank 0 also serves gRPC and metrics and drives the engine; the others follow its commands.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import signal
import sys
import time

from bloomz_runtime.backends import get_backend
from bloomz_runtime.commands import ControlChannel
from bloomz_runtime.coordinator import Coordinator, worker_loop
from bloomz_runtime.dist import DistContext, init_distributed
from bloomz_runtime.engine import BatchEngine
from bloomz_runtime.launch import LEADER_PIDFILE_ENV
from bloomz_runtime.metrics import RuntimeMetrics
from bloomz_runtime.options import ServeOptions, parse_options
from bloomz_runtime.requestlog import JsonFormatter
from bloomz_runtime.scheduler import RequestQueue
from bloomz_runtime.server import TextGenerationService, set_health, start_grpc_server

log = logging.getLogger("bloomz_runtime.serve")


def _load_engine(opts: ServeOptions, ctx: DistContext) -> BatchEngine:
    runner = get_backend(opts.device).load(opts, ctx)
    return BatchEngine(runner, kv_cache=opts.kv_cache)


async def run_leader(opts: ServeOptions, ctx: DistContext) -> int:
    from grpc_health.v1._async import HealthServicer

    metrics = RuntimeMetrics()
    metrics.serve(opts.metrics_port, opts.bind_host)
    health = HealthServicer()
    await set_health(health, serving=False)
    service = TextGenerationService(opts, metrics)
    server, port = await start_grpc_server(service, health, opts.bind_host, opts.port)
    log.info("gRPC on %s:%d (NOT_SERVING until loaded and warmed up)", opts.bind_host, port)

    stopping = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stopping.set)

    started = time.monotonic()
    # Loading runs in a thread so health checks are answered (NOT_SERVING) meanwhile.
    engine = await asyncio.to_thread(_load_engine, opts, ctx)
    runner = engine.runner
    metrics.model_info.info(
        {"model": opts.model_name, "device": opts.device, "dtype": opts.torch_dtype_name,
         "world_size": str(opts.world_size), "backend": runner.backend}
    )  # fmt: skip
    queue = RequestQueue(opts.max_queue_size)
    coordinator = Coordinator(
        engine, ControlChannel(ctx), queue, metrics, opts.max_batch_size, opts.batch_wait_ms / 1000.0
    )
    coordinator.start()
    service.attach(runner, coordinator, queue)
    if opts.warmup and not stopping.is_set():
        await service.warmup()
    log.info("model loaded in %.1f s", time.monotonic() - started)
    if not stopping.is_set():
        await set_health(health, serving=True)
        log.info("SERVING")

    while not stopping.is_set() and coordinator.failure is None:
        with contextlib.suppress(asyncio.TimeoutError):
            await asyncio.wait_for(stopping.wait(), timeout=0.5)
    if coordinator.failure is not None:
        log.error("engine failed: %s", coordinator.failure)
        return 1

    # Drain: stop taking work, let what is in flight finish within the grace period.
    log.info("draining (grace period %.0f s)", opts.grace_period_s)
    await set_health(health, serving=False)
    service.draining = True
    drain_deadline = time.monotonic() + opts.grace_period_s
    while coordinator.busy and time.monotonic() < drain_deadline and coordinator.failure is None:
        await asyncio.sleep(0.05)
    # Past the grace period: whatever is left is cancelled, running or waiting.
    queue.cancel_all()
    for req in coordinator.active:
        req.cancelled = True
    coordinator.stop()
    await asyncio.to_thread(coordinator.thread.join, 30.0)
    await server.stop(grace=1.0)
    log.info("stopped")
    return 1 if coordinator.failure is not None else 0


def main(argv: list[str] | None = None) -> int:
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
            worker_loop(_load_engine(opts, ctx), ControlChannel(ctx))
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
