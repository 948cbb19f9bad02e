"""Our runtime, measured the way a user reaches it: a launched server and gRPC calls.

`launched_runtime` starts `python -m bloomz_runtime.launch` (1 rank, or N ranks under mpirun) on
127.0.0.1 and times launch -> SERVING; the measurements then go through the client package.
"""

from __future__ import annotations

import contextlib
import os
import signal
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from bloomz_api.client import bench
from bloomz_api.client.connection import RpcFailure, TextGenerationClient
from bloomz_api.client.requests import greedy_request


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
    return port


@dataclass(frozen=True)
class RunningRuntime:
    process: subprocess.Popen[bytes]
    target: str
    startup_s: float  # launch -> health SERVING


def log_tail(path: Path, lines: int = 30) -> str:
    try:
        return "\n".join(path.read_text(errors="replace").splitlines()[-lines:])
    except OSError:
        return ""


def wait_serving(target: str, process: subprocess.Popen[bytes], timeout_s: float, log: Path) -> None:
    """Polls the standard health service until SERVING; fails early if the launcher exits."""
    deadline = time.monotonic() + timeout_s
    with TextGenerationClient(target, timeout=2.0) as client:
        while time.monotonic() < deadline:
            if process.poll() is not None:
                raise RuntimeError(
                    f"runtime exited with {process.returncode} before serving:\n{log_tail(log)}"
                )
            try:
                if client.health() == "SERVING":
                    return
            except RpcFailure:
                pass  # not listening yet
            time.sleep(0.05)
    raise TimeoutError(f"runtime not SERVING after {timeout_s:.0f} s:\n{log_tail(log)}")


def stop(process: subprocess.Popen[bytes], grace_s: float = 60.0) -> None:
    """SIGTERM (the runtime drains and exits), then kill the whole process group if it hangs."""
    if process.poll() is not None:
        return
    process.send_signal(signal.SIGTERM)
    try:
        process.wait(grace_s)
    except subprocess.TimeoutExpired:
        os.killpg(process.pid, signal.SIGKILL)
        process.wait(10)


@contextmanager
def launched_runtime(
    model_dir: Path, world_size: int, log: Path, extra_args: Sequence[str] = (), timeout_s: float = 900.0
) -> Iterator[RunningRuntime]:
    port, metrics_port = free_port(), free_port()
    command = [
        sys.executable, "-m", "bloomz_runtime.launch",
        "--model", str(model_dir), "--device", "cpu", "--world-size", str(world_size),
        "--port", str(port), "--metrics-port", str(metrics_port), "--http-port", "0", *extra_args,
    ]  # fmt: skip
    env = {**os.environ, "BLOOMZ_BIND_HOST": "127.0.0.1"}
    target = f"127.0.0.1:{port}"
    with log.open("wb") as log_file:
        start = time.perf_counter()
        process = subprocess.Popen(
            command, stdout=log_file, stderr=subprocess.STDOUT, env=env, start_new_session=True
        )
        try:
            wait_serving(target, process, timeout_s, log)
            yield RunningRuntime(process, target, time.perf_counter() - start)
        finally:
            stop(process)


def median_run(runs: Sequence[dict[str, Any]], key: str) -> dict[str, Any]:
    """The run with the median ``key`` (the lower middle one for an even count), plus every run's
    value: a shared machine's speed drifts, one run can be an outlier either way."""
    ordered = sorted(runs, key=lambda run: run[key])
    return {**ordered[(len(ordered) - 1) // 2], f"all_{key}": [run[key] for run in runs]}


def concurrent_clients(
    target: str, prompts: Sequence[str], input_tokens: int, new_tokens: int
) -> dict[str, float]:
    """One client (own channel, own thread) per prompt, all released at once; total tokens/s."""
    barrier = threading.Barrier(len(prompts) + 1)
    generated = [0] * len(prompts)
    errors: list[BaseException] = []

    def one_client(index: int, prompt: str) -> None:
        request = greedy_request(
            prompt,
            new_tokens,
            ignore_eos=True,
            truncate_prompt_tokens=input_tokens,
            request_id=f"conc-{index}",
        )
        try:
            with TextGenerationClient(target, timeout=900.0) as client:
                client.info()  # connect before the clock starts
                barrier.wait(timeout=300)
                generated[index] = client.generate(request).generated_tokens
        except BaseException as error:  # reported by the caller; never leave the others waiting
            errors.append(error)
            barrier.abort()

    threads = [threading.Thread(target=one_client, args=(i, p), daemon=True) for i, p in enumerate(prompts)]
    for thread in threads:
        thread.start()
    with contextlib.suppress(threading.BrokenBarrierError):  # a client failed: its error is raised below
        barrier.wait(timeout=300)
    start = time.perf_counter()
    for thread in threads:
        thread.join()
    elapsed = time.perf_counter() - start
    if errors:  # the first cause, not the broken barrier it left the others
        causes = [error for error in errors if not isinstance(error, threading.BrokenBarrierError)]
        raise (causes or errors)[0]
    total = sum(generated)
    return {
        "clients": len(prompts),
        "new_tokens": new_tokens,
        "seconds": elapsed,
        "tokens_per_second": total / elapsed,
    }


def measure(
    model_dir: Path,
    world_size: int,
    log: Path,
    *,
    prompt: str,
    max_new_tokens: int,
    warmup: int,
    runs: int,
    concurrent_prompts: Sequence[str],
    input_tokens: int,
    concurrent_new_tokens: int,
    concurrency_runs: int = 1,
    after_start: Callable[[], None] | None = None,
    between_latency_runs: Callable[[], None] | None = None,
    between_concurrency_runs: Callable[[], None] | None = None,
) -> dict[str, object]:
    """Start-up, the Benchmark RPC, the client's end-to-end bench and the concurrency run.

    ``after_start`` runs once the runtime serves, before any measurement (the benchmark loads a
    baseline there); the ``between_*`` callables run after each of our latency and concurrency
    runs: a baseline measured there sees the same machine as ours (peer.py)."""
    extra = ["--max-batch-size", str(max(len(concurrent_prompts), 1))]
    with launched_runtime(model_dir, world_size, log, extra) as runtime:
        if after_start is not None:
            after_start()
        with TextGenerationClient(runtime.target, timeout=1800.0) as client:
            info = client.info()
            server, end_to_end = bench.run_paired_bench(
                client, info, prompt, max_new_tokens, warmup, runs, between_latency_runs
            )
        concurrent_clients(runtime.target, concurrent_prompts[:2], input_tokens, 2)  # warm-up
        concurrency_results = []
        for _ in range(max(concurrency_runs, 1)):
            concurrency_results.append(
                concurrent_clients(runtime.target, concurrent_prompts, input_tokens, concurrent_new_tokens)
            )
            if between_concurrency_runs is not None:
                between_concurrency_runs()
        concurrency = median_run(concurrency_results, "tokens_per_second")
        return {
            "world_size": world_size,
            "startup_s": runtime.startup_s,
            "server": server.as_dict(),
            "client": end_to_end.as_dict(),
            "concurrency": concurrency,
            "info": {
                "dtype": info.dtype,
                "backend": info.backend,
                "kv_cache": info.kv_cache,
                "greedy_head": info.greedy_head,
                "decode_weight_bytes": info.decode_weight_bytes,
            },
        }
