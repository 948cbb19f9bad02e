"""Every request limit tried at, just below and just above its bound (pure validation)."""

from __future__ import annotations

import math
from typing import Any

import numpy as np
import pytest
from bloomz_api.proto import generate_pb2 as pb
from bloomz_runtime.errors import InvalidArgument
from bloomz_runtime.server import proto_params
from bloomz_runtime.validation import (
    MAX_STOP_LENGTH,
    MAX_STOP_STRINGS,
    Limits,
    SamplingParams,
    ValidatedParams,
    longest_token_bytes,
    validate_parameters,
    validate_prompt,
    validate_prompt_tokens,
    validate_total_tokens,
)

LIMITS = Limits(max_input_tokens=32, max_new_tokens=100)
# The proto's float fields are 32-bit: the neighbours of a bound as the server receives them.
ABOVE_ONE = float(np.nextafter(np.float32(1.0), np.float32(2.0)))
BELOW_ONE = float(np.nextafter(np.float32(1.0), np.float32(0.0)))
TINY = float(np.finfo(np.float32).tiny)

ACCEPTED: list[tuple[dict[str, Any], str, Any]] = [
    ({"max_new_tokens": 1}, "max_new_tokens", 1),
    ({"max_new_tokens": 99}, "max_new_tokens", 99),
    ({"max_new_tokens": 100}, "max_new_tokens", 100),
    ({"temperature": 0.0}, "temperature", 0.0),  # greedy ignores it
    ({"do_sample": True, "temperature": TINY}, "temperature", TINY),
    ({"do_sample": True, "temperature": 1e30}, "temperature", pytest.approx(1e30)),
    ({"top_k": 0}, "top_k", 0),
    ({"top_k": 1}, "top_k", 1),
    ({"top_p": TINY}, "top_p", TINY),
    ({"top_p": BELOW_ONE}, "top_p", BELOW_ONE),
    ({"top_p": 1.0}, "top_p", 1.0),
    ({"repetition_penalty": TINY}, "repetition_penalty", TINY),
    ({"repetition_penalty": 1.0}, "repetition_penalty", 1.0),
    ({"stop": ["x"] * MAX_STOP_STRINGS}, "stop", ("x",) * MAX_STOP_STRINGS),
    ({"stop": ["y" * MAX_STOP_LENGTH]}, "stop", ("y" * MAX_STOP_LENGTH,)),
    ({"stop": ["z"]}, "stop", ("z",)),
    ({"truncate_prompt_tokens": 1}, "truncate_prompt_tokens", 1),
    ({"seed": 0}, "seed", 0),
    ({"ignore_eos": True}, "ignore_eos", True),
]

REFUSED: list[tuple[dict[str, Any], str]] = [
    ({"max_new_tokens": 0}, "max_new_tokens must be > 0, got 0"),
    ({"max_new_tokens": -1}, "max_new_tokens must be > 0, got -1"),
    ({"max_new_tokens": 101}, "max_new_tokens 101 exceeds the server limit 100"),
    ({"do_sample": True, "temperature": 0.0}, "temperature must be > 0 when sampling, got 0.0"),
    ({"temperature": -TINY}, "temperature must be > 0"),
    ({"temperature": math.inf}, "temperature must be > 0 when sampling, got inf"),
    ({"temperature": -math.inf}, "got -inf"),
    ({"temperature": math.nan}, "got nan"),
    ({"top_k": -1}, r"top_k must be >= 0 \(0 = off\), got -1"),
    ({"top_p": 0.0}, r"top_p must be in \(0, 1\], got 0.0"),
    ({"top_p": -TINY}, "top_p must be in"),
    ({"top_p": ABOVE_ONE}, "top_p must be in"),
    ({"top_p": math.nan}, "top_p must be in"),
    ({"repetition_penalty": 0.0}, "repetition_penalty must be > 0, got 0.0"),
    ({"repetition_penalty": -1.0}, "repetition_penalty must be > 0, got -1.0"),
    ({"repetition_penalty": math.inf}, "repetition_penalty must be > 0, got inf"),
    ({"repetition_penalty": math.nan}, "repetition_penalty must be > 0, got nan"),
    ({"stop": ["x"] * (MAX_STOP_STRINGS + 1)}, f"at most {MAX_STOP_STRINGS} stop strings, got 9"),
    ({"stop": ["y" * (MAX_STOP_LENGTH + 1)]}, f"limited to {MAX_STOP_LENGTH} characters"),
    ({"stop": ["ok", ""]}, "stop strings must not be empty"),
    ({"truncate_prompt_tokens": 0}, "truncate_prompt_tokens must be > 0, got 0"),
    ({"truncate_prompt_tokens": -1}, "truncate_prompt_tokens must be > 0, got -1"),
]


def validate(params: pb.GenerationParameters | None, limits: Limits) -> Any:
    """The shared validator, fed the way the gRPC server feeds it (the fields the message sets)."""
    return validate_parameters(proto_params(params), limits)


def field(validated: Any, name: str) -> Any:
    holder = validated.sampling if hasattr(SamplingParams, name) else validated
    return getattr(holder, name)


@pytest.mark.parametrize(("fields", "name", "expected"), ACCEPTED, ids=[str(f) for f, _, _ in ACCEPTED])
def test_values_on_the_accepted_side_of_a_bound_are_kept(
    fields: dict[str, Any], name: str, expected: Any
) -> None:
    assert field(validate(pb.GenerationParameters(**fields), LIMITS), name) == expected


@pytest.mark.parametrize(("fields", "reason"), REFUSED, ids=[str(f) for f, _ in REFUSED])
def test_values_past_a_bound_are_refused_with_the_reason(fields: dict[str, Any], reason: str) -> None:
    with pytest.raises(InvalidArgument, match=reason):
        validate(pb.GenerationParameters(**fields), LIMITS)


@pytest.mark.parametrize(("count", "ok"), [(2, True), (3, False)])
def test_the_stop_count_bound_comes_from_the_limits(count: int, ok: bool) -> None:
    limits = Limits(max_input_tokens=8, max_new_tokens=8, max_stop_strings=2, max_stop_length=3)
    params = pb.GenerationParameters(stop=["a"] * count)
    if ok:
        assert validate(params, limits).stop == ("a",) * count
    else:
        with pytest.raises(InvalidArgument, match="at most 2 stop strings, got 3"):
            validate(params, limits)


@pytest.mark.parametrize(("length", "ok"), [(3, True), (4, False)])
def test_the_stop_length_bound_comes_from_the_limits(length: int, ok: bool) -> None:
    limits = Limits(max_input_tokens=8, max_new_tokens=8, max_stop_strings=2, max_stop_length=3)
    params = pb.GenerationParameters(stop=["s" * length])
    if ok:
        assert validate(params, limits).stop == ("s" * length,)
    else:
        with pytest.raises(InvalidArgument, match="limited to 3 characters"):
            validate(params, limits)


@pytest.mark.parametrize("params", [None, pb.GenerationParameters(), pb.GenerationParameters(top_k=3)])
@pytest.mark.parametrize(
    ("default", "limit", "expected"), [(64, 100, 64), (64, 64, 64), (64, 10, 10), (5, 6, 5)]
)
def test_the_default_new_token_count_is_capped_by_the_limit(
    params: Any, default: int, limit: int, expected: int
) -> None:
    limits = Limits(max_input_tokens=8, max_new_tokens=limit, default_new_tokens=default)
    assert validate(params, limits).max_new_tokens == expected


def test_unset_parameters_are_plain_greedy_defaults() -> None:
    for params in (None, pb.GenerationParameters()):
        v = validate(params, LIMITS)
        assert v.sampling == SamplingParams(
            do_sample=False, temperature=1.0, top_k=0, top_p=1.0, repetition_penalty=1.0, seed=None
        )
        assert (v.stop, v.ignore_eos, v.truncate_prompt_tokens) == ((), False, None)


@pytest.mark.parametrize(
    ("sampling", "plain"),
    [
        (SamplingParams(), True),
        (SamplingParams(temperature=0.5, top_k=3, top_p=0.5), True),  # greedy ignores the warpers
        (SamplingParams(do_sample=True), False),
        (SamplingParams(repetition_penalty=1.1), False),
        (SamplingParams(repetition_penalty=0.9), False),
    ],
)
def test_plain_greedy_means_no_sampling_and_no_penalty(sampling: SamplingParams, plain: bool) -> None:
    assert sampling.is_plain_greedy is plain


@pytest.mark.parametrize(
    ("count", "reason"), [(0, "prompt has no tokens"), (33, "33 tokens, the limit is 32")]
)
def test_prompt_token_counts_past_a_bound_are_refused(count: int, reason: str) -> None:
    with pytest.raises(InvalidArgument, match=reason):
        validate_prompt_tokens(count, LIMITS)


@pytest.mark.parametrize("count", [1, 31, 32])
def test_prompt_token_counts_within_the_bounds_pass(count: int) -> None:
    assert validate_prompt_tokens(count, LIMITS) is None


def test_an_empty_prompt_is_refused_and_one_character_is_not() -> None:
    with pytest.raises(InvalidArgument, match="prompt must not be empty"):
        validate_prompt("")
    assert validate_prompt(" ") is None


def test_the_emptiness_messages_are_exact() -> None:
    for check, expected in (
        (
            lambda: validate(pb.GenerationParameters(stop=[""]), LIMITS),
            "stop strings must not be empty",
        ),
        (lambda: validate_prompt(""), "prompt must not be empty"),
        (lambda: validate_prompt_tokens(0, LIMITS), "prompt has no tokens"),
    ):
        with pytest.raises(InvalidArgument) as error:
            check()
        assert str(error.value) == expected


def test_an_empty_vocabulary_still_bounds_a_token_at_2_bytes_and_no_total_limit_refuses_nothing() -> None:
    assert longest_token_bytes([]) == 2
    assert longest_token_bytes(["ab", "é"]) == 4  # "ab" and "é" are 2 UTF-8 bytes each
    unlimited = Limits(max_input_tokens=10, max_new_tokens=5, max_total_tokens=None)
    validate_total_tokens(10**6, ValidatedParams(max_new_tokens=5, sampling=SamplingParams()), unlimited)
