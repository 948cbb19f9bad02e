"""`python -m bloomz_runtime.client` (or `bloomz-client`): generate, info, health, bench and dataset
against a running server; bench and dataset also over the OpenAI-compatible HTTP API (--protocol http).

The common options (--target, --json, --timeout) are accepted before or after the subcommand.
Exit codes: 0 success, 1 the server (or the connection) answered an error or is not serving, 2 bad usage
or input.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any, TextIO

from google.protobuf import json_format
from google.protobuf.message import Message

from bloomz_api.client import bench, dataset
from bloomz_api.client.connection import RpcFailure, TextGenerationClient
from bloomz_api.client.formatting import batch_block, bench_report, throughput_summary
from bloomz_api.client.openai_http import HttpFailure, OpenAIHttpClient, run_http_client_bench
from bloomz_api.client.requests import BENCHMARK_PROMPT, generation_parameters
from bloomz_api.constants import BENCHMARK_MAX_NEW_TOKENS, GRPC_PORT, HTTP_PORT, SERVICE_NAME
from bloomz_api.proto import generate_pb2

DEFAULT_TARGET = f"localhost:{GRPC_PORT}"
DEFAULT_HTTP_TARGET = f"localhost:{HTTP_PORT}"
PROTOCOLS = ("grpc", "http")
HTTP_COMMANDS = ("bench", "dataset")
DEFAULT_TIMEOUT_S = 600.0
EXIT_RPC_ERROR = 1
EXIT_USAGE = 2
EXIT_INTERRUPTED = 130  # the shell's convention for Ctrl-C


def _common_options(parser: argparse.ArgumentParser, *, top_level: bool) -> None:
    # Subcommands repeat the options with SUPPRESS defaults so a value given before the
    # subcommand is not overwritten by the subparser's default.
    def default(value: Any) -> Any:
        return value if top_level else argparse.SUPPRESS

    parser.add_argument(
        "--target",
        default=default(os.environ.get("BLOOMZ_TARGET")),
        help=f"server address HOST:PORT, or an http(s):// URL with --protocol http (default: $BLOOMZ_TARGET, "
        f"else {DEFAULT_TARGET}, or {DEFAULT_HTTP_TARGET} with --protocol http)"
        if top_level
        else argparse.SUPPRESS,
    )
    parser.add_argument(
        "--protocol",
        choices=PROTOCOLS,
        default=default("grpc"),
        help="gRPC (default) or the OpenAI-compatible HTTP API (/v1/completions; bench and dataset only)"
        if top_level
        else argparse.SUPPRESS,
    )
    parser.add_argument(
        "--json",
        action="store_true",
        default=default(False),
        help="print JSON for scripts" if top_level else argparse.SUPPRESS,
    )
    parser.add_argument(
        "--api-key",
        default=default(os.environ.get("BLOOMZ_API_KEY")),
        help="API key sent as 'authorization: Bearer <key>' (default: $BLOOMZ_API_KEY)"
        if top_level
        else argparse.SUPPRESS,
    )
    parser.add_argument(
        "--tls",
        action="store_true",
        default=default(False),
        help="connect with TLS (verified with --ca-cert, else the system's roots)"
        if top_level
        else argparse.SUPPRESS,
    )
    parser.add_argument(
        "--ca-cert",
        default=default(None),
        help="PEM file of the CA that signed the server's certificate (implies --tls)"
        if top_level
        else argparse.SUPPRESS,
    )
    parser.add_argument(
        "--timeout",
        type=float,
        default=default(DEFAULT_TIMEOUT_S),
        help="deadline of each call in seconds (default %(default)s)" if top_level else argparse.SUPPRESS,
    )


def _positive_int(text: str) -> int:
    value = int(text)
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be at least 1, got {value}")
    return value


def _non_negative_int(text: str) -> int:
    value = int(text)
    if value < 0:
        raise argparse.ArgumentTypeError(f"must be at least 0, got {value}")
    return value


def invoked_as(argv0: str, main_module: str | None) -> str:
    """How the user started the client, for usage lines: `bloomz-client` or `python -m <package>`."""
    if os.path.basename(argv0) in ("__main__.py", "client.py") and main_module:
        return f"python -m {main_module.removesuffix('.__main__')}"
    return os.path.basename(argv0) or "bloomz-client"


def _prompt(text: str) -> str:
    """The prompt argument; "-" reads it from standard input (a file, a pipe, a heredoc)."""
    return sys.stdin.read() if text == "-" else text


def build_parser(prog: str | None = None) -> argparse.ArgumentParser:
    if prog is None:
        main_spec = getattr(sys.modules.get("__main__"), "__spec__", None)
        prog = invoked_as(sys.argv[0], main_spec.name if main_spec else None)
    parser = argparse.ArgumentParser(
        prog=prog,
        description="Client of the bloomz.v1.TextGeneration gRPC service.",
    )
    _common_options(parser, top_level=True)
    commands = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    generate = commands.add_parser("generate", help="complete one prompt")
    _common_options(generate, top_level=False)
    generate.add_argument("prompt", type=_prompt, help='the text to continue; "-" reads it from stdin')
    generate.add_argument("--max-new-tokens", type=_positive_int, help="default: the server's")
    generate.add_argument("--do-sample", action="store_true", help="sample instead of greedy search")
    generate.add_argument(
        "--temperature", type=float, help="with --do-sample: divides the logits (> 0; below 1 is sharper)"
    )
    generate.add_argument("--top-k", type=int, help="with --do-sample: sample among the K likeliest tokens")
    generate.add_argument(
        "--top-p", type=float, help="with --do-sample: sample among the likeliest tokens holding P (0-1]"
    )
    generate.add_argument("--seed", type=_non_negative_int, help="sampling seed (reproducible sampling)")
    generate.add_argument(
        "--repetition-penalty", type=float, help="> 1 makes tokens already in the text less likely"
    )
    generate.add_argument(
        "--stop",
        action="append",
        default=[],
        metavar="S",
        help="stop when the text contains S (the text ends before it); repeat for several",
    )
    generate.add_argument("--ignore-eos", action="store_true", help="keep generating past end-of-sequence")
    generate.add_argument("--stream", action="store_true", help="print tokens as they arrive")

    info = commands.add_parser("info", help="what the server runs: model, device, world size, limits")
    _common_options(info, top_level=False)

    health = commands.add_parser("health", help="the grpc.health.v1 status; exit code 0 only when SERVING")
    _common_options(health, top_level=False)
    health.add_argument(
        "--service",
        default=SERVICE_NAME,
        help='service to check ("" for the whole server; default %(default)s)',
    )

    bench_cmd = commands.add_parser(
        "bench", help="the BLOOMZ-on-Gaudi2 latency benchmark: batch 1, greedy, a fixed number of new tokens"
    )
    _common_options(bench_cmd, top_level=False)
    bench_cmd.add_argument("--prompt", default=BENCHMARK_PROMPT, help="default: %(default)r")
    bench_cmd.add_argument(
        "--max-new-tokens",
        type=_positive_int,
        default=BENCHMARK_MAX_NEW_TOKENS,
        help="tokens generated per run, end-of-sequence ignored (default %(default)s)",
    )
    bench_cmd.add_argument(
        "--warmup", type=_non_negative_int, default=2, help="untimed runs first (default %(default)s)"
    )
    bench_cmd.add_argument(
        "--iterations",
        type=_positive_int,
        default=5,
        help="timed runs; the median counts (default %(default)s)",
    )
    bench_cmd.add_argument(
        "--mode",
        choices=("server", "client", "both"),
        help="server: the Benchmark RPC; client: timed streamed generations from here; both (the default "
        "over gRPC; over HTTP only client exists)",
    )

    data = commands.add_parser("dataset", help="complete the first tokens of every sample of a dataset")
    _common_options(data, top_level=False)
    data.add_argument(
        "file", nargs="?", help="local JSON / JSONL / CSV / Parquet file (default: the packaged news sample)"
    )
    data.add_argument("--dataset-name", help="a Hub dataset instead of a file (needs a reachable Hub)")
    data.add_argument("--dataset-config", help="the Hub dataset's configuration name")
    data.add_argument("--split", default="train")
    data.add_argument("--column", default="content", help="the text column (default %(default)s)")
    data.add_argument("--input-tokens", type=_positive_int, default=16, help="prompt cut to N tokens")
    data.add_argument("--max-new-tokens", type=_positive_int, default=50)
    data.add_argument("--batch-size", type=_positive_int, default=8)
    data.add_argument("--limit", type=_positive_int, help="use only the first N samples")
    data.add_argument("--format", choices=dataset.FORMATS, help="default: from the file extension")
    data.add_argument("--no-progress", action="store_true", help="no progress bar on stderr")
    return parser


def parse_args(argv: Sequence[str] | None = None) -> argparse.Namespace:
    """The options, with the defaults that depend on --protocol filled in (target, bench mode)."""
    args = build_parser().parse_args(argv)
    http = args.protocol == "http"
    if args.target is None:
        args.target = DEFAULT_HTTP_TARGET if http else DEFAULT_TARGET
    if getattr(args, "mode", "") is None:
        args.mode = "client" if http else "both"
    return args


def message_dict(message: Message) -> dict[str, Any]:
    return json_format.MessageToDict(
        message, preserving_proto_field_name=True, always_print_fields_with_no_presence=True
    )


def _print_json(value: Any, out: TextIO) -> None:
    print(json.dumps(value, ensure_ascii=False), file=out, flush=True)


def _generate(client: TextGenerationClient, args: argparse.Namespace, out: TextIO) -> None:
    request = generate_pb2.GenerateRequest(
        prompt=args.prompt,
        parameters=generation_parameters(
            max_new_tokens=args.max_new_tokens,
            do_sample=args.do_sample,
            temperature=args.temperature,
            top_k=args.top_k,
            top_p=args.top_p,
            repetition_penalty=args.repetition_penalty,
            seed=args.seed,
            stop=args.stop,
            ignore_eos=args.ignore_eos,
        ),
    )
    if not args.stream:
        response = client.generate(request)
        if args.json:
            _print_json(message_dict(response), out)
        else:
            print(response.text, file=out)
        return
    for piece in client.generate_stream(request):
        if args.json:
            _print_json(message_dict(piece), out)
        else:
            print(piece.text, end="", file=out, flush=True)
    if not args.json:
        print(file=out)


def _info(client: TextGenerationClient, args: argparse.Namespace, out: TextIO) -> None:
    info = client.info()
    if args.json:
        _print_json(message_dict(info), out)
        return
    limits = info.limits
    lines = [
        f"model:       {info.model} ({info.model_type}, {info.parameters:,} parameters)",
        f"device:      {info.device} x {info.world_size} (backend {info.backend or '-'}), dtype {info.dtype}",
        f"kv cache:    {'on' if info.kv_cache else 'off'}, hpu graphs: {'on' if info.hpu_graphs else 'off'}",
        f"limits:      max input tokens {limits.max_input_tokens}, max new tokens {limits.max_new_tokens}, "
        f"max batch {limits.max_batch_size}, max queue {limits.max_queue_size}, "
        f"batch wait {limits.batch_wait_ms} ms",
        "versions:    " + ", ".join(f"{name} {version}" for name, version in sorted(info.versions.items())),
    ]
    print("\n".join(lines), file=out)


def _bench(client: TextGenerationClient | OpenAIHttpClient, args: argparse.Namespace, out: TextIO) -> None:
    rows: list[bench.BenchRow] = []
    measure = (args.prompt, args.max_new_tokens, args.warmup, args.iterations)
    if isinstance(client, OpenAIHttpClient):
        rows.append(run_http_client_bench(client, *measure))
    else:
        rows.extend(_grpc_bench_rows(client, args.mode, measure))
    ratio = bench.client_to_server_ratio(rows)
    if args.json:
        _print_json({"rows": [row.as_dict() for row in rows], "client_to_server_ratio": ratio}, out)
    else:
        print(bench_report(rows, ratio), file=out)


def _grpc_bench_rows(
    client: TextGenerationClient, mode: str, measure: tuple[str, int, int, int]
) -> list[bench.BenchRow]:
    info = client.info()
    rows: list[bench.BenchRow] = []
    if mode in ("server", "both"):
        rows.append(bench.run_server_bench(client, info, *measure))
    if mode in ("client", "both"):
        rows.append(bench.run_client_bench(client, info, *measure))
    return rows


def _dataset(client: TextGenerationClient | OpenAIHttpClient, args: argparse.Namespace, out: TextIO) -> None:
    texts = dataset.load_texts(
        args.file,
        column=args.column,
        dataset_name=args.dataset_name,
        dataset_config=args.dataset_config,
        split=args.split,
        file_format=args.format,
        limit=args.limit,
    )

    def report(result: dataset.BatchResult) -> None:
        if args.json:
            _print_json(
                {
                    "batch": result.number,
                    "inputs": result.inputs,
                    "outputs": result.outputs,
                    "generated_tokens": result.generated_tokens,
                    "seconds": result.seconds,
                },
                out,
            )
        else:
            print(batch_block(result.number, result.inputs, result.outputs), file=out, flush=True)

    summary = dataset.run_dataset(
        client,
        texts,
        batch_size=args.batch_size,
        input_tokens=args.input_tokens,
        max_new_tokens=args.max_new_tokens,
        on_batch=report,
        progress=not args.no_progress,
    )
    if args.json:
        _print_json(
            {
                "summary": {
                    "samples": summary.samples,
                    "generated_tokens": summary.generated_tokens,
                    "seconds": summary.seconds,
                    "tokens_per_second": summary.tokens_per_second,
                }
            },
            out,
        )
    else:
        print(throughput_summary(summary.samples, summary.generated_tokens, summary.seconds), file=out)


def _health(client: TextGenerationClient, args: argparse.Namespace, out: TextIO) -> None:
    status = client.health(args.service)
    if args.json:
        _print_json({"service": args.service, "status": status}, out)
    else:
        print(status, file=out)
    if status != "SERVING":
        raise NotServing(status)


class NotServing(Exception):
    """The health service answered, with something other than SERVING."""


def usage_problem(args: argparse.Namespace) -> str | None:
    """What the options ask for that the chosen protocol cannot do (pure, for the tests)."""
    if args.protocol != "http":
        return None
    if args.command not in HTTP_COMMANDS:
        return f"{args.command} speaks gRPC only; --protocol http serves {' and '.join(HTTP_COMMANDS)}"
    if args.command == "bench" and args.mode != "client":
        return "--protocol http measures from the client only (--mode client); the Benchmark RPC is gRPC"
    return None


def _connect(args: argparse.Namespace, ca_cert: bytes | None) -> TextGenerationClient | OpenAIHttpClient:
    if args.protocol == "http":
        return OpenAIHttpClient(
            args.target,
            timeout=args.timeout,
            api_key=args.api_key,
            tls=args.tls,
            ca_cert=ca_cert,
            default_port=HTTP_PORT,
        )
    return TextGenerationClient(
        args.target, timeout=args.timeout, api_key=args.api_key, tls=args.tls, ca_cert=ca_cert
    )


# usage_problem keeps the gRPC-only commands from an HTTP client.
_COMMANDS: dict[str, Callable[[Any, argparse.Namespace, TextIO], None]] = {
    "generate": _generate,
    "info": _info,
    "health": _health,
    "bench": _bench,
    "dataset": _dataset,
}


def main(argv: Sequence[str] | None = None, out: TextIO | None = None, err: TextIO | None = None) -> int:
    out = out or sys.stdout
    err = err or sys.stderr
    args = parse_args(argv)
    problem = usage_problem(args)
    if problem:
        print(f"error: {problem}", file=err)
        return EXIT_USAGE
    try:
        ca_cert = Path(args.ca_cert).read_bytes() if args.ca_cert else None
    except OSError as problem:
        print(f"error: --ca-cert: {problem}", file=err)
        return EXIT_USAGE
    try:
        connection = _connect(args, ca_cert)
    except ValueError as problem:  # an address that is not one
        print(f"error: --target: {problem}", file=err)
        return EXIT_USAGE
    try:
        with connection as client:
            _COMMANDS[args.command](client, args, out)
    except RpcFailure as failure:
        print(f"error: {failure.method} failed: {failure.code.name}: {failure.details}", file=err)
        return EXIT_RPC_ERROR
    except HttpFailure as failure:
        status = f"HTTP {failure.status}" if failure.status else "no answer"
        print(f"error: {failure.method} failed: {status}: {failure.message}", file=err)
        return EXIT_RPC_ERROR
    except NotServing:
        return EXIT_RPC_ERROR
    except dataset.DatasetError as problem:
        print(f"error: {problem}", file=err)
        return EXIT_USAGE
    except KeyboardInterrupt:  # leaving the with-block closed the channel: the server cancels the call
        print("interrupted", file=err)
        return EXIT_INTERRUPTED
    return 0
