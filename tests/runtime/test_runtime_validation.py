"""Request validation (pure, shared by gRPC and HTTP) and the mappings from domain errors to status codes."""

from __future__ import annotations

import grpc
import pytest
from bloomz_api.proto import generate_pb2 as pb
from bloomz_runtime.errors import (
    Cancelled,
    InvalidArgument,
    ModelNotFound,
    QueueFull,
    Unauthenticated,
    Unavailable,
)
from bloomz_runtime.http.errors import http_error
from bloomz_runtime.interceptors import grpc_status
from bloomz_runtime.server import proto_params
from bloomz_runtime.validation import Limits, validate_parameters, validate_prompt, validate_prompt_tokens

LIMITS = Limits(max_input_tokens=32, max_new_tokens=100)


def test_unset_fields_take_defaults() -> None:
    v = validate_parameters(proto_params(pb.GenerationParameters()), LIMITS)
    assert v.max_new_tokens == 64
    assert v.sampling.is_plain_greedy
    assert v.stop == () and not v.ignore_eos and v.truncate_prompt_tokens is None
    assert validate_parameters(None, Limits(8, 10)).max_new_tokens == 10


def test_full_parameters_are_kept() -> None:
    v = validate_parameters(
        proto_params(
            pb.GenerationParameters(
                max_new_tokens=7,
                do_sample=True,
                temperature=0.5,
                top_k=5,
                top_p=0.9,
                repetition_penalty=1.25,
                seed=42,
                stop=["\n"],
                ignore_eos=True,
                truncate_prompt_tokens=16,
            )
        ),
        LIMITS,
    )
    assert v.max_new_tokens == 7 and v.ignore_eos and v.stop == ("\n",) and v.truncate_prompt_tokens == 16
    s = v.sampling
    assert (s.do_sample, s.temperature, s.top_k, s.repetition_penalty, s.seed) == (True, 0.5, 5, 1.25, 42)
    assert s.top_p == pytest.approx(0.9)


@pytest.mark.parametrize(
    ("params", "reason"),
    [
        (pb.GenerationParameters(max_new_tokens=0), "max_new_tokens must be > 0"),
        (pb.GenerationParameters(max_new_tokens=-3), "max_new_tokens must be > 0"),
        (pb.GenerationParameters(max_new_tokens=101), "exceeds the server limit"),
        (pb.GenerationParameters(do_sample=True, temperature=0.0), "temperature"),
        (pb.GenerationParameters(temperature=-1.0), "temperature"),
        (pb.GenerationParameters(top_k=-1), "top_k"),
        (pb.GenerationParameters(top_p=0.0), "top_p"),
        (pb.GenerationParameters(top_p=1.5), "top_p"),
        (pb.GenerationParameters(repetition_penalty=0.0), "repetition_penalty"),
        (pb.GenerationParameters(stop=[""]), "stop strings must not be empty"),
        (pb.GenerationParameters(stop=[str(i) for i in range(9)]), "at most 8 stop strings"),
        (pb.GenerationParameters(stop=["x" * 300]), "limited to"),
        (pb.GenerationParameters(truncate_prompt_tokens=0), "truncate_prompt_tokens"),
    ],
)
def test_bad_parameters_are_refused_with_a_reason(params: pb.GenerationParameters, reason: str) -> None:
    with pytest.raises(InvalidArgument, match=reason):
        validate_parameters(proto_params(params), LIMITS)


def test_greedy_with_zero_temperature_is_fine() -> None:
    assert not validate_parameters(
        proto_params(pb.GenerationParameters(temperature=0.0)), LIMITS
    ).sampling.do_sample


def test_prompt_checks() -> None:
    with pytest.raises(InvalidArgument, match="empty"):
        validate_prompt("")
    validate_prompt("x")
    validate_prompt_tokens(32, LIMITS)
    with pytest.raises(InvalidArgument, match="33 tokens, the limit is 32"):
        validate_prompt_tokens(33, LIMITS)


def test_errors_map_to_status_codes_in_one_place() -> None:
    assert grpc_status(InvalidArgument("bad")) == (grpc.StatusCode.INVALID_ARGUMENT, "bad")
    assert grpc_status(QueueFull("full"))[0] == grpc.StatusCode.RESOURCE_EXHAUSTED
    assert grpc_status(Unavailable("x"))[0] == grpc.StatusCode.UNAVAILABLE
    assert grpc_status(Cancelled("x"))[0] == grpc.StatusCode.CANCELLED
    code, details = grpc_status(ValueError("boom"))
    assert code == grpc.StatusCode.INTERNAL and "boom" in details
    assert grpc_status(Unauthenticated("x"))[0] == grpc.StatusCode.UNAUTHENTICATED
    assert grpc_status(ModelNotFound("x"))[0] == grpc.StatusCode.NOT_FOUND


def test_errors_map_to_http_statuses_in_the_openai_shape() -> None:
    status, body = http_error(InvalidArgument("bad"))
    assert status == 400
    assert body == {"error": {"message": "bad", "type": "invalid_request_error", "param": None, "code": None}}
    assert http_error(Unauthenticated("x"))[0] == 401
    assert http_error(ModelNotFound("x"))[1]["error"]["code"] == "model_not_found"
    assert http_error(QueueFull("x"))[0] == 429
    assert http_error(Unavailable("x"))[0] == 503
    status, body = http_error(ValueError("boom"))
    assert status == 500 and "boom" in body["error"]["message"]


def test_proto_params_holds_only_what_the_caller_set() -> None:
    assert proto_params(None) == {}
    assert proto_params(pb.GenerationParameters(top_k=0, stop=["a"])) == {"top_k": 0, "stop": ["a"]}
