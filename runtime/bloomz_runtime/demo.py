"""The runtime on its own, end to end on this machine (``make demo-runtime``).

Builds the tiny checkpoint, launches 2 ranks under mpirun on CPU, waits for SERVING, runs the
client's ``bench`` and a short ``dataset`` run, then stops the job with SIGTERM (a drain) and
reports the exit code.
"""

from __future__ import annotations

import argparse
import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import grpc
from grpc_health.v1 import health_pb2, health_pb2_grpc


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def wait_for_serving(target: str, timeout: float, process: subprocess.Popen[bytes]) -> None:
    deadline = time.monotonic() + timeout
    with grpc.insecure_channel(target) as channel:
        stub = health_pb2_grpc.HealthStub(channel)
        while time.monotonic() < deadline:
            if process.poll() is not None:
                raise SystemExit(f"runtime exited with {process.returncode} before SERVING")
            try:
                if stub.Check(health_pb2.HealthCheckRequest(), timeout=2).status == 1:
                    return
            except grpc.RpcError:
                pass
            time.sleep(0.25)
    raise SystemExit(f"runtime not SERVING after {timeout:.0f} s")


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--model-dir", type=Path, default=Path(".cache/demo-runtime/tiny"))
    p.add_argument("--shape", default="tiny", choices=["tiny", "560m"])
    p.add_argument("--world-size", type=int, default=2)
    p.add_argument("--dataset-limit", type=int, default=8)
    args = p.parse_args(argv)

    if not (args.model_dir / "config.json").exists():
        print(f"building the {args.shape} checkpoint in {args.model_dir}", flush=True)
        from bloomz_runtime.tiny import build_checkpoint

        build_checkpoint(args.model_dir, args.shape)
    port, metrics_port, http_port = _free_port(), _free_port(), _free_port()
    target = f"127.0.0.1:{port}"
    env = dict(os.environ, BLOOMZ_BIND_HOST="127.0.0.1")
    launch = [
        sys.executable, "-m", "bloomz_runtime.launch", "--model", str(args.model_dir), "--device", "cpu",
        "--world-size", str(args.world_size), "--port", str(port), "--metrics-port", str(metrics_port),
        "--http-port", str(http_port),
    ]  # fmt: skip
    print("$", " ".join(launch), flush=True)
    runtime = subprocess.Popen(launch, env=env)
    try:
        wait_for_serving(target, 600, runtime)
        print(
            f"SERVING on {target} (OpenAI-compatible HTTP on http://127.0.0.1:{http_port}/v1, "
            f"metrics on :{metrics_port})",
            flush=True,
        )
        client = [sys.executable, "-m", "bloomz_runtime.client", "--target", target]
        for cmd in (
            [*client, "info"],
            [*client, "bench", "--max-new-tokens", "100", "--warmup", "1", "--iterations", "3"],
            [*client, "dataset", "--limit", str(args.dataset_limit), "--batch-size", "4", "--no-progress"],
        ):
            print("$", " ".join(cmd[1:]), flush=True)
            subprocess.run(cmd, check=True)
    finally:
        if runtime.poll() is None:
            runtime.send_signal(signal.SIGTERM)
        code = runtime.wait(timeout=120)
    print(f"runtime stopped, exit code {code}", flush=True)
    return code


if __name__ == "__main__":
    sys.exit(main())
