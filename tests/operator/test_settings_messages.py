"""Operator settings at and past every bound, with the exact message for each refusal, and partial
overrides that keep every other default."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
from bloomz_operator.settings import (
    CONFIG_ENV,
    DEFAULT_DEVICES,
    BenchmarkSettings,
    DeviceSettings,
    Settings,
    SettingsError,
    load_settings,
    parse_settings,
)

TOP = "api, benchmark, devices, hubEndpoint, imagePullPolicy, imagePullSecrets, livenessPort, logLevel, "
TOP += "metricsPort, namespaces, "
TOP += "network, policy, reconcileIntervalSeconds, rollout"
DEVICE_KEYS = (
    "capabilities, env, hostIPC, hugepages2Mi, hugepages2MiPerCard, image, memory, memoryBandwidth, "
)
DEVICE_KEYS += "memoryPerCard, "
DEVICE_KEYS += "nodeSelector, resourceName, runAsUser, tolerations"

REFUSED: list[tuple[Any, str]] = [
    ([1], "settings: expected dict, got list [1]"),
    ({"x": 1, "a": 2}, f"settings: unknown key(s) a, x (allowed: {TOP})"),
    ({"namespaces": "a"}, "namespaces: expected list, got str 'a'"),
    ({"namespaces": ["a", 1]}, "namespaces[1]: expected str, got int 1"),
    ({"logLevel": 5}, "logLevel: expected str, got int 5"),
    ({"logLevel": "loud"}, "logLevel: must be one of DEBUG, INFO, WARNING, ERROR, CRITICAL, got 'loud'"),
    ({"livenessPort": 0}, "livenessPort: not a TCP port: 0"),
    ({"livenessPort": 65536}, "livenessPort: not a TCP port: 65536"),
    ({"livenessPort": True}, "livenessPort: expected a number, got True"),
    ({"livenessPort": 80.0}, "livenessPort: expected int, got float 80.0"),
    ({"imagePullPolicy": 1}, "imagePullPolicy: expected str, got int 1"),
    (
        {"imagePullPolicy": "Sometimes"},
        "imagePullPolicy: must be one of Always, IfNotPresent, Never, got 'Sometimes'",
    ),
    ({"imagePullSecrets": ["a", ""]}, "imagePullSecrets: names must not be empty"),
    ({"imagePullSecrets": ["a", 2]}, "imagePullSecrets[1]: expected str, got int 2"),
    ({"reconcileIntervalSeconds": 0}, "reconcileIntervalSeconds: must be > 0, got 0"),
    ({"reconcileIntervalSeconds": -0.5}, "reconcileIntervalSeconds: must be > 0, got -0.5"),
    ({"reconcileIntervalSeconds": False}, "reconcileIntervalSeconds: expected a number, got False"),
    ({"reconcileIntervalSeconds": "1"}, "reconcileIntervalSeconds: expected int or float, got str '1'"),
    ({"benchmark": []}, "benchmark: expected dict, got list []"),
    (
        {"benchmark": {"x": 1}},
        "benchmark: unknown key(s) x (allowed: checkIntervalSeconds, enabled, port, timeoutSeconds)",
    ),
    ({"benchmark": {"enabled": 1}}, "benchmark.enabled: expected bool, got int 1"),
    ({"benchmark": {"timeoutSeconds": 0}}, "benchmark.timeoutSeconds: must be > 0, got 0"),
    ({"benchmark": {"port": 0}}, "benchmark.port: not a TCP port: 0"),
    ({"benchmark": {"checkIntervalSeconds": -1}}, "benchmark.checkIntervalSeconds: must be > 0, got -1"),
    ({"devices": []}, "devices: expected dict, got list []"),
    ({"devices": {"tpu": {}}}, "devices: unknown key(s) tpu (allowed: cpu, cuda, hpu)"),
    ({"devices": {"cpu": []}}, "devices.cpu: expected dict, got list []"),
    ({"devices": {"cpu": {"x": 1}}}, f"devices.cpu: unknown key(s) x (allowed: {DEVICE_KEYS})"),
    ({"devices": {"cpu": {"nodeSelector": []}}}, "devices.cpu.nodeSelector: expected dict, got list []"),
    (
        {"devices": {"cpu": {"env": {"A": []}}}},
        "devices.cpu.env.A: expected str or int or float, got list []",
    ),
    (
        {"devices": {"hpu": {"tolerations": [{}, "x"]}}},
        "devices.hpu.tolerations[1]: expected dict, got str 'x'",
    ),
    ({"devices": {"hpu": {"hostIPC": 1}}}, "devices.hpu.hostIPC: expected bool, got int 1"),
    ({"devices": {"cpu": {"image": []}}}, "devices.cpu.image: expected str or int, got list []"),
    ({"devices": {"cpu": {"image": None}}}, "devices.cpu.image: expected str or int, got NoneType None"),
]


@pytest.mark.parametrize(
    ("data", "message"), REFUSED, ids=[m.split(":")[0] + str(i) for i, (_, m) in enumerate(REFUSED)]
)
def test_each_refusal_names_the_key_and_the_value(data: Any, message: str) -> None:
    with pytest.raises(SettingsError) as error:
        parse_settings(data)
    assert str(error.value) == message


def test_values_at_the_bounds_are_taken_and_the_rest_stays_default() -> None:
    s = parse_settings(
        {
            "namespaces": ["a", "b"],
            "logLevel": "warning",
            "livenessPort": 1,
            "imagePullPolicy": "Never",
            "imagePullSecrets": ["r", "s", "r"],
            "reconcileIntervalSeconds": 2,
            "benchmark": {"port": 65535, "checkIntervalSeconds": 0.25},
        }
    )
    assert s == Settings(
        namespaces=("a", "b"),
        log_level="WARNING",
        liveness_port=1,
        image_pull_policy="Never",
        image_pull_secrets=("r", "s"),
        reconcile_interval_seconds=2.0,
        benchmark=BenchmarkSettings(port=65535, check_interval_seconds=0.25),
    )
    assert isinstance(s.reconcile_interval_seconds, float)
    assert parse_settings(
        {"benchmark": {"enabled": False, "timeoutSeconds": 1}}
    ).benchmark == BenchmarkSettings(enabled=False, timeout_seconds=1.0)
    assert parse_settings({}) == parse_settings(None) == Settings()


def test_a_device_override_changes_only_what_it_names() -> None:
    s = parse_settings(
        {
            "devices": {
                "hpu": {"memory": None, "tolerations": [{"key": "k"}], "env": {"A": 1, "B": 2.5}},
                "cpu": {"image": "img", "nodeSelector": {"pool": 3}, "hugepages2Mi": 64, "hostIPC": True},
            }
        }
    )
    hpu, cpu = s.device("hpu"), s.device("cpu")
    assert hpu == DeviceSettings(
        image=DEFAULT_DEVICES["hpu"].image,
        resource_name="habana.ai/gaudi",
        tolerations=({"key": "k"},),
        env={"A": "1", "B": "2.5"},
        memory=None,
        memory_per_card="52352Mi",
        hugepages_2mi_per_card="11874Mi",
        host_ipc=True,
        capabilities=("SYS_NICE",),
        memory_bandwidth=2.45e12,
    )
    assert cpu == DeviceSettings(
        image="img", node_selector={"pool": "3"}, hugepages_2mi="64", host_ipc=True, run_as_user=10001
    )
    assert s.device("cuda") == DEFAULT_DEVICES["cuda"]
    off = parse_settings({"devices": {"cuda": {"resourceName": None}}}).device("cuda")
    assert off.resource_name is None and off.image == DEFAULT_DEVICES["cuda"].image


def test_the_file_comes_from_the_argument_or_the_environment(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.delenv(CONFIG_ENV, raising=False)
    assert load_settings(None) == Settings()
    empty = tmp_path / "empty.yaml"
    empty.write_text("")
    assert load_settings(str(empty)) == Settings()
    chosen = tmp_path / "chosen.yaml"
    chosen.write_text("livenessPort: 9000\n")
    monkeypatch.setenv(CONFIG_ENV, str(chosen))
    assert load_settings(None).liveness_port == 9000
    assert load_settings("").liveness_port == 9000
    other = tmp_path / "other.yaml"
    other.write_text("livenessPort: 9001\n")
    assert load_settings(str(other)).liveness_port == 9001  # the argument wins


def test_file_errors_name_the_file(tmp_path: Path) -> None:
    missing = tmp_path / "missing.yaml"
    with pytest.raises(SettingsError) as error:
        load_settings(str(missing))
    assert str(error.value).startswith(f"cannot read settings file {missing}: ")
    bad = tmp_path / "bad.yaml"
    bad.write_text("a: [")
    with pytest.raises(SettingsError) as error:
        load_settings(str(bad))
    assert str(error.value).startswith(f"settings file {bad} is not valid YAML: ")
    wrong = tmp_path / "wrong.yaml"
    wrong.write_text("livenessPort: 0\n")
    with pytest.raises(SettingsError) as error:
        load_settings(str(wrong))
    assert str(error.value) == f"{wrong}: livenessPort: not a TCP port: 0"


def test_the_hub_endpoint_is_a_url() -> None:
    assert parse_settings({"hubEndpoint": "http://mirror:8080/"}).hub_endpoint == "http://mirror:8080"
    assert parse_settings({"hubEndpoint": ""}).hub_endpoint is None
    with pytest.raises(SettingsError, match="hubEndpoint: must be an http"):
        parse_settings({"hubEndpoint": "mirror:8080"})
