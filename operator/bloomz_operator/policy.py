"""What a BloomzInference spec may ask for on this cluster, decided by the operator settings (`policy`).

A platform team running one operator for many tenants decides whether specs may mount host paths (off by
default; when on, only under allowed prefixes and always read-only), which image registries or prefixes
they may run, which toleration keys they may carry, and whether `env` may read Secrets. A refused spec gets
`InvalidSpec` with the reasons and never a pod. The chart's ValidatingAdmissionPolicy enforces the same
rules at admission time (charts/bloomz-operator/templates/admission-policy.yaml); both read the same values.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from .spec import InferenceSpec


@dataclass(frozen=True)
class PolicySettings:
    # Host directories a spec may mount (storage.hostPath), by path prefix; empty: hostPath is refused.
    host_path_prefixes: tuple[str, ...] = ()
    # Image references a spec's `image` must start with (a registry, "registry/org/"); empty: any image.
    allowed_image_prefixes: tuple[str, ...] = ()
    # Toleration keys a spec may carry; None: any key (the settings' own device tolerations always apply).
    allowed_toleration_keys: tuple[str, ...] | None = None
    # Whether `env` entries may use valueFrom.secretKeyRef (reading a Secret of the namespace).
    allow_env_secrets: bool = False


@dataclass(frozen=True)
class NetworkSettings:
    # Write a NetworkPolicy per resource.
    enabled: bool = True
    # Namespaces (besides the resource's own) whose pods may call gRPC/HTTP; `client_pod_labels`, when set,
    # narrows the callers to pods with these labels.
    client_namespaces: tuple[str, ...] = ()
    client_pod_labels: dict[str, str] = field(default_factory=dict)
    # Where Prometheus runs (the metrics port is open to it only); None: the resource's namespace only.
    monitoring_namespace: str | None = "monitoring"
    # The operator's own namespace (its latency timer calls gRPC); None: not needed (same namespace).
    operator_namespace: str | None = None


def _under(path: str, prefix: str) -> bool:
    # "/data" allows "/data" and "/data/models", not "/database"; ".." never escapes a prefix.
    if ".." in path.split("/"):
        return False
    base = prefix.rstrip("/") or "/"
    return path == base or path.startswith(base if base.endswith("/") else base + "/")


def violations(spec: InferenceSpec, policy: PolicySettings) -> list[str]:
    """Every reason `policy` refuses `spec` (empty: allowed)."""
    found: list[str] = []
    storage = spec.storage
    if storage is not None and storage.host_path:
        if not policy.host_path_prefixes:
            found.append("spec.storage.hostPath is not allowed by the operator's policy (use a PVC)")
        elif not any(_under(storage.host_path, p) for p in policy.host_path_prefixes):
            allowed = ", ".join(policy.host_path_prefixes)
            found.append(
                f"spec.storage.hostPath.path {storage.host_path!r} is not under an allowed prefix ({allowed})"
            )
    prefixes = policy.allowed_image_prefixes
    if spec.image and prefixes and not any(spec.image.startswith(p) for p in prefixes):
        found.append(
            f"spec.image {spec.image!r} is not from an allowed registry or prefix ({', '.join(prefixes)})"
        )
    if policy.allowed_toleration_keys is not None:
        for index, toleration in enumerate(spec.tolerations):
            key = toleration.get("key")
            if key not in policy.allowed_toleration_keys:
                allowed = ", ".join(policy.allowed_toleration_keys) or "none"
                found.append(f"spec.tolerations[{index}].key {key!r} is not allowed (allowed: {allowed})")
    if not policy.allow_env_secrets:
        for index, item in enumerate(spec.env):
            if "secretKeyRef" in (item.get("valueFrom") or {}):
                found.append(
                    f"spec.env[{index}] ({item.get('name')}) reads a Secret: the operator's policy forbids it"
                )
    return found
