"""The runtime's command-line options: one parser shared by the launcher and every rank.

The launcher parses the flags, then hands the same options to each rank as argv again
(``to_argv``), so the two can never disagree about a default.
"""

from __future__ import annotations

import argparse
import os
from dataclasses import dataclass, field

DEVICES = ("hpu", "cuda", "cpu")
DTYPES = ("bfloat16", "float16", "float32")
LOG_FORMATS = ("text", "json")
BIND_HOST_ENV = "BLOOMZ_BIND_HOST"


@dataclass(frozen=True)
class ServeOptions:
    model: str
    device: str
    world_size: int = 1
    port: int = 50051
    metrics_port: int = 9090
    dtype: str | None = None
    max_input_tokens: int = 2048
    max_new_tokens: int = 1024
    max_batch_size: int = 8
    max_queue_size: int = 64
    batch_wait_ms: int = 5
    kv_cache: bool = True
    hpu_graphs: bool = True
    # None: where it pays off (CPUs with AVX-512); True: wherever it can run; False: never.
    screened_greedy: bool | None = None
    warmup: bool = True
    served_model_name: str | None = None
    grace_period_s: float = 30.0
    log_format: str = "text"
    bind_host: str = field(default="0.0.0.0")

    @property
    def torch_dtype_name(self) -> str:
        """bfloat16 on accelerators; float32 on CPU (no native bf16 matmul on these CPUs)."""
        if self.dtype:
            return self.dtype
        return "float32" if self.device == "cpu" else "bfloat16"

    @property
    def model_name(self) -> str:
        return self.served_model_name or self.model


def _positive(value: str) -> int:
    number = int(value)
    if number < 1:
        raise argparse.ArgumentTypeError(f"must be >= 1, got {number}")
    return number


def _port(value: str) -> int:
    number = int(value)
    if not 0 <= number <= 65535:
        raise argparse.ArgumentTypeError(f"not a port: {number}")
    return number


def build_parser(prog: str | None = None) -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog=prog, description="BLOOMZ gRPC inference runtime")
    p.add_argument("--model", required=True, help="local checkpoint directory or Hugging Face Hub id")
    p.add_argument("--device", required=True, choices=DEVICES)
    p.add_argument("--world-size", type=_positive, default=1, help="tensor-parallel ranks (mpirun -np)")
    p.add_argument("--port", type=_port, default=50051, help="gRPC port")
    p.add_argument(
        "--metrics-port", type=_port, default=9090, help="Prometheus port (0: no metrics endpoint)"
    )
    p.add_argument(
        "--dtype", choices=DTYPES, default=None, help="default: bfloat16 on hpu/cuda, float32 on cpu"
    )
    p.add_argument("--max-input-tokens", type=_positive, default=2048)
    p.add_argument("--max-new-tokens", type=_positive, default=1024)
    p.add_argument("--max-batch-size", type=_positive, default=8)
    p.add_argument("--max-queue-size", type=_positive, default=64)
    p.add_argument("--batch-wait-ms", type=int, default=5, help="how long an idle engine gathers a batch")
    p.add_argument("--kv-cache", action=argparse.BooleanOptionalAction, default=True)
    p.add_argument("--hpu-graphs", action=argparse.BooleanOptionalAction, default=True)
    p.add_argument(
        "--screened-greedy",
        action=argparse.BooleanOptionalAction,
        default=None,
        help="cpu, 1 rank, float32: exact greedy ids from an int8-screened lm_head (see docs/runtime.md); "
        "default: on CPUs with AVX-512, where it is faster than the float32 head",
    )
    p.add_argument("--no-warmup", dest="warmup", action="store_false", help="skip the warm-up generation")
    p.add_argument("--served-model-name", default=None, help="model name reported by Info (default: --model)")
    p.add_argument(
        "--grace-period-s", type=float, default=30.0, help="SIGTERM: time to finish in-flight work"
    )
    p.add_argument(
        "--log-format",
        choices=LOG_FORMATS,
        default="text",
        help="json: one JSON object per log line (request lines carry request_id, tokens, timings, code)",
    )
    return p


def parse_options(argv: list[str] | None = None, environ: dict[str, str] | None = None) -> ServeOptions:
    ns = build_parser().parse_args(argv)
    env = os.environ if environ is None else environ
    values = vars(ns)
    return ServeOptions(bind_host=env.get(BIND_HOST_ENV, "0.0.0.0"), **values)


def to_argv(opts: ServeOptions) -> list[str]:
    """The flags that reproduce ``opts`` (bind host travels in the environment, not argv)."""
    argv = [
        "--model", opts.model,
        "--device", opts.device,
        "--world-size", str(opts.world_size),
        "--port", str(opts.port),
        "--metrics-port", str(opts.metrics_port),
        "--max-input-tokens", str(opts.max_input_tokens),
        "--max-new-tokens", str(opts.max_new_tokens),
        "--max-batch-size", str(opts.max_batch_size),
        "--max-queue-size", str(opts.max_queue_size),
        "--batch-wait-ms", str(opts.batch_wait_ms),
        "--kv-cache" if opts.kv_cache else "--no-kv-cache",
        "--hpu-graphs" if opts.hpu_graphs else "--no-hpu-graphs",
        "--grace-period-s", str(opts.grace_period_s),
    ]  # fmt: skip
    if opts.dtype:
        argv += ["--dtype", opts.dtype]
    if opts.screened_greedy is not None:
        argv.append("--screened-greedy" if opts.screened_greedy else "--no-screened-greedy")
    if not opts.warmup:
        argv.append("--no-warmup")
    if opts.log_format != "text":
        argv += ["--log-format", opts.log_format]
    if opts.served_model_name:
        argv += ["--served-model-name", opts.served_model_name]
    return argv
