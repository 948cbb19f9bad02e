"""The runtime's flags: required ones, defaults equal to ServeOptions', bounds, choices, the bind host."""

from __future__ import annotations

import pytest
from bloomz_api.options import BIND_HOST_ENV, ServeOptions, build_parser, parse_options, to_argv

MINIMAL = ["--model", "m", "--device", "cpu"]


def test_unset_flags_take_the_serve_options_defaults() -> None:
    assert parse_options(MINIMAL, environ={}) == ServeOptions(model="m", device="cpu")


@pytest.mark.parametrize("argv", [["--device", "cpu"], ["--model", "m"], []])
def test_model_and_device_are_required(argv: list[str], capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as exit_:
        parse_options(argv, environ={})
    assert exit_.value.code == 2
    assert "the following arguments are required" in capsys.readouterr().err


@pytest.mark.parametrize(
    ("flags", "ok"),
    [
        (["--port", "0"], True),
        (["--port", "65535"], True),
        (["--port", "65536"], False),
        (["--port", "-1"], False),
        (["--metrics-port", "0"], True),
        (["--metrics-port", "65536"], False),
        (["--world-size", "1"], True),
        (["--world-size", "0"], False),
        (["--max-batch-size", "0"], False),
        (["--max-new-tokens", "1"], True),
        (["--dtype", "float16"], True),
        (["--dtype", "int8"], False),
        (["--device", "tpu"], False),
    ],
)
def test_flag_bounds_and_choices(flags: list[str], ok: bool, capsys: pytest.CaptureFixture[str]) -> None:
    if ok:
        opts = parse_options([*MINIMAL, *flags], environ={})
        assert str(getattr(opts, flags[0][2:].replace("-", "_"))) == flags[1]
    else:
        with pytest.raises(SystemExit):
            parse_options([*MINIMAL, *flags], environ={})
        err = capsys.readouterr().err
        assert f"argument {flags[0]}" in err


def test_bad_numbers_say_why(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit):
        parse_options([*MINIMAL, "--port", "70000"], environ={})
    assert "not a port: 70000" in capsys.readouterr().err
    with pytest.raises(SystemExit):
        parse_options([*MINIMAL, "--world-size", "0"], environ={})
    assert "must be >= 1, got 0" in capsys.readouterr().err


def test_the_bind_host_comes_from_the_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    assert parse_options(MINIMAL, environ={BIND_HOST_ENV: "127.0.0.1"}).bind_host == "127.0.0.1"
    assert parse_options(MINIMAL, environ={}).bind_host == "0.0.0.0"
    monkeypatch.setenv(BIND_HOST_ENV, "10.1.2.3")
    assert parse_options(MINIMAL).bind_host == "10.1.2.3"  # the process environment by default
    assert parse_options(MINIMAL, environ={}).bind_host == "0.0.0.0"


def test_the_program_name_is_the_callers() -> None:
    assert build_parser(prog="bloomz-runtime").prog == "bloomz-runtime"
    assert "usage: bloomz-runtime" in build_parser(prog="bloomz-runtime").format_usage()


@pytest.mark.parametrize(
    "opts",
    [
        ServeOptions(model="m", device="cpu"),
        ServeOptions(
            model="/w",
            device="hpu",
            world_size=8,
            port=1,
            metrics_port=0,
            dtype="float16",
            max_input_tokens=3,
            max_new_tokens=4,
            max_batch_size=5,
            max_queue_size=6,
            batch_wait_ms=0,
            kv_cache=False,
            hpu_graphs=False,
            screened_greedy=False,
            warmup=False,
            served_model_name="name",
            grace_period_s=2.5,
        ),
    ],
)
def test_every_option_survives_the_trip_through_argv(opts: ServeOptions) -> None:
    assert parse_options(to_argv(opts), environ={}) == opts


@pytest.mark.parametrize("given", [["--tls-cert-file", "c.pem"], ["--tls-key-file", "k.pem"]])
def test_a_tls_file_alone_is_refused_with_the_reason(
    given: list[str], capsys: pytest.CaptureFixture[str]
) -> None:
    with pytest.raises(SystemExit) as refused:
        parse_options([*MINIMAL, *given], environ={})
    assert refused.value.code == 2
    assert capsys.readouterr().err.rstrip().endswith("error: --tls-cert-file and --tls-key-file go together")
