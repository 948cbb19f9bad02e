"""Baseline B, vLLM on CPU: run by path with the vLLM virtual environment's python.

    .cache/vllm-venv/bin/python runtime/bloomz_runtime/benchmarks/vllm_peer.py --model DIR --spec SPEC.json
        --out RESULT.json

Standalone on purpose (standard library + vllm only): that environment has another torch and
transformers 5.x and cannot import this project. Offline `LLM.generate` with the same token-id
prompts as the other columns, temperature 0 (greedy) and ignore_eos, like for like. The settings
that make it fastest on this machine (threads bound to the cores, KV cache size, cache root) come
from the environment the benchmark sets.
"""

from __future__ import annotations

import argparse
import json
import statistics
import time
from pathlib import Path
from typing import Any


def _timed(llm: Any, prompts: list[list[int]], new_tokens: int) -> tuple[float, list[list[int]]]:
    from vllm import SamplingParams

    params = SamplingParams(temperature=0.0, ignore_eos=True, max_tokens=new_tokens)
    start = time.perf_counter()
    outputs = llm.generate([{"prompt_token_ids": ids} for ids in prompts], params, use_tqdm=False)
    elapsed = time.perf_counter() - start
    return elapsed, [list(output.outputs[0].token_ids) for output in outputs]


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--model", required=True)
    parser.add_argument("--spec", required=True)
    parser.add_argument("--dtype", default="float32")
    parser.add_argument("--out", required=True)
    args = parser.parse_args()
    spec = json.loads(Path(args.spec).read_text())

    start = time.perf_counter()
    from vllm import LLM

    llm = LLM(model=args.model, dtype=args.dtype, max_model_len=2048, seed=0)
    ids, new_tokens = spec["prompt_ids"], spec["max_new_tokens"]
    first_generate_s, _ = _timed(llm, [ids], 1)
    startup_s = time.perf_counter() - start

    for _ in range(spec["warmup"]):
        _timed(llm, [ids], new_tokens)
    runs = [_timed(llm, [ids], new_tokens) for _ in range(spec["runs"])]
    first = [_timed(llm, [ids], 1)[0] for _ in range(spec["runs"])]

    prompts, concurrent_new = spec["concurrent_prompt_ids"], spec["concurrent_new_tokens"]
    _timed(llm, prompts, 2)  # warm-up of the batched shapes
    batched_runs = [_timed(llm, prompts, concurrent_new)[0] for _ in range(spec.get("concurrency_runs", 1))]
    batched_s = statistics.median(batched_runs)

    result = {
        "startup_s": startup_s,
        "first_generate_s": first_generate_s,
        "latencies_s": [seconds for seconds, _ in runs],
        "latency_s": statistics.median(seconds for seconds, _ in runs),
        "first_token_s": statistics.median(first),
        "new_tokens": new_tokens,
        "token_ids": runs[0][1][0],
        "concurrency": {
            "prompts": len(prompts),
            "new_tokens": concurrent_new,
            "batched_s": batched_s,
            "batched_tokens_per_second": len(prompts) * concurrent_new / batched_s,
            "all_batched_s": batched_runs,
        },
        "versions": {"vllm": __import__("vllm").__version__},
    }
    Path(args.out).write_text(json.dumps(result))
    return 0


if __name__ == "__main__":  # vLLM spawns worker processes that re-import this file
    raise SystemExit(main())
