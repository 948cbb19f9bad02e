"""Pure builders of the protobuf requests the client sends."""

from __future__ import annotations

from collections.abc import Sequence

from bloomz_api.constants import BENCHMARK_PROMPT
from bloomz_api.proto import generate_pb2

__all__ = ["BENCHMARK_PROMPT", "benchmark_request", "generation_parameters", "greedy_request"]


def generation_parameters(
    *,
    max_new_tokens: int | None = None,
    do_sample: bool = False,
    temperature: float | None = None,
    top_k: int | None = None,
    top_p: float | None = None,
    repetition_penalty: float | None = None,
    seed: int | None = None,
    stop: Sequence[str] = (),
    ignore_eos: bool = False,
    truncate_prompt_tokens: int | None = None,
) -> generate_pb2.GenerationParameters:
    """Only the values given are set: unset optional fields take the server's defaults."""
    params = generate_pb2.GenerationParameters(do_sample=do_sample, ignore_eos=ignore_eos, stop=list(stop))
    if max_new_tokens is not None:
        params.max_new_tokens = max_new_tokens
    if temperature is not None:
        params.temperature = temperature
    if top_k is not None:
        params.top_k = top_k
    if top_p is not None:
        params.top_p = top_p
    if repetition_penalty is not None:
        params.repetition_penalty = repetition_penalty
    if seed is not None:
        params.seed = seed
    if truncate_prompt_tokens is not None:
        params.truncate_prompt_tokens = truncate_prompt_tokens
    return params


def greedy_request(
    prompt: str,
    max_new_tokens: int,
    *,
    ignore_eos: bool = False,
    truncate_prompt_tokens: int | None = None,
    request_id: str = "",
) -> generate_pb2.GenerateRequest:
    """A greedy request: what the benchmark (ignore_eos) and the dataset mode (truncation) send."""
    return generate_pb2.GenerateRequest(
        prompt=prompt,
        parameters=generation_parameters(
            max_new_tokens=max_new_tokens,
            ignore_eos=ignore_eos,
            truncate_prompt_tokens=truncate_prompt_tokens,
        ),
        request_id=request_id,
    )


def benchmark_request(
    prompt: str, max_new_tokens: int, warmup: int | None, iterations: int | None
) -> generate_pb2.BenchmarkRequest:
    request = generate_pb2.BenchmarkRequest(prompt=prompt, max_new_tokens=max_new_tokens)
    if warmup is not None:
        request.warmup = warmup
    if iterations is not None:
        request.iterations = iterations
    return request
