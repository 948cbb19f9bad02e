"""One command for a CUDA machine: plain transformers against our decode path on a 7B1-shaped BLOOM.

    make bench-gpu                      (= python -m bloomz_runtime.benchmarks.gpu)
    python -m bloomz_runtime.benchmarks.gpu --shape tiny --device cpu --dtype float32   (CPU check)

A random-weight BLOOM with BLOOMZ-7B1's shape (hidden 4096, 30 layers, 32 heads, vocabulary
250880) is built in bfloat16 directly on the GPU (no checkpoint file), then on that one model:
plain ``transformers`` greedy ``generate`` and ours (the runtime's engine, 1 rank, static decode,
one CUDA graph per bucket pair) at batch 1 and at ``--clients`` rows, ``--new-tokens`` each.
It prints the ratios and the HBM roofline (weights read per token / bandwidth, 4.8 TB/s for an
H200 unless ``--bandwidth-gbs`` says otherwise) and writes everything to a JSON file.

Ours is measured at the engine (the step loop every rank runs, token choice included), not
through gRPC: the server's per-request overhead is measured by ``make bench`` on CPU.
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from types import SimpleNamespace
from typing import Any

# Shapes: BLOOMZ-7B1 and the tests' tiny one (peaked random logits: float32 CPU runs agree exactly).
SHAPES: dict[str, dict[str, Any]] = {
    "7b1": {
        "hidden_size": 4096,
        "n_layer": 30,
        "n_head": 32,
        "vocab_size": 250880,
        "initializer_range": 0.02,
    },
    "tiny": {"hidden_size": 256, "n_layer": 4, "n_head": 8, "vocab_size": 1024, "initializer_range": 0.1},
}
H200_BANDWIDTH_GBS = 4800.0
PAD_ID = 3  # BLOOM's <pad>
TARGET_S_PER_100 = 0.40


def log(message: str) -> None:
    print(f"[bench-gpu {time.strftime('%H:%M:%S')}] {message}", flush=True)


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="python -m bloomz_runtime.benchmarks.gpu", description=__doc__.split("\n")[0]
    )
    p.add_argument("--shape", choices=sorted(SHAPES), default="7b1")
    p.add_argument("--device", default="cuda", help="cuda (default) or cpu (the tests' check of this script)")
    p.add_argument("--dtype", choices=("bfloat16", "float16", "float32"), default="bfloat16")
    p.add_argument("--new-tokens", type=int, default=100)
    p.add_argument("--prompt-tokens", type=int, default=16)
    p.add_argument("--clients", type=int, default=16, help="rows of the concurrent run")
    p.add_argument("--reps", type=int, default=3, help="timed runs per measurement (median)")
    p.add_argument("--bandwidth-gbs", type=float, default=H200_BANDWIDTH_GBS, help="memory bandwidth, GB/s")
    p.add_argument(
        "--no-graphs", dest="graphs", action="store_false", help="static decode without CUDA graphs"
    )
    p.add_argument("--budget-s", type=float, default=420.0, help="skip what is left past this many seconds")
    p.add_argument(
        "--out", type=Path, default=None, help="JSON result (default bench-results/gpu-<time>.json)"
    )
    return p


@dataclass
class Setup:
    model: Any
    device: Any
    dtype: Any
    parameters: int


def preflight(device: str) -> dict[str, str]:
    """Versions, and a clear stop when this machine cannot run the benchmark."""
    try:
        import torch
        import transformers
    except ImportError as exc:
        raise SystemExit(f"bench-gpu needs torch and transformers (4.55.x) importable: {exc}") from exc
    facts = {
        "python": sys.version.split()[0],
        "torch": str(torch.__version__),
        "transformers": transformers.__version__,
    }
    if device.startswith("cuda"):
        if not torch.cuda.is_available():
            raise SystemExit(
                f"--device {device}: torch {torch.__version__} sees no CUDA device (a CPU build?)"
            )
        props = torch.cuda.get_device_properties(torch.device(device))
        facts.update(
            gpu=props.name, gpu_memory_gb=f"{props.total_memory / 1e9:.1f}", cuda=str(torch.version.cuda)
        )
    return facts


def build_model(shape: str, device: str, dtype_name: str, seed: int = 0) -> Setup:
    """Random weights made where they will run: no 14 GB file written and read back."""
    import torch
    from transformers import BloomConfig, BloomForCausalLM

    dtype = getattr(torch, dtype_name)
    config = BloomConfig(**SHAPES[shape], pad_token_id=PAD_ID, bos_token_id=1, eos_token_id=2)
    torch.manual_seed(seed)
    target = torch.device(device)
    with target:
        model = BloomForCausalLM._from_config(config, torch_dtype=dtype)
    model = model.eval()
    if target.type == "cuda":
        torch.cuda.synchronize(target)
    return Setup(model, target, dtype, int(sum(p.numel() for p in model.parameters())))


def make_runner(setup: Setup, rows: int, max_length: int, graphs: bool) -> Any:
    """Our runner over the same model object: static decode, CUDA graphs on cuda (unless told not)."""
    from bloomz_runtime.backends.bloom import BloomRunner

    runner_class: type[BloomRunner] = BloomRunner
    if setup.device.type == "cuda" and graphs:
        from bloomz_runtime.backends.cuda import CudaBloomRunner

        runner_class = CudaBloomRunner
    runner = runner_class(
        model=setup.model,
        tokenizer=SimpleNamespace(pad_token_id=PAD_ID, eos_token_id=None),
        device=setup.device,
        dtype=setup.dtype,
        backend=f"{setup.device.type}-bench",
        parameters=setup.parameters,
    )
    runner.static_decode = True
    runner.slot_rows = rows
    runner.slot_length = max_length
    return runner


def prompts(count: int, length: int, vocab: int, seed: int = 1) -> list[list[int]]:
    import torch

    generator = torch.Generator().manual_seed(seed)
    ids = torch.randint(5, vocab, (count, length), generator=generator)
    return ids.tolist()


def sync(device: Any) -> None:
    import torch

    if device.type == "cuda":
        torch.cuda.synchronize(device)


def plain_generate(
    setup: Setup, batch: Sequence[Sequence[int]], new_tokens: int
) -> tuple[float, list[list[int]]]:
    """transformers' greedy generate of exactly ``new_tokens`` (equal-length prompts: no padding)."""
    import torch

    input_ids = torch.tensor([list(p) for p in batch], device=setup.device)
    with torch.inference_mode():
        sync(setup.device)
        start = time.perf_counter()
        out = setup.model.generate(
            input_ids=input_ids,
            attention_mask=torch.ones_like(input_ids),
            max_new_tokens=new_tokens,
            min_new_tokens=new_tokens,
            do_sample=False,
            eos_token_id=None,
            pad_token_id=PAD_ID,
        )
        sync(setup.device)
        elapsed = time.perf_counter() - start
    return elapsed, out[:, input_ids.shape[1] :].tolist()


def ours_generate(
    engine: Any, batch: Sequence[Sequence[int]], new_tokens: int
) -> tuple[float, list[list[int]]]:
    """The engine's steps as the coordinator drives them: admit every row, decode, drop."""
    from bloomz_runtime.commands import Step

    rows = tuple(f"r{i}" for i in range(len(batch)))
    out: list[list[int]] = [[] for _ in batch]
    sync(engine.runner.device)
    start = time.perf_counter()
    scores = engine.apply(Step(admit=tuple(zip(rows, (tuple(p) for p in batch), strict=True)), logits=False))
    while True:
        for row, token in zip(out, scores.greedy.tolist(), strict=True):
            row.append(int(token))
        if len(out[0]) >= new_tokens:
            break
        scores = engine.apply(Step(decode=tuple(row[-1] for row in out), logits=False))
    sync(engine.runner.device)
    elapsed = time.perf_counter() - start
    engine.apply(Step(drop=rows))
    return elapsed, out


def timed(
    run: Callable[[], tuple[float, list[list[int]]]], reps: int, label: str
) -> tuple[list[float], list[list[int]]]:
    run()  # warm-up: kernels, cuBLAS handles, graph capture
    times: list[float] = []
    tokens: list[list[int]] = []
    for _ in range(reps):
        elapsed, tokens = run()
        times.append(elapsed)
    log(f"{label}: {statistics.median(times):.3f} s (runs {', '.join(f'{t:.3f}' for t in times)})")
    return times, tokens


def agreement(a: list[list[int]], b: list[list[int]]) -> float:
    """Fraction of rows whose tokens agree up to the first difference, averaged (1.0 = identical)."""
    shares = []
    for x, y in zip(a, b, strict=True):
        same = next((i for i, (p, q) in enumerate(zip(x, y, strict=False)) if p != q), min(len(x), len(y)))
        shares.append(same / max(len(x), 1))
    return sum(shares) / max(len(shares), 1)


def roofline_s_per_token(weight_bytes: int, bandwidth_gbs: float) -> float:
    """Batch-1 decode reads every weight once per token."""
    return weight_bytes / (bandwidth_gbs * 1e9)


def run(args: argparse.Namespace) -> dict[str, Any]:
    from bloomz_runtime.engine import BatchEngine

    began = time.monotonic()
    facts = preflight(args.device)
    log("machine: " + ", ".join(f"{k} {v}" for k, v in facts.items()))
    log(f"building a {args.shape}-shaped BLOOM in {args.dtype} on {args.device}")
    setup = build_model(args.shape, args.device, args.dtype)
    log(f"{setup.parameters / 1e6:,.1f} M parameters in {time.monotonic() - began:.1f} s")
    vocab = SHAPES[args.shape]["vocab_size"]
    single = prompts(1, args.prompt_tokens, vocab)
    many = prompts(args.clients, args.prompt_tokens, vocab, seed=2)
    runner = make_runner(setup, args.clients, args.prompt_tokens + args.new_tokens, args.graphs)
    engine = BatchEngine(runner)
    weight_bytes = runner.decode_weight_bytes
    roofline = roofline_s_per_token(weight_bytes, args.bandwidth_gbs)
    result: dict[str, Any] = {
        "machine": facts,
        "shape": args.shape,
        "dtype": args.dtype,
        "parameters": setup.parameters,
        "new_tokens": args.new_tokens,
        "prompt_tokens": args.prompt_tokens,
        "clients": args.clients,
        "graphs": bool(args.graphs and setup.device.type == "cuda"),
        "weight_bytes_per_token": weight_bytes,
        "bandwidth_gbs": args.bandwidth_gbs,
        "roofline_s_per_new_tokens": roofline * args.new_tokens,
        "skipped": [],
    }
    n = args.new_tokens
    plan: list[tuple[str, Callable[[], tuple[float, list[list[int]]]]]] = [
        ("plain_batch1", lambda: plain_generate(setup, single, n)),
        ("ours_batch1", lambda: ours_generate(engine, single, n)),
        ("plain_clients", lambda: plain_generate(setup, many, n)),
        ("ours_clients", lambda: ours_generate(engine, many, n)),
    ]
    tokens: dict[str, list[list[int]]] = {}
    for name, job in plan:
        if time.monotonic() - began > args.budget_s:
            log(f"{name}: skipped, past the {args.budget_s:.0f} s budget")
            result["skipped"].append(name)
            continue
        times, tokens[name] = timed(job, args.reps, name)
        result[name] = {"seconds": times, "median_s": statistics.median(times)}
    summarize(result, tokens)
    result["total_s"] = time.monotonic() - began
    return result


def summarize(result: dict[str, Any], tokens: dict[str, list[list[int]]]) -> None:
    """Ratios, roofline share and token agreement into ``result``, and printed."""
    n, clients = result["new_tokens"], result["clients"]
    roofline = result["roofline_s_per_new_tokens"]
    lines = [f"roofline ({result['bandwidth_gbs']:.0f} GB/s): {roofline:.3f} s per {n} tokens"]
    if "plain_batch1" in result and "ours_batch1" in result:
        plain, ours = result["plain_batch1"]["median_s"], result["ours_batch1"]["median_s"]
        result["batch1_ours_over_plain"] = ours / plain
        result["batch1_roofline_share"] = result["roofline_s_per_new_tokens"] / ours
        result["batch1_agreement"] = agreement(tokens["plain_batch1"], tokens["ours_batch1"])
        target = TARGET_S_PER_100 * n / 100
        result["batch1_target_met"] = ours <= target
        lines += [
            f"batch 1, {n} tokens: plain {plain:.3f} s, ours {ours:.3f} s, ours/plain {ours / plain:.2f}",
            f"  ours at {100 * result['batch1_roofline_share']:.0f} % of the roofline; "
            f"target <= {target:.2f} s: {'met' if ours <= target else 'not met'}",
            f"  greedy tokens agree for {100 * result['batch1_agreement']:.0f} % of the way "
            "(random bf16 weights have near-ties)",
        ]
    if "plain_clients" in result and "ours_clients" in result:
        plain_tps = clients * n / result["plain_clients"]["median_s"]
        ours_tps = clients * n / result["ours_clients"]["median_s"]
        result["clients_tokens_per_s"] = {
            "plain": plain_tps,
            "ours": ours_tps,
            "ours_over_plain": ours_tps / plain_tps,
        }
        result["clients_agreement"] = agreement(tokens["plain_clients"], tokens["ours_clients"])
        lines.append(
            f"{clients} clients: plain {plain_tps:.0f} tokens/s, ours {ours_tps:.0f} tokens/s, "
            f"ours/plain {ours_tps / plain_tps:.2f}"
        )
    for line in lines:
        log(line)


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    out = args.out or Path("bench-results") / f"gpu-{time.strftime('%Y%m%d-%H%M%S')}.json"
    try:
        result = run(args)
    except SystemExit:
        raise
    except Exception as exc:
        # Whatever happened, leave a record of it next to the results of other runs.
        out.parent.mkdir(parents=True, exist_ok=True)
        out.write_text(json.dumps({"error": f"{type(exc).__name__}: {exc}"}, indent=2))
        log(f"failed: {type(exc).__name__}: {exc} (written to {out})")
        raise
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(result, indent=2))
    log(f"done in {result['total_s']:.0f} s; JSON in {out}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
