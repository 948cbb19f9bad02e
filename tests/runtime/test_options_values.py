"""The runtime's later flags as parsed values: the on/off switches (on, off, unset), the HTTP port, the
step watchdog's seconds, the prefill and total-token budgets, the log format and the TLS pair."""

from __future__ import annotations

from typing import Any

import pytest
from bloomz_api.options import parse_options

MINIMAL = ["--model", "m", "--device", "cpu"]


def parsed(*flags: str) -> Any:
    return parse_options([*MINIMAL, *flags], environ={})


def refusal(capsys: pytest.CaptureFixture[str], *flags: str) -> str:
    with pytest.raises(SystemExit) as exit_:
        parsed(*flags)
    assert exit_.value.code == 2
    return capsys.readouterr().err


@pytest.mark.parametrize("flag", ["screened-greedy", "static-decode", "warmup-largest"])
def test_a_switch_is_on_off_or_left_to_the_device(flag: str) -> None:
    field = flag.replace("-", "_")
    assert getattr(parsed(f"--{flag}"), field) is True
    assert getattr(parsed(f"--no-{flag}"), field) is False
    assert getattr(parsed(), field) is None


def test_the_http_port_is_a_port_number(capsys: pytest.CaptureFixture[str]) -> None:
    assert parsed("--http-port", "8001").http_port == 8001
    assert parsed("--http-port", "0").http_port == 0
    assert "not a port: 65536" in refusal(capsys, "--http-port", "65536")


@pytest.mark.parametrize(("value", "seconds"), [("0", 0.0), ("0.5", 0.5), ("120", 120.0)])
def test_step_timeout_seconds_from_0(value: str, seconds: float) -> None:
    timeout = parsed("--step-timeout-s", value).step_timeout_s
    assert timeout == seconds and isinstance(timeout, float)


@pytest.mark.parametrize("value", ["-1", "-0.5", "nan"])
def test_step_timeout_refuses_negative_and_nan(value: str, capsys: pytest.CaptureFixture[str]) -> None:
    assert f"must be >= 0 seconds, got {value}" in refusal(capsys, "--step-timeout-s", value)


@pytest.mark.parametrize("flag", ["--max-prefill-tokens", "--max-total-tokens"])
def test_token_budgets_are_whole_and_at_least_1(flag: str, capsys: pytest.CaptureFixture[str]) -> None:
    field = flag[2:].replace("-", "_")
    assert getattr(parsed(flag, "1"), field) == 1
    assert getattr(parsed(flag, "4096"), field) == 4096
    assert "must be >= 1, got 0" in refusal(capsys, flag, "0")
    assert f"argument {flag}: invalid" in refusal(capsys, flag, "1.5")


def test_log_format_is_text_or_json(capsys: pytest.CaptureFixture[str]) -> None:
    assert parsed().log_format == "text"
    assert parsed("--log-format", "json").log_format == "json"
    assert "invalid choice: 'xml'" in refusal(capsys, "--log-format", "xml")


@pytest.mark.parametrize("flag", ["--tls-cert-file", "--tls-key-file"])
def test_tls_needs_both_files(flag: str, capsys: pytest.CaptureFixture[str]) -> None:
    assert "--tls-cert-file and --tls-key-file go together" in refusal(capsys, flag, "/x.pem")
    both = parsed("--tls-cert-file", "/c.pem", "--tls-key-file", "/k.pem")
    assert (both.tls_cert_file, both.tls_key_file) == ("/c.pem", "/k.pem")
