"""Baseline B, vLLM on CPU: a peer process the benchmark drives, run with the vLLM environment's python.

    .cache/vllm-venv/bin/python vllm_peer.py --model DIR --spec SPEC.json --reply-fd N

Standalone on purpose (standard library + vllm only): that environment has another torch and
transformers 5.x and cannot import this project. Offline `LLM.generate` with the same token-id
prompts as the other columns, temperature 0 (greedy) and ignore_eos, like for like. The settings
that make it fastest on this machine (threads bound to the cores, KV cache size, cache root) come
from the environment the benchmark sets.

The peer loads the model once, replies with its start-up time, then runs one measurement per
command line on stdin (JSON: {"op": ...}) and replies with one JSON line on the reply descriptor
(vLLM logs to stdout, so replies have their own pipe). The benchmark alternates these runs with
our runtime's, so a shared machine's drift falls on both systems alike.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from collections.abc import Callable, Iterable
from pathlib import Path
from typing import Any, TextIO

# prompts (token ids), new tokens -> generated token ids per prompt
Generate = Callable[[list[list[int]], int], list[list[int]]]


def timed(generate: Generate, prompts: list[list[int]], new_tokens: int) -> tuple[float, list[list[int]]]:
    start = time.perf_counter()
    outputs = generate(prompts, new_tokens)
    return time.perf_counter() - start, outputs


def run_command(generate: Generate, spec: dict[str, Any], command: dict[str, Any]) -> dict[str, Any]:
    """One measurement: "latency" (the benchmark prompt, all new tokens), "first_token" (one token),
    "batched" (every concurrent prompt at once) or "warmup" (both shapes, untimed)."""
    op = command.get("op")
    ids, new_tokens = spec["prompt_ids"], spec["max_new_tokens"]
    if op == "latency":
        seconds, outputs = timed(generate, [ids], new_tokens)
        return {"seconds": seconds, "token_ids": outputs[0]}
    if op == "first_token":
        return {"seconds": timed(generate, [ids], 1)[0]}
    if op == "batched":
        prompts, concurrent_new = spec["concurrent_prompt_ids"], spec["concurrent_new_tokens"]
        seconds, outputs = timed(generate, prompts, concurrent_new)
        return {"seconds": seconds, "tokens": sum(len(output) for output in outputs)}
    if op == "warmup":
        for _ in range(int(command.get("runs", 1))):
            generate([ids], new_tokens)
        generate(spec["concurrent_prompt_ids"], 2)  # the batched shapes
        return {}
    raise ValueError(f"unknown op {op!r}")


def serve(generate: Generate, spec: dict[str, Any], commands: Iterable[str], replies: TextIO) -> None:
    """Runs commands until "exit" or the end of input; a failed command is replied as an error."""
    for line in commands:
        if not line.strip():
            continue
        command = json.loads(line)
        if command.get("op") == "exit":
            break
        try:
            reply = run_command(generate, spec, command)
        except Exception as error:  # the driver reports it; the peer stays usable
            reply = {"error": f"{type(error).__name__}: {error}"}
        replies.write(json.dumps(reply) + "\n")
        replies.flush()


def vllm_generate(model: str, dtype: str) -> tuple[Generate, str]:
    from vllm import LLM, SamplingParams, __version__

    llm = LLM(model=model, dtype=dtype, max_model_len=2048, seed=0)

    def generate(prompts: list[list[int]], new_tokens: int) -> list[list[int]]:
        params = SamplingParams(temperature=0.0, ignore_eos=True, max_tokens=new_tokens)
        outputs = llm.generate([{"prompt_token_ids": ids} for ids in prompts], params, use_tqdm=False)
        return [list(output.outputs[0].token_ids) for output in outputs]

    return generate, __version__


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--model", required=True)
    parser.add_argument("--spec", required=True)
    parser.add_argument("--dtype", default="float32")
    parser.add_argument("--reply-fd", type=int, required=True)
    args = parser.parse_args()
    spec = json.loads(Path(args.spec).read_text())
    replies = os.fdopen(args.reply_fd, "w")

    start = time.perf_counter()
    generate, version = vllm_generate(args.model, args.dtype)
    first_generate_s, _ = timed(generate, [spec["prompt_ids"]], 1)
    ready = {"startup_s": time.perf_counter() - start, "first_generate_s": first_generate_s, "vllm": version}
    replies.write(json.dumps(ready) + "\n")
    replies.flush()
    serve(generate, spec, sys.stdin, replies)
    return 0


if __name__ == "__main__":  # vLLM spawns worker processes that re-import this file
    raise SystemExit(main())
