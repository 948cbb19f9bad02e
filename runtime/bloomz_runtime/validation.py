"""Checking a request's parameters against the server's limits: the one validator of both protocols.

Pure; raises InvalidArgument. Each protocol hands in the fields its caller set, by their
bloomz.v1.GenerationParameters names (gRPC: the message's set fields; HTTP: the mapped OpenAI fields).
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from bloomz_runtime.errors import InvalidArgument

MAX_STOP_STRINGS = 8
MAX_STOP_LENGTH = 256


@dataclass(frozen=True)
class Limits:
    max_input_tokens: int
    max_new_tokens: int
    max_stop_strings: int = MAX_STOP_STRINGS
    max_stop_length: int = MAX_STOP_LENGTH
    # Server default when a request does not say; capped by max_new_tokens.
    default_new_tokens: int = 64
    # Prompt + new tokens of one request (None: no limit beyond the two above).
    max_total_tokens: int | None = None


@dataclass(frozen=True)
class SamplingParams:
    do_sample: bool = False
    temperature: float = 1.0
    top_k: int = 0
    top_p: float = 1.0
    repetition_penalty: float = 1.0
    seed: int | None = None

    @property
    def is_plain_greedy(self) -> bool:
        return not self.do_sample and self.repetition_penalty == 1.0


@dataclass(frozen=True)
class ValidatedParams:
    max_new_tokens: int
    sampling: SamplingParams
    stop: tuple[str, ...] = ()
    ignore_eos: bool = False
    truncate_prompt_tokens: int | None = None


def validate_parameters(params: Mapping[str, Any] | None, limits: Limits) -> ValidatedParams:
    """``params`` holds the fields the caller set (absent: the default); set ones must be in range."""
    params = params or {}
    max_new = min(limits.default_new_tokens, limits.max_new_tokens)
    if "max_new_tokens" in params:
        max_new = int(params["max_new_tokens"])
        if max_new <= 0:
            raise InvalidArgument(f"max_new_tokens must be > 0, got {max_new}")
        if max_new > limits.max_new_tokens:
            raise InvalidArgument(
                f"max_new_tokens {max_new} exceeds the server limit {limits.max_new_tokens}"
            )
    do_sample = bool(params.get("do_sample", False))
    temperature = float(params.get("temperature", 1.0))
    if not math.isfinite(temperature) or temperature < 0 or (do_sample and temperature == 0):
        raise InvalidArgument(f"temperature must be > 0 when sampling, got {temperature}")
    top_k = int(params.get("top_k", 0))
    if top_k < 0:
        raise InvalidArgument(f"top_k must be >= 0 (0 = off), got {top_k}")
    top_p = float(params.get("top_p", 1.0))
    if not (0.0 < top_p <= 1.0):
        raise InvalidArgument(f"top_p must be in (0, 1], got {top_p}")
    penalty = float(params.get("repetition_penalty", 1.0))
    if not math.isfinite(penalty) or penalty <= 0:
        raise InvalidArgument(f"repetition_penalty must be > 0, got {penalty}")
    stop = tuple(params.get("stop", ()))
    if len(stop) > limits.max_stop_strings:
        raise InvalidArgument(f"at most {limits.max_stop_strings} stop strings, got {len(stop)}")
    for s in stop:
        if not s:
            raise InvalidArgument("stop strings must not be empty")
        if len(s) > limits.max_stop_length:
            raise InvalidArgument(f"stop strings are limited to {limits.max_stop_length} characters")
    truncate = int(params["truncate_prompt_tokens"]) if "truncate_prompt_tokens" in params else None
    if truncate is not None and truncate <= 0:
        raise InvalidArgument(f"truncate_prompt_tokens must be > 0, got {truncate}")
    return ValidatedParams(
        max_new_tokens=max_new,
        sampling=SamplingParams(
            do_sample=do_sample,
            temperature=temperature,
            top_k=top_k,
            top_p=top_p,
            repetition_penalty=penalty,
            seed=int(params["seed"]) if "seed" in params else None,
        ),
        stop=stop,
        ignore_eos=bool(params.get("ignore_eos", False)),
        truncate_prompt_tokens=truncate,
    )


def validate_prompt(prompt: str) -> None:
    if not prompt:
        raise InvalidArgument("prompt must not be empty")


def validate_prompt_tokens(count: int, limits: Limits) -> None:
    if count == 0:
        raise InvalidArgument("prompt has no tokens")
    if count > limits.max_input_tokens:
        raise InvalidArgument(f"prompt has {count} tokens, the limit is {limits.max_input_tokens}")


def longest_token_bytes(vocabulary: Any) -> int:
    """An upper bound on the UTF-8 bytes of prompt text one token covers: the longest vocabulary
    string in UTF-8 (byte-level BPE writes each byte as one character of 1-2 UTF-8 bytes, and
    SentencePiece's space marker takes 3 bytes for 1), doubled against normalizers."""
    return 2 * max((len(str(token).encode("utf-8")) for token in vocabulary), default=1)


def validate_prompt_size(prompt: str, limits: Limits, token_bytes: int, truncated: bool) -> None:
    """Before tokenizing: a prompt longer than max_input_tokens x token_bytes bytes has more tokens
    than allowed whatever they are, so it is refused without the cost of tokenizing it."""
    if truncated:
        return
    size = len(prompt.encode("utf-8"))
    if size > limits.max_input_tokens * token_bytes:
        raise InvalidArgument(
            f"prompt of {size} bytes is over {limits.max_input_tokens} tokens (the limit) in any tokenization"
        )


def validate_total_tokens(prompt_tokens: int, params: ValidatedParams, limits: Limits) -> None:
    if (
        limits.max_total_tokens is not None
        and prompt_tokens + params.max_new_tokens > limits.max_total_tokens
    ):
        raise InvalidArgument(
            f"prompt tokens ({prompt_tokens}) + max_new_tokens ({params.max_new_tokens}) exceed the "
            f"server limit of {limits.max_total_tokens} tokens per request"
        )
