"""Operator settings: defaults, YAML loading, clear errors; the command line on top."""

from __future__ import annotations

from pathlib import Path

import pytest
from bloomz_operator.__main__ import effective_settings, parse_args
from bloomz_operator.settings import CONFIG_ENV, Settings, SettingsError, load_settings, parse_settings


def test_defaults_follow_the_contract_and_intels_gaudi_recipe() -> None:
    s = load_settings(None)
    assert s == Settings()
    assert s.namespaces == () and s.log_level == "INFO" and s.liveness_port == 8080
    assert s.image_pull_policy == "IfNotPresent"
    assert s.benchmark.enabled and s.benchmark.timeout_seconds == 900 and s.benchmark.port == 50051
    hpu = s.device("hpu")
    assert hpu.resource_name == "habana.ai/gaudi"
    assert (hpu.memory, hpu.hugepages_2mi, hpu.host_ipc) == (None, None, True)
    # Intel's 409Gi / 95000Mi for a whole 8-card server, asked per card.
    assert (hpu.pod_memory(8), hpu.pod_hugepages_2mi(8)) == ("418816Mi", "94992Mi")
    assert s.device("cuda").resource_name == "nvidia.com/gpu"
    assert s.device("cpu").resource_name is None


def test_load_from_file_and_env(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    path = tmp_path / "operator.yaml"
    path.write_text(
        """
namespaces: [ml, serving]
logLevel: debug
livenessPort: 9000
imagePullPolicy: Always
imagePullSecrets: [{name: regcred}, mirror, {name: regcred}]
benchmark: {enabled: false, timeoutSeconds: 60}
devices:
  hpu: {image: my/gaudi:1, hugepages2MiPerCard: null, nodeSelector: {habana.ai/device.type: gaudi2}}
  cuda: {tolerations: [{key: nvidia.com/gpu, operator: Exists}]}
"""
    )
    s = load_settings(str(path))
    assert s.namespaces == ("ml", "serving") and s.log_level == "DEBUG" and s.liveness_port == 9000
    assert s.image_pull_policy == "Always"
    assert s.image_pull_secrets == ("regcred", "mirror")  # duplicates dropped, order kept
    assert not s.benchmark.enabled and s.benchmark.timeout_seconds == 60
    assert s.device("hpu").image == "my/gaudi:1" and s.device("hpu").pod_hugepages_2mi(8) is None
    assert s.device("hpu").memory_per_card == "52352Mi"  # untouched keys keep their defaults
    assert s.device("hpu").node_selector == {"habana.ai/device.type": "gaudi2"}
    assert s.device("cuda").tolerations == ({"key": "nvidia.com/gpu", "operator": "Exists"},)
    monkeypatch.setenv(CONFIG_ENV, str(path))
    assert load_settings(None) == s
    empty = tmp_path / "empty.yaml"
    empty.write_text("")
    assert load_settings(str(empty)) == Settings()


@pytest.mark.parametrize(
    ("data", "words"),
    [
        ({"namespace": ["x"]}, "unknown key(s) namespace"),
        ({"livenessPort": "80"}, "livenessPort: expected int"),
        ({"livenessPort": 70000}, "not a TCP port"),
        ({"logLevel": "LOUD"}, "logLevel: must be one of"),
        ({"imagePullPolicy": "Sometimes"}, "imagePullPolicy"),
        ({"imagePullSecrets": "regcred"}, "imagePullSecrets: expected list"),
        ({"imagePullSecrets": [{"name": 3}]}, "imagePullSecrets[0].name: expected str"),
        ({"imagePullSecrets": [{"nam": "regcred"}]}, "imagePullSecrets[0]: expected str"),
        ({"imagePullSecrets": [""]}, "imagePullSecrets: names must not be empty"),
        ({"benchmark": {"enabled": "yes"}}, "benchmark.enabled: expected bool"),
        ({"benchmark": {"timeoutSeconds": 0}}, "benchmark.timeoutSeconds: must be > 0"),
        ({"benchmark": {"timeoutSeconds": True}}, "expected a number"),
        ({"devices": {"tpu": {}}}, "unknown key(s) tpu"),
        ({"devices": {"hpu": {"hugepages": "1Gi"}}}, "devices.hpu: unknown key(s) hugepages"),
        ({"devices": {"hpu": {"hostIPC": "true"}}}, "devices.hpu.hostIPC: expected bool"),
        ({"devices": {"hpu": {"tolerations": {"key": "x"}}}}, "devices.hpu.tolerations: expected list"),
        (["a"], "settings: expected dict"),
    ],
)
def test_bad_settings_are_refused_with_the_key_named(data: object, words: str) -> None:
    with pytest.raises(SettingsError) as error:
        parse_settings(data)  # type: ignore[arg-type]
    assert words in str(error.value)


def test_unreadable_files_are_errors(tmp_path: Path) -> None:
    with pytest.raises(SettingsError, match="cannot read"):
        load_settings(str(tmp_path / "missing.yaml"))
    bad = tmp_path / "bad.yaml"
    bad.write_text("a: [")
    with pytest.raises(SettingsError, match="not valid YAML"):
        load_settings(str(bad))
    wrong = tmp_path / "wrong.yaml"
    wrong.write_text("logLevel: 3")
    with pytest.raises(SettingsError, match=r"wrong\.yaml: logLevel"):
        load_settings(str(wrong))


def test_command_line_overrides_the_file() -> None:
    base = parse_settings({"namespaces": ["a"], "logLevel": "INFO"})
    args = parse_args(["--namespace", "x", "-n", "y", "--log-level", "debug", "--liveness-port", "9999"])
    s = effective_settings(args, base)
    assert s.namespaces == ("x", "y") and s.log_level == "DEBUG" and s.liveness_port == 9999
    assert effective_settings(parse_args(["--all-namespaces"]), base).namespaces == ()
    assert effective_settings(parse_args([]), base) == base
    assert parse_args(["--standalone"]).standalone


def test_main_refuses_a_bad_settings_file(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    from bloomz_operator.__main__ import main

    bad = tmp_path / "bad.yaml"
    bad.write_text("devices: {tpu: {}}")
    assert main(["--config", str(bad)]) == 2
    assert "unknown key(s) tpu" in capsys.readouterr().err
