"""The operator's settings file, field by field: the policy, network, device and metrics-port entries
accepted at and around their bounds, and every refusal naming the entry it refuses, word for word."""

from __future__ import annotations

from typing import Any

import pytest
from bloomz_operator.settings import Settings, SettingsError, parse_settings, scale_quantity

POLICY_KEYS = "allowEnvSecrets, allowedImagePrefixes, allowedTolerationKeys, hostPathPrefixes"
NETWORK_KEYS = "clientNamespaces, clientPodLabels, enabled, monitoringNamespace, operatorNamespace"


def cpu(**fields: Any) -> dict[str, Any]:
    return {"devices": {"cpu": fields}}


@pytest.mark.parametrize(
    ("data", "message"),
    [
        ({"policy": "x"}, "policy: expected dict, got str 'x'"),
        ({"policy": {"bogus": 1}}, f"policy: unknown key(s) bogus (allowed: {POLICY_KEYS})"),
        ({"network": "x"}, "network: expected dict, got str 'x'"),
        ({"network": {"bogus": 1}}, f"network: unknown key(s) bogus (allowed: {NETWORK_KEYS})"),
        ({"network": {"enabled": "yes"}}, "network.enabled: expected bool, got str 'yes'"),
        ({"network": {"clientNamespaces": "a"}}, "network.clientNamespaces: expected list, got str 'a'"),
        ({"network": {"clientNamespaces": ["a", 1]}}, "network.clientNamespaces[1]: expected str, got int 1"),
        ({"network": {"clientPodLabels": "a"}}, "network.clientPodLabels: expected dict, got str 'a'"),
        ({"network": {"monitoringNamespace": 3}}, "network.monitoringNamespace: expected str, got int 3"),
        (cpu(memoryBandwidth="fast"), "devices.cpu.memoryBandwidth: expected int or float, got str 'fast'"),
        (cpu(memoryBandwidth=0), "devices.cpu.memoryBandwidth: must be > 0 bytes/s, got 0"),
        (cpu(memoryBandwidth=-5.0), "devices.cpu.memoryBandwidth: must be > 0 bytes/s, got -5.0"),
        (cpu(runAsUser="root"), "devices.cpu.runAsUser: expected int, got str 'root'"),
        (cpu(runAsUser=-1), "devices.cpu.runAsUser: must be a uid >= 0, got -1"),
        (cpu(capabilities="NET_ADMIN"), "devices.cpu.capabilities: expected list, got str 'NET_ADMIN'"),
        (cpu(memoryPerCard=1.5), "devices.cpu.memoryPerCard: expected str or int, got float 1.5"),
        ({"metricsPort": "x"}, "metricsPort: expected int, got str 'x'"),
        ({"metricsPort": 65536}, "metricsPort: not a TCP port: 65536"),
    ],
)
def test_a_refusal_names_the_entry(data: dict[str, Any], message: str) -> None:
    with pytest.raises(SettingsError) as refused:
        parse_settings(data)
    assert str(refused.value) == message


def test_device_entries_at_their_bounds() -> None:
    device = parse_settings(cpu(memoryBandwidth=1, runAsUser=0, capabilities=["NET_BIND_SERVICE"])).device(
        "cpu"
    )
    assert device.memory_bandwidth == 1.0 and isinstance(device.memory_bandwidth, float)
    assert device.run_as_user == 0
    assert device.capabilities == ("NET_BIND_SERVICE",)
    unset = parse_settings(cpu(memoryBandwidth=None, runAsUser=None)).device("cpu")
    assert unset.memory_bandwidth is None and unset.run_as_user is None
    assert parse_settings(cpu(runAsUser=1000)).device("cpu").run_as_user == 1000


def test_network_entries() -> None:
    network = parse_settings(
        {
            "network": {
                "enabled": False,
                "clientNamespaces": ["apps"],
                "clientPodLabels": {"role": "client"},
                "monitoringNamespace": None,
                "operatorNamespace": "",
            }
        }
    ).network
    assert network.enabled is False
    assert network.client_namespaces == ("apps",)
    assert network.client_pod_labels == {"role": "client"}
    assert network.monitoring_namespace is None and network.operator_namespace is None
    assert parse_settings({"network": {"operatorNamespace": "ops"}}).network.operator_namespace == "ops"


@pytest.mark.parametrize(
    ("port", "expected"), [(0, Settings().metrics_port), (1, 1), (9100, 9100), (65535, 65535)]
)
def test_the_metrics_port_is_off_at_0_and_any_tcp_port_else(port: int, expected: int) -> None:
    assert Settings().metrics_port == 0
    assert parse_settings({"metricsPort": port}).metrics_port == expected


def test_the_api_and_rollout_tables_reach_the_settings() -> None:
    parsed = parse_settings({"api": {"connectTimeoutSeconds": 2}, "rollout": {"maxResourcesAtOnce": 3}})
    assert parsed.api.connect_timeout_seconds == 2.0
    assert parsed.api.request_timeout_seconds == Settings().api.request_timeout_seconds
    assert parsed.rollout.max_resources_at_once == 3
    assert parsed.rollout.max_resources_per_minute == Settings().rollout.max_resources_per_minute


def test_a_quantity_that_cannot_be_scaled_is_named() -> None:
    with pytest.raises(ValueError) as refused:
        scale_quantity("1.5Gi", 2)
    assert str(refused.value) == "not a whole Kubernetes quantity: '1.5Gi'"
    assert scale_quantity("52352Mi", 2) == "104704Mi" and scale_quantity(None, 2) is None
