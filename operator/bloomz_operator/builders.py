"""Pure builders: a BloomzInference (spec + owner) and the operator settings -> the desired Pods and Service.

Nothing here talks to the API server; the handlers send what these functions return.
"""

from __future__ import annotations

import hashlib
import json
import re
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from bloomz_api.options import ServeOptions, to_argv

from .access import service_options, service_volumes
from .constants import (
    API_VERSION,
    CONTAINER_NAME,
    GRPC_PORT,
    GRPC_PORT_NAME,
    HEALTH_SERVICE,
    HTTP_PORT,
    HTTP_PORT_NAME,
    KIND,
    LABEL_INSTANCE,
    LABEL_MANAGED_BY,
    LABEL_NAME,
    LABEL_OWNER,
    LABEL_ROLE,
    MANAGER_NAME,
    METRICS_PORT,
    METRICS_PORT_NAME,
    ROLE_LEADER,
    RUNTIME_APP_NAME,
)
from .ownership import owner_tag
from .settings import Settings
from .spec import InferenceSpec

RUNTIME_ENTRYPOINT = ("python3", "-m", "bloomz_runtime.launch")
# The runtime drains for this long on SIGTERM; the kubelet waits a little longer before SIGKILL.
GRACE_PERIOD_S = 30
PROBE_PERIOD_S = 10
# Startup budget: a fixed part (image start, mpirun, graph warm-up) plus time per billion parameters to
# read and shard the weights. 7B1 -> ~12 min, 176B -> ~69 min; unknown sizes get 30 min.
STARTUP_BASE_S = 600
STARTUP_PER_BILLION_S = 20
STARTUP_UNKNOWN_S = 1800
MODELS_VOLUME = "models"
SHM_VOLUME = "dshm"
# BLOOM checkpoints without a size in their name are the 176B model (bigscience/bloom, bigscience/bloomz).
_FULL_SIZE_MODELS = re.compile(r"(^|/)bloomz?(-mt)?$")
_SIZE_IN_NAME = re.compile(r"(\d+)b(\d*)|(\d+)m\b", re.IGNORECASE)


@dataclass(frozen=True)
class Owner:
    """The BloomzInference that owns the children."""

    name: str
    namespace: str
    uid: str


def runtime_entrypoint() -> list[str]:
    """The runtime container's command; the runtime Dockerfiles' ENTRYPOINT must equal it."""
    return list(RUNTIME_ENTRYPOINT)


def model_size_billions(model: str) -> float | None:
    """Parameters (billions) guessed from a BLOOM checkpoint name: bloomz-7b1 -> 7.1, bloom-560m -> 0.56."""
    name = model.rstrip("/").lower()
    if _FULL_SIZE_MODELS.search(name):
        return 176.0
    match = _SIZE_IN_NAME.search(name.rsplit("/", 1)[-1])
    if not match:
        return None
    if match.group(3):
        return int(match.group(3)) / 1000
    return float(f"{match.group(1)}.{match.group(2) or 0}")


def startup_budget_seconds(model: str) -> int:
    size = model_size_billions(model)
    if size is None:
        return STARTUP_UNKNOWN_S
    return int(STARTUP_BASE_S + STARTUP_PER_BILLION_S * size)


def selector_labels(name: str) -> dict[str, str]:
    return {LABEL_NAME: RUNTIME_APP_NAME, LABEL_OWNER: name}


def common_labels(name: str) -> dict[str, str]:
    return {**selector_labels(name), LABEL_INSTANCE: name, LABEL_MANAGED_BY: MANAGER_NAME}


def owner_reference(owner: Owner) -> dict[str, Any]:
    return {
        "apiVersion": API_VERSION,
        "kind": KIND,
        "name": owner.name,
        "uid": owner.uid,
        "controller": True,
        "blockOwnerDeletion": True,
    }


def runtime_args(spec: InferenceSpec) -> list[str]:
    """The launcher's flags for this spec, rendered by the runtime's own option renderer. The ports and
    the grace period are always written out: the pod's containerPorts and termination grace period
    depend on them, whatever defaults the image's runtime has."""
    gen = spec.generation
    opts = ServeOptions(
        model=spec.model,
        device=spec.device,
        revision=spec.model_revision,
        world_size=spec.cards,
        port=GRPC_PORT,
        metrics_port=METRICS_PORT,
        dtype=spec.dtype,
        max_input_tokens=gen.max_input_tokens,
        max_new_tokens=gen.max_new_tokens,
        max_batch_size=gen.max_batch_size,
        max_queue_size=gen.max_queue_size,
        batch_wait_ms=gen.batch_wait_ms,
        kv_cache=gen.kv_cache,
        # An HPU setting: other devices keep the runtime's default (no flag).
        hpu_graphs=gen.hpu_graphs if spec.device == "hpu" else ServeOptions.hpu_graphs,
        grace_period_s=float(GRACE_PERIOD_S),
        **service_options(spec),
    )
    return to_argv(opts, always=("port", "metrics_port", "http_port", "grace_period_s"))


def _env(spec: InferenceSpec, settings: Settings) -> list[dict[str, Any]]:
    env: dict[str, dict[str, Any]] = {}

    def put(name: str, value: str) -> None:
        env[name] = {"name": name, "value": value}

    for name, field_path in (("POD_NAME", "metadata.name"), ("POD_NAMESPACE", "metadata.namespace")):
        env[name] = {"name": name, "valueFrom": {"fieldRef": {"fieldPath": field_path}}}
    put("PYTHONUNBUFFERED", "1")
    if spec.device == "hpu":
        # optimum-habana runs Gaudi in lazy mode; lazy collectives are needed for HPU graphs with
        # DeepSpeed tensor parallelism (optimum-habana text-generation README).
        put("PT_HPU_LAZY_MODE", "1")
        put("PT_HPU_ENABLE_LAZY_COLLECTIVES", "true")
        if spec.multi_node:
            # Intel's HCCL picks the scale-out path itself (Gaudi NICs first, then host NICs over libfabric);
            # HCCL_SOCKET_IFNAME names the interface it uses between servers: the pod's own. The settings'
            # and the spec's env (applied after) override it.
            put("HCCL_SOCKET_IFNAME", "eth0")
    if spec.storage is not None and not spec.model.startswith("/"):
        # Hub downloads go to the model volume, so a restarted pod does not fetch the weights again.
        put("HF_HOME", f"{spec.storage.mount_path.rstrip('/')}/huggingface")
    for name, value in settings.device(spec.device).env.items():
        put(name, value)
    for item in spec.env:
        env[str(item["name"])] = dict(item)
    return list(env.values())


def _resources(spec: InferenceSpec, settings: Settings) -> dict[str, dict[str, Any]]:
    device = settings.device(spec.device)
    limits: dict[str, Any] = {}
    requests: dict[str, Any] = {}
    if spec.device == "cpu":
        # One core per rank, and memory for a small model per rank.
        requests.update({"cpu": str(spec.cards_per_pod), "memory": f"{2 * spec.cards_per_pod}Gi"})
        limits["memory"] = f"{4 * spec.cards_per_pod}Gi"
    elif device.resource_name:
        limits[device.resource_name] = str(spec.cards_per_pod)
    # Gaudi: memory and hugepages scale with the pod's cards (settings may fix a per-pod value instead).
    memory = device.pod_memory(spec.cards_per_pod)
    if memory:
        limits["memory"] = memory
    hugepages = device.pod_hugepages_2mi(spec.cards_per_pod)
    if hugepages:
        limits["hugepages-2Mi"] = hugepages
    # Quantities are strings in the API (an int from the spec's int-or-string is the same quantity).
    limits.update({k: str(v) for k, v in spec.resources.get("limits", {}).items()})
    requests.update({k: str(v) for k, v in spec.resources.get("requests", {}).items()})
    resources: dict[str, dict[str, Any]] = {"limits": limits}
    if requests:
        resources["requests"] = requests
    return resources


def _grpc_probe(period: int, failures: int, timeout: int = 5, tls: bool = False) -> dict[str, Any]:
    # The kubelet's gRPC probe speaks plaintext only; with TLS it asks HTTPS /health (200 only when
    # serving, like the gRPC health status), which the kubelet does not verify.
    action: dict[str, Any] = {"grpc": {"port": GRPC_PORT, "service": HEALTH_SERVICE}}
    if tls:
        action = {"httpGet": {"path": "/health", "port": HTTP_PORT_NAME, "scheme": "HTTPS"}}
    return {
        **action,
        "periodSeconds": period,
        "timeoutSeconds": timeout,
        "failureThreshold": failures,
    }


def _volumes(spec: InferenceSpec) -> tuple[list[dict[str, Any]], list[dict[str, Any]]]:
    # mpirun and DeepSpeed exchange tensors through /dev/shm; the container default (64 MiB) is too small.
    volumes: list[dict[str, Any]] = [{"name": SHM_VOLUME, "emptyDir": {"medium": "Memory"}}]
    mounts: list[dict[str, Any]] = [{"name": SHM_VOLUME, "mountPath": "/dev/shm"}]
    storage = spec.storage
    if storage is not None:
        mount: dict[str, Any] = {"name": MODELS_VOLUME, "mountPath": storage.mount_path}
        if storage.pvc_claim_name:
            claim: dict[str, Any] = {"claimName": storage.pvc_claim_name}
            if storage.pvc_read_only:
                claim["readOnly"] = True
                mount["readOnly"] = True
            if storage.pvc_sub_path:
                mount["subPath"] = storage.pvc_sub_path
            volumes.append({"name": MODELS_VOLUME, "persistentVolumeClaim": claim})
        else:
            # A host directory (allowed by the operator's policy) is only ever read.
            mount["readOnly"] = True
            volumes.append(
                {"name": MODELS_VOLUME, "hostPath": {"path": storage.host_path, "type": "Directory"}}
            )
        mounts.append(mount)
    return volumes, mounts


def security_contexts(spec: InferenceSpec, settings: Settings) -> tuple[dict[str, Any], dict[str, Any]]:
    """The pod's and the container's securityContext: least privilege (Pod Security Standards, see
    podsecurity.py): the runtime's default seccomp profile, no privilege escalation, every capability
    dropped and only the device's own added back (Gaudi: SYS_NICE), a fixed non-root uid where the image
    has one (the CPU image)."""
    device = settings.device(spec.device)
    pod: dict[str, Any] = {"seccompProfile": {"type": "RuntimeDefault"}}
    if device.run_as_user is not None:
        uid = device.run_as_user
        pod.update(runAsNonRoot=uid != 0, runAsUser=uid, runAsGroup=uid, fsGroup=uid)
    capabilities: dict[str, Any] = {"drop": ["ALL"]}
    if device.capabilities:
        capabilities["add"] = list(device.capabilities)
    container = {"allowPrivilegeEscalation": False, "capabilities": capabilities}
    return pod, container


def build_pod_spec(spec: InferenceSpec, settings: Settings) -> dict[str, Any]:
    """The pod's `spec` (identical for every replica; its hash names the template)."""
    device = settings.device(spec.device)
    volumes, mounts = _volumes(spec)
    access_volumes, access_mounts = service_volumes(spec)
    volumes += access_volumes
    mounts += access_mounts
    tls = spec.tls_secret is not None
    startup_failures = max(1, -(-startup_budget_seconds(spec.model) // PROBE_PERIOD_S))
    container: dict[str, Any] = {
        "name": CONTAINER_NAME,
        "image": spec.image or device.image,
        "imagePullPolicy": settings.image_pull_policy,
        "command": runtime_entrypoint(),
        "args": runtime_args(spec),
        "env": _env(spec, settings),
        "ports": [
            {"name": GRPC_PORT_NAME, "containerPort": GRPC_PORT, "protocol": "TCP"},
            {"name": METRICS_PORT_NAME, "containerPort": METRICS_PORT, "protocol": "TCP"},
            {"name": HTTP_PORT_NAME, "containerPort": HTTP_PORT, "protocol": "TCP"},
        ],
        "resources": _resources(spec, settings),
        "volumeMounts": mounts,
        "startupProbe": _grpc_probe(PROBE_PERIOD_S, startup_failures, tls=tls),
        "readinessProbe": _grpc_probe(PROBE_PERIOD_S, 3, tls=tls),
        # Generous: a long batch must not get a busy pod killed.
        "livenessProbe": _grpc_probe(20, 6, timeout=10, tls=tls),
    }
    pod_security, container["securityContext"] = security_contexts(spec, settings)
    pod_spec: dict[str, Any] = {
        "automountServiceAccountToken": False,  # the runtime never calls the Kubernetes API
        "securityContext": pod_security,
        "restartPolicy": "Always",
        "terminationGracePeriodSeconds": GRACE_PERIOD_S + 15,
        "containers": [container],
        "volumes": volumes,
    }
    if device.host_ipc:
        pod_spec["hostIPC"] = True
    if settings.image_pull_secrets:
        pod_spec["imagePullSecrets"] = [{"name": name} for name in settings.image_pull_secrets]
    node_selector = {**device.node_selector, **spec.node_selector}
    if node_selector:
        pod_spec["nodeSelector"] = node_selector
    tolerations = [dict(t) for t in (*device.tolerations, *spec.tolerations)]
    if tolerations:
        pod_spec["tolerations"] = tolerations
    return pod_spec


def template_hash(pod_spec: Mapping[str, Any]) -> str:
    """A short stable digest of the pod template: a changed spec gives a new hash, hence new pods."""
    canonical = json.dumps(pod_spec, sort_keys=True, separators=(",", ":"))
    return hashlib.sha256(canonical.encode()).hexdigest()[:10]


def pod_name(owner: Owner, hash_: str, index: int) -> str:
    # Deterministic names make creation idempotent: an operator restart gets 409s, not twins. The owner's
    # uid tag keeps two resources whose names share the first 33 characters apart; <= 63 characters (a DNS
    # label: the pod's hostname) with a group member suffix and up to 4-digit replica indexes.
    return f"{owner.name[:33].rstrip('-')}-{owner_tag(owner.uid)}-{hash_}-{index}"


def build_service(owner: Owner, *, leaders_only: bool = False) -> dict[str, Any]:
    """The Service in front of the replicas: gRPC, Prometheus metrics and the HTTP API.

    `leaders_only`: multi-node replicas serve from their leader pod only (workers run sshd and ranks)."""
    selector = selector_labels(owner.name)
    if leaders_only:
        selector[LABEL_ROLE] = ROLE_LEADER
    return {
        "apiVersion": "v1",
        "kind": "Service",
        "metadata": {
            "name": owner.name,
            "namespace": owner.namespace,
            "labels": common_labels(owner.name),
            "ownerReferences": [owner_reference(owner)],
        },
        "spec": {
            "type": "ClusterIP",
            "selector": selector,
            "ports": [
                {
                    "name": GRPC_PORT_NAME,
                    "port": GRPC_PORT,
                    "targetPort": GRPC_PORT_NAME,
                    "protocol": "TCP",
                    "appProtocol": "grpc",
                },
                {
                    "name": METRICS_PORT_NAME,
                    "port": METRICS_PORT,
                    "targetPort": METRICS_PORT_NAME,
                    "protocol": "TCP",
                },
                {"name": HTTP_PORT_NAME, "port": HTTP_PORT, "targetPort": HTTP_PORT_NAME, "protocol": "TCP"},
            ],
        },
    }


def service_endpoint(owner: Owner) -> str:
    return f"{owner.name}.{owner.namespace}.svc:{GRPC_PORT}"
