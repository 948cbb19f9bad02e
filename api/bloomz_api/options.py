"""The runtime's command-line options (a contract the operator renders too): one parser shared by the
launcher, every rank and the operator.

The launcher parses the flags, then hands the same options to each rank as argv again
(``to_argv``, which reads the flags off the parser), so the two can never disagree about a default;
the operator renders a pod's flags through the same ``to_argv``. A new flag is one ``add_argument``
and one ``ServeOptions`` field.
"""

from __future__ import annotations

import argparse
import os
from collections.abc import Iterable
from dataclasses import dataclass, field

from bloomz_api.constants import (
    BATCH_WAIT_MS,
    GRPC_PORT,
    HPU_GRAPHS,
    HTTP_PORT,
    KV_CACHE,
    MAX_BATCH_SIZE,
    MAX_INPUT_TOKENS,
    MAX_NEW_TOKENS,
    MAX_QUEUE_SIZE,
    METRICS_PORT,
)

DEVICES = ("hpu", "cuda", "cpu")
DTYPES = ("bfloat16", "float16", "float32")
LOG_FORMATS = ("text", "json")
BIND_HOST_ENV = "BLOOMZ_BIND_HOST"


@dataclass(frozen=True)
class ServeOptions:
    model: str
    device: str
    # A Hub branch, tag or commit to pin (None: the default branch); ignored for a local directory.
    revision: str | None = None
    world_size: int = 1
    port: int = GRPC_PORT
    metrics_port: int = METRICS_PORT
    dtype: str | None = None
    max_input_tokens: int = MAX_INPUT_TOKENS
    max_new_tokens: int = MAX_NEW_TOKENS
    max_batch_size: int = MAX_BATCH_SIZE
    max_queue_size: int = MAX_QUEUE_SIZE
    batch_wait_ms: int = BATCH_WAIT_MS
    kv_cache: bool = KV_CACHE
    hpu_graphs: bool = HPU_GRAPHS
    # None: where it pays off (CPUs with AVX-512); True: wherever it can run; False: never.
    screened_greedy: bool | None = None
    # None: on for hpu and cuda (graphs need it), off on cpu; see docs/runtime.md "Gaudi and CUDA".
    static_decode: bool | None = None
    warmup: bool = True
    # Warm up once at the largest prefill shape (None: on hpu/cuda, where memory runs out; off on cpu).
    warmup_largest: bool | None = None
    served_model_name: str | None = None
    # OpenAI-compatible HTTP beside gRPC (0: off), API keys and TLS for both protocols.
    http_port: int = HTTP_PORT
    api_key_file: str | None = None
    tls_cert_file: str | None = None
    tls_key_file: str | None = None
    chat_template: str | None = None
    grace_period_s: float = 30.0
    # A step (forward pass + collectives) longer than this is a hang: NOT_SERVING, exit non-zero.
    step_timeout_s: float = 120.0
    # Prompt tokens (padded) one step may prefill; a lone longer prompt still goes alone.
    max_prefill_tokens: int = 8192
    # Prompt + new tokens of one request (None: max_input_tokens + max_new_tokens).
    max_total_tokens: int | None = None
    log_format: str = "text"
    bind_host: str = field(default="0.0.0.0")

    @property
    def torch_dtype_name(self) -> str:
        """bfloat16 on accelerators; float32 on CPU (no native bf16 matmul on these CPUs)."""
        if self.dtype:
            return self.dtype
        return "float32" if self.device == "cpu" else "bfloat16"

    @property
    def uses_static_decode(self) -> bool:
        return self.device != "cpu" if self.static_decode is None else self.static_decode

    @property
    def warms_up_largest(self) -> bool:
        if self.warmup_largest is None:
            return self.warmup and self.device != "cpu"
        return self.warmup and self.warmup_largest

    @property
    def total_tokens_limit(self) -> int:
        return self.max_total_tokens or self.max_input_tokens + self.max_new_tokens

    @property
    def model_name(self) -> str:
        return self.served_model_name or self.model


def _positive(value: str) -> int:
    number = int(value)
    if number < 1:
        raise argparse.ArgumentTypeError(f"must be >= 1, got {number}")
    return number


def _seconds(value: str) -> float:
    number = float(value)
    if not number >= 0:
        raise argparse.ArgumentTypeError(f"must be >= 0 seconds, got {value}")
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
    p.add_argument(
        "--revision", default=None, help="Hub branch, tag or commit of --model (default: the main branch)"
    )
    p.add_argument("--world-size", type=_positive, default=1, help="tensor-parallel ranks (mpirun -np)")
    p.add_argument("--port", type=_port, default=GRPC_PORT, help="gRPC port")
    p.add_argument(
        "--metrics-port", type=_port, default=METRICS_PORT, help="Prometheus port (0: no metrics endpoint)"
    )
    p.add_argument(
        "--dtype", choices=DTYPES, default=None, help="default: bfloat16 on hpu/cuda, float32 on cpu"
    )
    p.add_argument("--max-input-tokens", type=_positive, default=MAX_INPUT_TOKENS)
    p.add_argument("--max-new-tokens", type=_positive, default=MAX_NEW_TOKENS)
    p.add_argument("--max-batch-size", type=_positive, default=MAX_BATCH_SIZE)
    p.add_argument("--max-queue-size", type=_positive, default=MAX_QUEUE_SIZE)
    p.add_argument(
        "--batch-wait-ms", type=int, default=BATCH_WAIT_MS, help="how long an idle engine gathers a batch"
    )
    p.add_argument("--kv-cache", action=argparse.BooleanOptionalAction, default=KV_CACHE)
    p.add_argument("--hpu-graphs", action=argparse.BooleanOptionalAction, default=HPU_GRAPHS)
    p.add_argument(
        "--screened-greedy",
        action=argparse.BooleanOptionalAction,
        default=None,
        help="cpu, 1 rank, float32: exact greedy ids from an int8-screened lm_head (see docs/runtime.md); "
        "default: on CPUs with AVX-512, where it is faster than the float32 head",
    )
    p.add_argument(
        "--static-decode",
        action=argparse.BooleanOptionalAction,
        default=None,
        help="BLOOM: decode in fixed slots of a preallocated cache, shapes bucketed, so HPU/CUDA graphs "
        "are captured once per bucket (default: on for hpu and cuda, off for cpu)",
    )
    p.add_argument("--no-warmup", dest="warmup", action="store_false", help="skip the warm-up generation")
    p.add_argument(
        "--warmup-largest",
        action=argparse.BooleanOptionalAction,
        default=None,
        help="also run one prefill (and a decode step) at the largest shape the limits allow, so running "
        "out of device memory shows at start-up, not under load (default: on for hpu/cuda)",
    )
    p.add_argument(
        "--served-model-name", default=None, help="model id of Info and /v1/models (default: --model)"
    )
    p.add_argument(
        "--http-port", type=_port, default=HTTP_PORT, help="OpenAI-compatible HTTP API port (0: no HTTP)"
    )
    p.add_argument(
        "--api-key-file",
        default=None,
        help="accepted API keys, one per line, re-read when the file changes (default: open service)",
    )
    p.add_argument("--tls-cert-file", default=None, help="PEM certificate chain: TLS on gRPC and HTTP")
    p.add_argument("--tls-key-file", default=None, help="PEM private key of --tls-cert-file")
    p.add_argument(
        "--chat-template",
        default=None,
        help="Jinja chat template for /v1/chat/completions, a file or the template itself "
        "(default: the built-in one, docs/runtime.md)",
    )
    p.add_argument(
        "--grace-period-s", type=float, default=30.0, help="SIGTERM: time to finish in-flight work"
    )
    p.add_argument(
        "--step-timeout-s",
        type=_seconds,
        default=120.0,
        help="a step running longer (a hung collective, a stopped rank) -> NOT_SERVING and exit 3 so the "
        "pod restarts; also the collective timeout once loaded (0: no watchdog)",
    )
    p.add_argument(
        "--max-prefill-tokens",
        type=_positive,
        default=8192,
        help="padded prompt tokens prefilled in one step (a single longer prompt still runs alone)",
    )
    p.add_argument(
        "--max-total-tokens",
        type=_positive,
        default=None,
        help="prompt + max_new_tokens of one request (default: max input + max new tokens)",
    )
    p.add_argument(
        "--log-format",
        choices=LOG_FORMATS,
        default="text",
        help="json: one JSON object per log line (request lines carry request_id, tokens, timings, code)",
    )
    return p


def parse_options(argv: list[str] | None = None, environ: dict[str, str] | None = None) -> ServeOptions:
    parser = build_parser()
    ns = parser.parse_args(argv)
    if (ns.tls_cert_file is None) != (ns.tls_key_file is None):
        parser.error("--tls-cert-file and --tls-key-file go together")
    env = os.environ if environ is None else environ
    values = vars(ns)
    return ServeOptions(bind_host=env.get(BIND_HOST_ENV, "0.0.0.0"), **values)


def to_argv(opts: ServeOptions, always: Iterable[str] = ()) -> list[str]:
    """The flags that reproduce ``opts``, read off the parser itself: the required ones, the fields named
    in ``always``, and every value that differs from its default (a flag added to ``build_parser`` is
    rendered with no change here, and a runtime that predates it never sees it unless it is set).
    The bind host travels in the environment, not argv."""
    explicit = set(always)
    argv: list[str] = []
    for action in build_parser()._actions:
        if not action.option_strings or action.dest == "help":
            continue
        value = getattr(opts, action.dest)
        if value == action.default and not action.required and action.dest not in explicit:
            continue
        if isinstance(action, argparse.BooleanOptionalAction):
            argv.append(action.option_strings[0] if value else action.option_strings[1])
        elif action.nargs == 0:  # store_true / store_false
            argv.append(action.option_strings[0])
        else:
            argv += [action.option_strings[0], str(value)]
    return argv
