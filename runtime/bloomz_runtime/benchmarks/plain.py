"""Baseline A, plain transformers: the worker process the benchmark runs on the same checkpoint.

    python -m bloomz_runtime.benchmarks.plain --model DIR --spec SPEC.json --task latency|concurrency|startup
        --out RESULT.json

Greedy `model.generate` with min_new_tokens = max_new_tokens (every run makes the same number of
tokens, like ignore_eos elsewhere), what a user without our runtime would run.
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import time
from pathlib import Path
from typing import Any


def _load(model_dir: str, dtype: str) -> tuple[Any, Any]:
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(model_dir)
    model = AutoModelForCausalLM.from_pretrained(model_dir, torch_dtype=getattr(torch, dtype))
    model.eval()
    return model, tokenizer


def _generate(model: Any, batch_ids: list[list[int]], new_tokens: int, pad_id: int) -> tuple[float, Any]:
    """One greedy generate of exactly `new_tokens` tokens for a batch (left-padded if lengths differ)."""
    import torch

    width = max(len(ids) for ids in batch_ids)
    input_ids = torch.tensor([[pad_id] * (width - len(ids)) + ids for ids in batch_ids])
    mask = torch.tensor([[0] * (width - len(ids)) + [1] * len(ids) for ids in batch_ids])
    with torch.inference_mode():
        start = time.perf_counter()
        output = model.generate(
            input_ids=input_ids,
            attention_mask=mask,
            do_sample=False,
            max_new_tokens=new_tokens,
            min_new_tokens=new_tokens,
            pad_token_id=pad_id,
        )
        elapsed = time.perf_counter() - start
    return elapsed, output[:, width:]


def latency(model: Any, pad_id: int, spec: dict[str, Any]) -> dict[str, Any]:
    """The blog's method: batch 1, greedy, N new tokens, warm-up, median of the timed runs."""
    ids, new_tokens = spec["prompt_ids"], spec["max_new_tokens"]
    for _ in range(spec["warmup"]):
        _generate(model, [ids], new_tokens, pad_id)
    runs = [_generate(model, [ids], new_tokens, pad_id) for _ in range(spec["runs"])]
    first = [_generate(model, [ids], 1, pad_id)[0] for _ in range(spec["runs"])]
    return {
        "latencies_s": [seconds for seconds, _ in runs],
        "latency_s": statistics.median(seconds for seconds, _ in runs),
        "first_token_s": statistics.median(first),
        "new_tokens": new_tokens,
        "token_ids": runs[0][1][0].tolist(),
    }


def concurrency(model: Any, pad_id: int, spec: dict[str, Any]) -> dict[str, Any]:
    """The dataset shape: every prompt one after another, then all of them as one batch."""
    prompts, new_tokens = spec["concurrent_prompt_ids"], spec["concurrent_new_tokens"]
    _generate(model, prompts[:1], new_tokens, pad_id)  # warm-up
    sequential = sum(_generate(model, [ids], new_tokens, pad_id)[0] for ids in prompts)
    _generate(model, prompts, 2, pad_id)  # warm-up of the batched shapes
    runs = [_generate(model, prompts, new_tokens, pad_id)[0] for _ in range(spec.get("concurrency_runs", 1))]
    batched = statistics.median(runs)
    total = len(prompts) * new_tokens
    return {
        "prompts": len(prompts),
        "new_tokens": new_tokens,
        "sequential_s": sequential,
        "sequential_tokens_per_second": total / sequential,
        "batched_s": batched,
        "batched_tokens_per_second": total / batched,
        "all_batched_s": runs,
    }


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--model", required=True)
    parser.add_argument("--spec", required=True, help="JSON written by the benchmark: prompts, counts")
    parser.add_argument("--task", choices=("latency", "concurrency", "startup"), required=True)
    parser.add_argument("--dtype", default="float32")
    parser.add_argument("--out", required=True)
    args = parser.parse_args(argv)
    spec = json.loads(Path(args.spec).read_text())

    load_start = time.perf_counter()
    model, tokenizer = _load(args.model, args.dtype)
    loaded = time.perf_counter()
    pad_id = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else tokenizer.eos_token_id
    result: dict[str, Any]
    if args.task == "latency":
        result = latency(model, pad_id, spec)
    elif args.task == "concurrency":
        result = concurrency(model, pad_id, spec)
    else:
        first_s, _ = _generate(model, [spec["prompt_ids"]], 1, pad_id)
        # The benchmark times the whole process (interpreter and imports included) from outside.
        result = {
            "load_s": loaded - load_start,
            "first_generate_s": first_s,
        }
    Path(args.out).write_text(json.dumps(result))
    return 0


if __name__ == "__main__":
    sys.exit(main())
