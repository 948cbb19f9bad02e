"""Argument parsing of `python -m bloomz_runtime.client` (no server needed)."""

from __future__ import annotations

import argparse
import io

import pytest
from bloomz_api.client import cli
from bloomz_api.client.requests import (
    BENCHMARK_PROMPT,
    benchmark_request,
    generation_parameters,
    greedy_request,
)
from bloomz_api.proto import generate_pb2
from helpers import free_port


def test_common_options_are_accepted_before_and_after_the_subcommand() -> None:
    parser = cli.build_parser()
    before = parser.parse_args(["--target", "h:1", "--json", "--timeout", "7", "info"])
    after = parser.parse_args(["info", "--target", "h:1", "--json", "--timeout", "7"])
    for args in (before, after):
        assert (args.target, args.json, args.timeout) == ("h:1", True, 7.0)


def test_a_value_given_before_the_subcommand_is_not_reset_by_its_defaults() -> None:
    args = cli.build_parser().parse_args(["--target", "h:2", "bench"])
    assert args.target == "h:2"
    assert args.json is False
    assert args.timeout == cli.DEFAULT_TIMEOUT_S


def test_target_defaults_to_the_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("BLOOMZ_TARGET", "10.0.0.9:50051")
    assert cli.parse_args(["info"]).target == "10.0.0.9:50051"
    monkeypatch.delenv("BLOOMZ_TARGET")
    assert cli.parse_args(["info"]).target == cli.DEFAULT_TARGET


def test_bench_defaults_are_the_seeds_method() -> None:
    args = cli.parse_args(["bench"])
    assert args.prompt == BENCHMARK_PROMPT == "DeepSpeed is a machine learning framework"
    assert (args.max_new_tokens, args.warmup, args.iterations, args.mode) == (100, 2, 5, "both")


def test_dataset_defaults_are_the_seeds_dataset_mode() -> None:
    args = cli.build_parser().parse_args(["dataset", "news.csv"])
    assert args.file == "news.csv"
    assert (args.column, args.input_tokens, args.max_new_tokens, args.batch_size) == ("content", 16, 50, 8)
    assert args.limit is None and args.format is None


def test_generate_collects_sampling_options_and_stop_sequences() -> None:
    args = cli.build_parser().parse_args(
        ["generate", "Hello", "--do-sample", "--temperature", "0.7", "--top-k", "5", "--seed", "3",
         "--stop", "\n", "--stop", "END", "--stream"]
    )  # fmt: skip
    assert args.prompt == "Hello" and args.do_sample and args.stream
    assert (args.temperature, args.top_k, args.seed, args.stop) == (0.7, 5, 3, ["\n", "END"])


def test_a_stop_sequence_never_swallows_the_prompt() -> None:
    args = cli.build_parser().parse_args(["generate", "--stop", "END", "Hello there"])
    assert (args.prompt, args.stop) == ("Hello there", ["END"])


def test_prompt_dash_is_read_from_stdin(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr("sys.stdin", io.StringIO("Translate to English: Je t'aime.\n"))
    args = cli.build_parser().parse_args(["generate", "-", "--max-new-tokens", "3"])
    assert args.prompt == "Translate to English: Je t'aime.\n" and args.max_new_tokens == 3


@pytest.mark.parametrize(
    ("argv0", "main_module", "prog"),
    [
        ("/venv/lib/python3.11/site-packages/bloomz_api/client/__main__.py", "bloomz_api.client.__main__",
         "python -m bloomz_api.client"),
        ("/src/api/bloomz_api/client.py", "bloomz_runtime.client", "python -m bloomz_runtime.client"),
        ("/venv/bin/bloomz-client", None, "bloomz-client"),
    ],
)  # fmt: skip
def test_usage_names_the_command_the_user_typed(argv0: str, main_module: str | None, prog: str) -> None:
    assert cli.invoked_as(argv0, main_module) == prog
    assert cli.build_parser(prog).format_usage().startswith(f"usage: {prog} ")


def test_every_option_of_generate_and_bench_says_what_it_does() -> None:
    parser = cli.build_parser("bloomz-client")
    common = {a.dest for a in parser._actions}  # documented once, on the top-level parser
    commands = next(a for a in parser._actions if a.dest == "command").choices
    for name in ("generate", "bench"):
        for action in commands[name]._actions:
            documented = bool(action.help) and action.help != argparse.SUPPRESS
            assert documented or action.dest in common, (name, action.dest)


@pytest.mark.parametrize(
    "argv",
    [
        ["bench", "--iterations", "0"],
        ["bench", "--mode", "fast"],
        ["dataset", "--batch-size", "0"],
        ["generate", "x", "--max-new-tokens", "-1"],
        ["dataset", "--format", "xml"],
        [],
    ],
)
def test_bad_usage_exits_with_2(argv: list[str]) -> None:
    with pytest.raises(SystemExit) as exit_info:
        cli.build_parser().parse_args(argv)
    assert exit_info.value.code == 2


def test_unset_generation_options_stay_unset_so_the_server_defaults_apply() -> None:
    params = generation_parameters()
    for name in ("max_new_tokens", "temperature", "top_k", "top_p", "repetition_penalty", "seed"):
        assert not params.HasField(name), name
    params = generation_parameters(max_new_tokens=0, temperature=0.0, seed=0)
    # An explicit zero is sent (the server validates it) rather than dropped as "unset".
    assert params.HasField("max_new_tokens") and params.max_new_tokens == 0
    assert params.HasField("temperature") and params.HasField("seed")


def test_greedy_request_for_benchmarks_and_dataset_mode() -> None:
    request = greedy_request("abc", 50, ignore_eos=True, truncate_prompt_tokens=16, request_id="r1")
    assert request.prompt == "abc" and request.request_id == "r1"
    assert not request.parameters.do_sample and request.parameters.ignore_eos
    assert request.parameters.max_new_tokens == 50 and request.parameters.truncate_prompt_tokens == 16


def test_benchmark_request_leaves_unset_counts_to_the_server() -> None:
    assert not benchmark_request("", 0, None, None).HasField("warmup")
    request = benchmark_request("p", 10, 0, 3)
    assert request.HasField("warmup") and request.warmup == 0 and request.iterations == 3


def test_connection_failure_is_reported_with_the_status_code_and_exit_1() -> None:
    out, err = io.StringIO(), io.StringIO()
    unused_target = f"127.0.0.1:{free_port()}"  # nothing listens there
    code = cli.main(["--target", unused_target, "--timeout", "20", "info"], out=out, err=err)
    assert code == cli.EXIT_RPC_ERROR
    assert "Info failed: UNAVAILABLE" in err.getvalue()
    assert out.getvalue() == ""


def test_message_dict_uses_proto_field_names_and_enum_names() -> None:
    response = generate_pb2.GenerateResponse(
        text=" world", prompt_tokens=2, generated_tokens=1, finish_reason=generate_pb2.FINISH_REASON_LENGTH
    )
    as_dict = cli.message_dict(response)
    assert as_dict["text"] == " world"
    assert as_dict["prompt_tokens"] == 2 and as_dict["finish_reason"] == "FINISH_REASON_LENGTH"
    assert as_dict["token_ids"] == []  # fields without presence are printed even when empty
