"""A small checker of the Kubernetes Pod Security Standards (baseline and restricted) for a pod spec.

The rules are the ones kubernetes.io/docs/concepts/security/pod-security-standards lists (v1.31 policy
version) for the fields the operator's pods can carry; the tests use it to state which level each device's
pods meet (CPU: restricted; CUDA: baseline; Gaudi: privileged, because Intel's recipe needs hostIPC and
SYS_NICE), so a change that loosens a pod fails a test instead of a namespace's admission.
"""

from __future__ import annotations

from collections.abc import Iterator, Mapping
from typing import Any

LEVELS = ("restricted", "baseline", "privileged")
BASELINE_CAPABILITIES = frozenset(
    {
        "AUDIT_WRITE", "CHOWN", "DAC_OVERRIDE", "FOWNER", "FSETID", "KILL", "MKNOD", "NET_BIND_SERVICE",
        "SETFCAP", "SETGID", "SETPCAP", "SETUID", "SYS_CHROOT",
    }
)  # fmt: skip
RESTRICTED_VOLUMES = frozenset(
    {
        "configMap",
        "csi",
        "downwardAPI",
        "emptyDir",
        "ephemeral",
        "persistentVolumeClaim",
        "projected",
        "secret",
    }
)
SAFE_SYSCTLS = frozenset(
    {
        "kernel.shm_rmid_forced", "net.ipv4.ip_local_port_range", "net.ipv4.ip_unprivileged_port_start",
        "net.ipv4.tcp_syncookies", "net.ipv4.ping_group_range", "net.ipv4.ip_local_reserved_ports",
        "net.ipv4.tcp_keepalive_time", "net.ipv4.tcp_fin_timeout", "net.ipv4.tcp_keepalive_intvl",
        "net.ipv4.tcp_keepalive_probes",
    }
)  # fmt: skip
SELINUX_TYPES = frozenset({"", "container_t", "container_init_t", "container_kvm_t", "container_engine_t"})


def _containers(spec: Mapping[str, Any]) -> Iterator[Mapping[str, Any]]:
    for key in ("initContainers", "containers", "ephemeralContainers"):
        yield from spec.get(key) or ()


def baseline_violations(spec: Mapping[str, Any]) -> list[str]:
    found: list[str] = []
    pod_ctx = spec.get("securityContext") or {}
    for field in ("hostNetwork", "hostPID", "hostIPC"):
        if spec.get(field):
            found.append(f"host namespaces: {field}=true")
    if any("hostPath" in v for v in spec.get("volumes") or ()):
        found.append("hostPath volumes")
    for sysctl in pod_ctx.get("sysctls") or ():
        if sysctl.get("name") not in SAFE_SYSCTLS:
            found.append(f"sysctl {sysctl.get('name')}")
    contexts = [("pod", pod_ctx)] + [
        (c.get("name", "?"), c.get("securityContext") or {}) for c in _containers(spec)
    ]
    for name, ctx in contexts:
        if (ctx.get("windowsOptions") or {}).get("hostProcess"):
            found.append(f"{name}: hostProcess")
        if (ctx.get("seccompProfile") or {}).get("type") == "Unconfined":
            found.append(f"{name}: seccompProfile Unconfined")
        selinux = ctx.get("seLinuxOptions") or {}
        if selinux.get("type", "") not in SELINUX_TYPES or selinux.get("user") or selinux.get("role"):
            found.append(f"{name}: seLinuxOptions")
        apparmor = (ctx.get("appArmorProfile") or {}).get("type")
        if apparmor not in (None, "RuntimeDefault", "Localhost"):
            found.append(f"{name}: appArmorProfile {apparmor}")
    for container in _containers(spec):
        name, ctx = container.get("name", "?"), container.get("securityContext") or {}
        if ctx.get("privileged"):
            found.append(f"{name}: privileged")
        added = set((ctx.get("capabilities") or {}).get("add") or ()) - BASELINE_CAPABILITIES
        if added:
            found.append(f"{name}: capabilities {sorted(added)} added")
        if any(port.get("hostPort") for port in container.get("ports") or ()):
            found.append(f"{name}: hostPort")
        if ctx.get("procMount", "Default") != "Default":
            found.append(f"{name}: procMount {ctx.get('procMount')}")
    return found


def restricted_violations(spec: Mapping[str, Any]) -> list[str]:
    """Baseline's rules plus restricted's own."""
    found = baseline_violations(spec)
    pod_ctx = spec.get("securityContext") or {}
    for volume in spec.get("volumes") or ():
        kinds = set(volume) - {"name"}
        if not kinds <= RESTRICTED_VOLUMES:
            found.append(f"volume {volume.get('name')}: {sorted(kinds - RESTRICTED_VOLUMES)}")
    pod_seccomp = (pod_ctx.get("seccompProfile") or {}).get("type")
    if pod_ctx.get("runAsUser") == 0:
        found.append("pod: runAsUser 0")
    for container in _containers(spec):
        name, ctx = container.get("name", "?"), container.get("securityContext") or {}
        if ctx.get("allowPrivilegeEscalation") is not False:
            found.append(f"{name}: allowPrivilegeEscalation is not false")
        if not ctx.get("runAsNonRoot", pod_ctx.get("runAsNonRoot")):
            found.append(f"{name}: runAsNonRoot is not true")
        if ctx.get("runAsUser") == 0:
            found.append(f"{name}: runAsUser 0")
        if (ctx.get("seccompProfile") or {}).get("type", pod_seccomp) not in ("RuntimeDefault", "Localhost"):
            found.append(f"{name}: seccompProfile is not RuntimeDefault or Localhost")
        capabilities = ctx.get("capabilities") or {}
        if "ALL" not in (capabilities.get("drop") or ()):
            found.append(f"{name}: capabilities do not drop ALL")
        if set(capabilities.get("add") or ()) - {"NET_BIND_SERVICE"}:
            found.append(f"{name}: capabilities other than NET_BIND_SERVICE added")
    return found


def violations(spec: Mapping[str, Any], level: str) -> list[str]:
    if level == "privileged":
        return []
    if level == "baseline":
        return baseline_violations(spec)
    if level == "restricted":
        return restricted_violations(spec)
    raise ValueError(f"unknown Pod Security Standard level {level!r} (one of {', '.join(LEVELS)})")


def level_of(spec: Mapping[str, Any]) -> str:
    """The strictest Pod Security Standard level the pod spec meets."""
    return next(level for level in LEVELS if not violations(spec, level))
