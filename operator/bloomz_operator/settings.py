"""Operator settings: a YAML file, every key optional, built-in defaults.

`load_settings(path)` reads and validates the file; unknown keys and wrong types are refused with a
message that names the key, so a typo in a Helm value never silently falls back to a default.
"""

from __future__ import annotations

import os
import re
from collections.abc import Mapping
from dataclasses import dataclass, field, replace
from typing import Any

import yaml

from .policy import NetworkSettings, PolicySettings

CONFIG_ENV = "BLOOMZ_OPERATOR_CONFIG"

# Intel's Gaudi PyTorch installer image the Gaudi runtime image is built on (docker/runtime-gaudi.Dockerfile):
# optimum-habana 1.21.x is validated with SynapseAI 1.24.0 (PyTorch 2.10.0), Habana's DeepSpeed fork tag
# 1.23.0 and transformers 4.55.x.
SYNAPSE_VERSION = "1.24.0"
GAUDI_BASE_IMAGE = (
    f"vault.habana.ai/gaudi-docker/{SYNAPSE_VERSION}/ubuntu22.04/habanalabs/pytorch-installer-2.10.0"
)
RUNTIME_VERSION = "0.1.0"
DEFAULT_IMAGES = {
    "hpu": f"ghcr.io/bloomz-operator/runtime-gaudi:{RUNTIME_VERSION}-synapse{SYNAPSE_VERSION}",
    "cuda": f"ghcr.io/bloomz-operator/runtime-cuda:{RUNTIME_VERSION}",
    "cpu": f"ghcr.io/bloomz-operator/runtime-cpu:{RUNTIME_VERSION}",
}
DEVICE_RESOURCES = {"hpu": "habana.ai/gaudi", "cuda": "nvidia.com/gpu"}
# Intel's Gaudi pod example (docs.habana.ai "Running Workloads on Kubernetes") asks 409Gi of memory and
# 95000Mi of hugepages-2Mi for a pod with all 8 cards of a server: an eighth of each per card, so that a
# 1-card pod asks for an eighth of a server and 8 cards for the example's figures.
GAUDI_MEMORY_PER_CARD = "52352Mi"  # 409Gi = 418816Mi / 8
# 95000Mi / 8 is 5937.5 pages of 2 MiB: 5937 whole pages per card, so 8 cards (94992Mi) still fit a server
# prepared with Intel's 47500 pages.
GAUDI_HUGEPAGES_2MI_PER_CARD = "11874Mi"
DEVICES = ("hpu", "cuda", "cpu")
IMAGE_PULL_POLICIES = ("Always", "IfNotPresent", "Never")


class SettingsError(ValueError):
    """The settings file is unreadable or does not match the settings schema."""


@dataclass(frozen=True)
class DeviceSettings:
    image: str
    resource_name: str | None = None
    node_selector: Mapping[str, str] = field(default_factory=dict)
    tolerations: tuple[Mapping[str, Any], ...] = ()
    env: Mapping[str, str] = field(default_factory=dict)
    # Memory and hugepages-2Mi limits of a pod: the per-card values times the pod's cards, unless the
    # per-pod values are set (they win). None = not requested.
    memory: str | None = None
    hugepages_2mi: str | None = None
    memory_per_card: str | None = None
    hugepages_2mi_per_card: str | None = None
    host_ipc: bool = False
    # Memory bandwidth of one device in bytes/s: the roofline that status.latency.bandwidthEfficiency is a
    # fraction of (Gaudi2 HBM2E 2.45 TB/s, H100 SXM HBM3 3.35 TB/s; a CPU's depends on the machine).
    memory_bandwidth: float | None = None
    # Least privilege: the uid the runtime runs as (None: the image's user, e.g. root in vendor images) and
    # the Linux capabilities added back after dropping ALL (Gaudi: SYS_NICE, per Intel's pod recipe).
    run_as_user: int | None = None
    capabilities: tuple[str, ...] = ()

    def pod_memory(self, cards: int) -> str | None:
        return self.memory or scale_quantity(self.memory_per_card, cards)

    def pod_hugepages_2mi(self, cards: int) -> str | None:
        return self.hugepages_2mi or scale_quantity(self.hugepages_2mi_per_card, cards)


# A whole number with a binary or decimal suffix: what a per-card quantity may be, so that a pod's
# total is exact (52352Mi x 8 = 418816Mi).
_WHOLE_QUANTITY = re.compile(r"^([0-9]+)(Ki|Mi|Gi|Ti|Pi|Ei|k|M|G|T|P|E)?$")


def scale_quantity(quantity: str | None, times: int) -> str | None:
    """`quantity` x `times` in the same unit; None stays None."""
    if quantity is None:
        return None
    match = _WHOLE_QUANTITY.match(quantity)
    if not match:
        raise ValueError(f"not a whole Kubernetes quantity: {quantity!r}")
    return f"{int(match.group(1)) * times}{match.group(2) or ''}"


@dataclass(frozen=True)
class BenchmarkSettings:
    enabled: bool = True
    timeout_seconds: float = 900.0
    # The runtime gRPC port the operator dials on each pod IP (tests point it at a local runtime).
    port: int = 50051
    # How often the per-resource timer checks whether a measurement is due.
    check_interval_seconds: float = 10.0


@dataclass(frozen=True)
class ApiSettings:
    """How the operator talks to the API server: bounded calls, retried with exponential backoff."""

    # A whole short request (connect + answer); a dead connection fails within this instead of hanging a
    # pass that holds the resource's lock.
    request_timeout_seconds: float = 30.0
    connect_timeout_seconds: float = 10.0
    # Watches: the server is asked to end the stream after this long, and the client gives up 60 s later.
    watch_timeout_seconds: float = 300.0
    # A failed pass is retried after ~base x 2^(n-1) seconds (with jitter), capped at max.
    retry_base_seconds: float = 1.0
    retry_max_seconds: float = 60.0


@dataclass(frozen=True)
class RolloutSettings:
    """Rollouts the operator's own settings cause (a new default image, a changed device setting) are rolled
    across resources at a bounded rate; a resource whose spec changed is never held back."""

    max_resources_at_once: int = 5
    max_resources_per_minute: int = 10


@dataclass(frozen=True)
class Settings:
    namespaces: tuple[str, ...] = ()
    log_level: str = "INFO"
    liveness_port: int = 8080
    # Prometheus endpoint of the operator (its own series); 0 = none. The chart turns it on.
    metrics_port: int = 0
    image_pull_policy: str = "IfNotPresent"
    # Secrets (in the resource's namespace) the kubelet uses to pull the runtime images.
    image_pull_secrets: tuple[str, ...] = ()
    reconcile_interval_seconds: float = 15.0
    # HF_ENDPOINT of the model-download Jobs: a Hub mirror (air-gapped clusters); None = huggingface.co.
    hub_endpoint: str | None = None
    benchmark: BenchmarkSettings = field(default_factory=BenchmarkSettings)
    api: ApiSettings = field(default_factory=ApiSettings)
    rollout: RolloutSettings = field(default_factory=RolloutSettings)
    devices: Mapping[str, DeviceSettings] = field(default_factory=lambda: dict(DEFAULT_DEVICES))
    policy: PolicySettings = field(default_factory=PolicySettings)
    network: NetworkSettings = field(default_factory=NetworkSettings)

    def device(self, name: str) -> DeviceSettings:
        return self.devices[name]


DEFAULT_DEVICES: dict[str, DeviceSettings] = {
    "hpu": DeviceSettings(
        image=DEFAULT_IMAGES["hpu"],
        resource_name="habana.ai/gaudi",
        memory_per_card=GAUDI_MEMORY_PER_CARD,
        hugepages_2mi_per_card=GAUDI_HUGEPAGES_2MI_PER_CARD,
        host_ipc=True,
        capabilities=("SYS_NICE",),
        memory_bandwidth=2.45e12,
    ),
    "cuda": DeviceSettings(
        image=DEFAULT_IMAGES["cuda"], resource_name="nvidia.com/gpu", memory_bandwidth=3.35e12
    ),
    # The CPU runtime image's own user (docker/runtime-cpu.Dockerfile: USER 10001).
    "cpu": DeviceSettings(image=DEFAULT_IMAGES["cpu"], run_as_user=10001),
}

_DEVICE_KEYS = {
    "image": "image",
    "resourceName": "resource_name",
    "nodeSelector": "node_selector",
    "tolerations": "tolerations",
    "env": "env",
    "memory": "memory",
    "hugepages2Mi": "hugepages_2mi",
    "memoryPerCard": "memory_per_card",
    "hugepages2MiPerCard": "hugepages_2mi_per_card",
    "hostIPC": "host_ipc",
    "runAsUser": "run_as_user",
    "capabilities": "capabilities",
    "memoryBandwidth": "memory_bandwidth",
}
_POLICY_KEYS = {
    "hostPathPrefixes": "host_path_prefixes",
    "allowedImagePrefixes": "allowed_image_prefixes",
    "allowedTolerationKeys": "allowed_toleration_keys",
    "allowEnvSecrets": "allow_env_secrets",
}
_PER_CARD_KEYS = ("memoryPerCard", "hugepages2MiPerCard")
_QUANTITY_KEYS = ("memory", "hugepages2Mi", *_PER_CARD_KEYS)
_BENCHMARK_KEYS = {
    "enabled": "enabled",
    "timeoutSeconds": "timeout_seconds",
    "port": "port",
    "checkIntervalSeconds": "check_interval_seconds",
}
_TOP_KEYS = {
    "namespaces",
    "logLevel",
    "livenessPort",
    "metricsPort",
    "imagePullPolicy",
    "imagePullSecrets",
    "reconcileIntervalSeconds",
    "hubEndpoint",
    "benchmark",
    "api",
    "rollout",
    "devices",
    "policy",
    "network",
}
_NETWORK_KEYS = {
    "enabled": "enabled",
    "clientNamespaces": "client_namespaces",
    "clientPodLabels": "client_pod_labels",
    "monitoringNamespace": "monitoring_namespace",
    "operatorNamespace": "operator_namespace",
}
_API_KEYS = {
    "requestTimeoutSeconds": "request_timeout_seconds",
    "connectTimeoutSeconds": "connect_timeout_seconds",
    "watchTimeoutSeconds": "watch_timeout_seconds",
    "retryBaseSeconds": "retry_base_seconds",
    "retryMaxSeconds": "retry_max_seconds",
}
_ROLLOUT_KEYS = {
    "maxResourcesAtOnce": "max_resources_at_once",
    "maxResourcesPerMinute": "max_resources_per_minute",
}
LOG_LEVELS = ("DEBUG", "INFO", "WARNING", "ERROR", "CRITICAL")


def _secret_name(item: Any, where: str) -> str:
    """An image pull Secret as Kubernetes writes it (`{name: regcred}`), or just its name."""
    if isinstance(item, dict) and set(item) == {"name"}:
        return _expect(item["name"], str, f"{where}.name")
    return _expect(item, str, where)


def _expect(value: Any, kind: type | tuple[type, ...], where: str) -> Any:
    # bool is an int in Python: refuse it where a number is expected.
    if isinstance(value, bool) and kind in (int, float, (int, float)):
        raise SettingsError(f"{where}: expected a number, got {value!r}")
    if not isinstance(value, kind):
        names = kind.__name__ if isinstance(kind, type) else " or ".join(k.__name__ for k in kind)
        raise SettingsError(f"{where}: expected {names}, got {type(value).__name__} {value!r}")
    return value


def _check_keys(data: Mapping[str, Any], allowed: set[str] | Mapping[str, str], where: str) -> None:
    unknown = sorted(set(data) - set(allowed))
    if unknown:
        raise SettingsError(
            f"{where}: unknown key(s) {', '.join(unknown)} (allowed: {', '.join(sorted(allowed))})"
        )


def _str_map(value: Any, where: str) -> dict[str, str]:
    _expect(value, dict, where)
    return {str(k): str(_expect(v, (str, int, float), f"{where}.{k}")) for k, v in value.items()}


def _positive(value: Any, where: str, *, allow_zero: bool = False) -> float:
    number = _expect(value, (int, float), where)
    if number < 0 or (number == 0 and not allow_zero):
        raise SettingsError(f"{where}: must be {'>= 0' if allow_zero else '> 0'}, got {number}")
    return float(number)


def _port(value: Any, where: str) -> int:
    port = _expect(value, int, where)
    if not 1 <= port <= 65535:
        raise SettingsError(f"{where}: not a TCP port: {port}")
    return int(port)


def _uid(value: Any, where: str) -> int:
    uid = int(_expect(value, int, where))
    if uid < 0:
        raise SettingsError(f"{where}: must be a uid >= 0, got {uid}")
    return uid


def _str_list(value: Any, where: str) -> tuple[str, ...]:
    items = _expect(value, list, where)
    return tuple(str(_expect(item, str, f"{where}[{i}]")) for i, item in enumerate(items))


def _policy(data: Any) -> PolicySettings:
    _expect(data, dict, "policy")
    _check_keys(data, _POLICY_KEYS, "policy")
    changes: dict[str, Any] = {}
    for key, value in data.items():
        attr, at = _POLICY_KEYS[key], f"policy.{key}"
        if key == "allowEnvSecrets":
            changes[attr] = _expect(value, bool, at)
        elif key == "allowedTolerationKeys" and value is None:
            changes[attr] = None  # any key
        else:
            changes[attr] = _str_list(value, at)
    for prefix in changes.get("host_path_prefixes", ()):
        if not prefix.startswith("/"):
            raise SettingsError(f"policy.hostPathPrefixes: {prefix!r} is not an absolute path")
    return replace(PolicySettings(), **changes)


def _network(data: Any) -> NetworkSettings:
    _expect(data, dict, "network")
    _check_keys(data, _NETWORK_KEYS, "network")
    changes: dict[str, Any] = {}
    for key, value in data.items():
        attr, at = _NETWORK_KEYS[key], f"network.{key}"
        if key == "enabled":
            changes[attr] = _expect(value, bool, at)
        elif key == "clientNamespaces":
            changes[attr] = _str_list(value, at)
        elif key == "clientPodLabels":
            changes[attr] = _str_map(value, at)
        elif value is None:
            changes[attr] = None  # none
        else:
            changes[attr] = str(_expect(value, str, at)) or None
    return replace(NetworkSettings(), **changes)


def _device(name: str, data: Any, base: DeviceSettings) -> DeviceSettings:
    where = f"devices.{name}"
    _expect(data, dict, where)
    _check_keys(data, _DEVICE_KEYS, where)
    changes: dict[str, Any] = {}
    for key, value in data.items():
        attr, at = _DEVICE_KEYS[key], f"{where}.{key}"
        if key in ("nodeSelector", "env"):
            changes[attr] = _str_map(value, at)
        elif key == "tolerations":
            items = _expect(value, list, at)
            changes[attr] = tuple(_expect(t, dict, f"{at}[{i}]") for i, t in enumerate(items))
        elif key == "hostIPC":
            changes[attr] = _expect(value, bool, at)
        elif key == "memoryBandwidth":
            changes[attr] = None if value is None else float(_expect(value, (int, float), at))
            if value is not None and changes[attr] <= 0:
                raise SettingsError(f"{at}: must be > 0 bytes/s, got {value!r}")
        elif key == "runAsUser":
            changes[attr] = None if value is None else _uid(value, at)
        elif key == "capabilities":
            changes[attr] = _str_list(value, at)
        elif value is None and key in (*_QUANTITY_KEYS, "resourceName"):
            changes[attr] = None  # explicitly switched off
        elif key in _PER_CARD_KEYS:
            quantity = str(_expect(value, (str, int), at))
            if not _WHOLE_QUANTITY.match(quantity):
                raise SettingsError(
                    f"{at}: a whole quantity with a unit (e.g. 52352Mi) is needed, got {value!r}"
                )
            changes[attr] = quantity
        else:
            changes[attr] = str(_expect(value, (str, int), at))
    return replace(base, **changes)


def _api_settings(data: Any, base: ApiSettings) -> ApiSettings:
    _expect(data, dict, "api")
    _check_keys(data, _API_KEYS, "api")
    changes = {_API_KEYS[key]: _positive(value, f"api.{key}") for key, value in data.items()}
    merged = replace(base, **changes)
    if merged.retry_max_seconds < merged.retry_base_seconds:
        raise SettingsError("api.retryMaxSeconds: must be >= api.retryBaseSeconds")
    return merged


def _rollout_settings(data: Any, base: RolloutSettings) -> RolloutSettings:
    _expect(data, dict, "rollout")
    _check_keys(data, _ROLLOUT_KEYS, "rollout")
    changes: dict[str, int] = {}
    for key, value in data.items():
        number = _expect(value, int, f"rollout.{key}")
        if number < 1:
            raise SettingsError(f"rollout.{key}: must be >= 1, got {number}")
        changes[_ROLLOUT_KEYS[key]] = int(number)
    return replace(base, **changes)


def parse_settings(data: Mapping[str, Any] | None) -> Settings:
    """Validate a settings mapping (the YAML document) and merge it over the defaults."""
    if data is None:
        return Settings()
    _expect(data, dict, "settings")
    _check_keys(data, _TOP_KEYS, "settings")
    defaults = Settings()
    changes: dict[str, Any] = {}
    if "namespaces" in data:
        items = _expect(data["namespaces"], list, "namespaces")
        changes["namespaces"] = tuple(_expect(n, str, f"namespaces[{i}]") for i, n in enumerate(items))
    if "logLevel" in data:
        level = str(_expect(data["logLevel"], str, "logLevel")).upper()
        if level not in LOG_LEVELS:
            raise SettingsError(f"logLevel: must be one of {', '.join(LOG_LEVELS)}, got {data['logLevel']!r}")
        changes["log_level"] = level
    if "livenessPort" in data:
        changes["liveness_port"] = _port(data["livenessPort"], "livenessPort")
    if "metricsPort" in data and data["metricsPort"] != 0:
        changes["metrics_port"] = _port(data["metricsPort"], "metricsPort")
    if "imagePullPolicy" in data:
        policy = _expect(data["imagePullPolicy"], str, "imagePullPolicy")
        if policy not in IMAGE_PULL_POLICIES:
            raise SettingsError(
                f"imagePullPolicy: must be one of {', '.join(IMAGE_PULL_POLICIES)}, got {policy!r}"
            )
        changes["image_pull_policy"] = policy
    if "imagePullSecrets" in data:
        items = _expect(data["imagePullSecrets"], list, "imagePullSecrets")
        names = tuple(_secret_name(item, f"imagePullSecrets[{i}]") for i, item in enumerate(items))
        if any(not n for n in names):
            raise SettingsError("imagePullSecrets: names must not be empty")
        changes["image_pull_secrets"] = tuple(dict.fromkeys(names))
    if "reconcileIntervalSeconds" in data:
        changes["reconcile_interval_seconds"] = _positive(
            data["reconcileIntervalSeconds"], "reconcileIntervalSeconds"
        )
    if data.get("hubEndpoint"):
        endpoint = _expect(data["hubEndpoint"], str, "hubEndpoint")
        if not endpoint.startswith(("http://", "https://")):
            raise SettingsError(f"hubEndpoint: must be an http:// or https:// URL, got {endpoint!r}")
        changes["hub_endpoint"] = endpoint.rstrip("/")
    if "benchmark" in data:
        bench = _expect(data["benchmark"], dict, "benchmark")
        _check_keys(bench, _BENCHMARK_KEYS, "benchmark")
        bench_changes: dict[str, Any] = {}
        if "enabled" in bench:
            bench_changes["enabled"] = _expect(bench["enabled"], bool, "benchmark.enabled")
        if "timeoutSeconds" in bench:
            bench_changes["timeout_seconds"] = _positive(bench["timeoutSeconds"], "benchmark.timeoutSeconds")
        if "port" in bench:
            bench_changes["port"] = _port(bench["port"], "benchmark.port")
        if "checkIntervalSeconds" in bench:
            bench_changes["check_interval_seconds"] = _positive(
                bench["checkIntervalSeconds"], "benchmark.checkIntervalSeconds"
            )
        changes["benchmark"] = replace(defaults.benchmark, **bench_changes)
    if "api" in data:
        changes["api"] = _api_settings(data["api"], defaults.api)
    if "rollout" in data:
        changes["rollout"] = _rollout_settings(data["rollout"], defaults.rollout)
    if "devices" in data:
        devices = _expect(data["devices"], dict, "devices")
        _check_keys(devices, set(DEVICES), "devices")
        merged = dict(defaults.devices)
        for name, device_data in devices.items():
            merged[name] = _device(name, device_data, merged[name])
        changes["devices"] = merged
    if "policy" in data:
        changes["policy"] = _policy(data["policy"])
    if "network" in data:
        changes["network"] = _network(data["network"])
    return replace(defaults, **changes)


def load_settings(path: str | None) -> Settings:
    """Read the settings file at `path` (or $BLOOMZ_OPERATOR_CONFIG); no file means the defaults."""
    path = path or os.environ.get(CONFIG_ENV) or None
    if path is None:
        return Settings()
    try:
        with open(path, encoding="utf-8") as stream:
            data = yaml.safe_load(stream)
    except OSError as error:
        raise SettingsError(f"cannot read settings file {path}: {error}") from error
    except yaml.YAMLError as error:
        raise SettingsError(f"settings file {path} is not valid YAML: {error}") from error
    try:
        return parse_settings(data)
    except SettingsError as error:
        raise SettingsError(f"{path}: {error}") from error
