"""The sandbox's stand-in for cluster DNS: pod names of headless Services resolve to pod addresses.

On a cluster, a pod with `hostname: h` and `subdomain: s` in namespace `ns` is
`h.s.ns.svc.cluster.local` (the resolv.conf search path makes `h.s` work too). Locally, every process of
such a pod gets nss_wrapper (LD_PRELOAD=libnss_wrapper.so, NSS_WRAPPER_HOSTS=<file>): glibc's
getaddrinfo - hence Python, mpirun and ssh - reads that hosts file first and falls back to the system's
resolver for every other name. The runner rewrites the file atomically as pod addresses come and go;
nss_wrapper re-reads it when it changes.
"""

from __future__ import annotations

import os
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

CLUSTER_DOMAIN = "cluster.local"
NSS_WRAPPER_LIBRARY = "libnss_wrapper.so"
# Where Debian/Ubuntu (libnss-wrapper) and Fedora (nss_wrapper) install it.
NSS_WRAPPER_DIRECTORIES = (
    "/usr/lib/x86_64-linux-gnu",
    "/usr/lib/aarch64-linux-gnu",
    "/usr/lib64",
    "/usr/lib",
    "/usr/local/lib",
)
MISSING_NSS_WRAPPER = (
    "sandbox: this pod's DNS name (spec.hostname + spec.subdomain) needs nss_wrapper, which is not "
    "installed (apt-get install libnss-wrapper, or scripts/install-tools.sh)"
)


@dataclass(frozen=True)
class PodAddress:
    ip: str
    hostname: str
    subdomain: str
    namespace: str


def pod_address(pod: Mapping[str, Any], ip: str) -> PodAddress | None:
    """The pod's DNS identity, or None when it has none (no subdomain: no headless-Service record)."""
    spec = pod.get("spec") or {}
    metadata = pod.get("metadata") or {}
    subdomain = spec.get("subdomain")
    if not ip or not subdomain:
        return None
    return PodAddress(ip, pod_hostname(pod), subdomain, metadata.get("namespace") or "default")


def dns_names(address: PodAddress, cluster_domain: str = CLUSTER_DOMAIN) -> list[str]:
    """Every name a pod in the same namespace may use, short forms first."""
    short = f"{address.hostname}.{address.subdomain}"
    return [
        short,
        f"{short}.{address.namespace}",
        f"{short}.{address.namespace}.svc",
        f"{short}.{address.namespace}.svc.{cluster_domain}",
    ]


def hosts_text(addresses: Iterable[PodAddress], cluster_domain: str = CLUSTER_DOMAIN) -> str:
    """An /etc/hosts-format file in a stable order (rewritten only when it changes). Each pod gets its IPv4
    line and the same names as an IPv4-mapped IPv6 address: glibc answers an AF_INET6 + AI_V4MAPPED
    query (torch's TCPStore client asks that first, and retries it until its timeout) with one, nss_wrapper
    only with what the file lists. No comment line: nss_wrapper refuses the whole file if it has one."""
    lines = []
    for address in sorted(addresses, key=lambda a: (a.namespace, a.subdomain, a.hostname, a.ip)):
        names = " ".join(dns_names(address, cluster_domain))
        lines += [f"{address.ip} {names}", f"::ffff:{address.ip} {names}"]
    return "".join(f"{line}\n" for line in lines)


def find_nss_wrapper(directories: Sequence[str] = NSS_WRAPPER_DIRECTORIES) -> str | None:
    for directory in directories:
        candidate = Path(directory) / NSS_WRAPPER_LIBRARY
        if candidate.is_file():
            return str(candidate)
    return None


def pod_hostname(pod: Mapping[str, Any]) -> str:
    """What gethostname() returns in the pod (the kubelet sets spec.hostname, else the pod name)."""
    return str((pod.get("spec") or {}).get("hostname") or (pod.get("metadata") or {}).get("name", ""))


def process_env(
    library: str, hosts_file: Path, environ: Mapping[str, str], hostname: str = ""
) -> dict[str, str]:
    """What every local process gets so that pod names resolve (an existing LD_PRELOAD is kept) and,
    given one, gethostname() answers the pod's host name (Open MPI tells nodes apart by it)."""
    preload = [p for p in environ.get("LD_PRELOAD", "").split() if p and p != library]
    env = {"LD_PRELOAD": " ".join([library, *preload]), "NSS_WRAPPER_HOSTS": str(hosts_file)}
    if hostname:
        env["NSS_WRAPPER_HOSTNAME"] = hostname
    return env


def write_atomically(path: Path, text: str) -> bool:
    """Replace the file in one step (readers see the old or the new one); False when unchanged."""
    if path.is_file() and path.read_text() == text:
        return False
    path.parent.mkdir(parents=True, exist_ok=True)
    partial = path.with_name(f".{path.name}.{os.getpid()}.partial")
    partial.write_text(text)
    os.replace(partial, path)
    return True
