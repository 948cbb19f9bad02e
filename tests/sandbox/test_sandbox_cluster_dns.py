"""The sandbox's cluster DNS stand-in: pod DNS names in a hosts file that nss_wrapper serves."""

from __future__ import annotations

import os
import socket
import subprocess
import sys
from pathlib import Path

from bloomz_sandbox.node.cluster_dns import (
    PodAddress,
    dns_names,
    find_nss_wrapper,
    hosts_text,
    pod_address,
    pod_hostname,
    process_env,
    write_atomically,
)

LEADER = {
    "metadata": {"name": "big-abc-0-0", "namespace": "ml"},
    "spec": {"hostname": "big-abc-0-0", "subdomain": "big-hosts"},
}


def test_only_pods_with_a_subdomain_and_an_address_get_names() -> None:
    assert pod_address(LEADER, "127.0.0.5") == PodAddress("127.0.0.5", "big-abc-0-0", "big-hosts", "ml")
    assert pod_address(LEADER, "") is None
    assert pod_address({"metadata": {"name": "p"}, "spec": {}}, "127.0.0.5") is None
    no_hostname = {"metadata": {"name": "p"}, "spec": {"subdomain": "s"}}
    assert pod_address(no_hostname, "127.0.0.9") == PodAddress("127.0.0.9", "p", "s", "default")
    assert pod_hostname(no_hostname) == "p"


def test_every_form_of_the_name_a_cluster_resolves() -> None:
    assert dns_names(PodAddress("127.0.0.5", "h", "s", "ml")) == [
        "h.s",
        "h.s.ml",
        "h.s.ml.svc",
        "h.s.ml.svc.cluster.local",
    ]


def test_the_hosts_file_is_stable_and_has_ipv4_mapped_lines() -> None:
    a = PodAddress("127.0.0.6", "b", "s", "ml")
    b = PodAddress("127.0.0.5", "a", "s", "ml")
    text = hosts_text([a, b])
    assert text == hosts_text([b, a])
    assert text.splitlines() == [
        "127.0.0.5 a.s a.s.ml a.s.ml.svc a.s.ml.svc.cluster.local",
        "::ffff:127.0.0.5 a.s a.s.ml a.s.ml.svc a.s.ml.svc.cluster.local",
        "127.0.0.6 b.s b.s.ml b.s.ml.svc b.s.ml.svc.cluster.local",
        "::ffff:127.0.0.6 b.s b.s.ml b.s.ml.svc b.s.ml.svc.cluster.local",
    ]
    assert hosts_text([]) == ""
    assert "#" not in text  # nss_wrapper rejects a file with comments


def test_process_env_preloads_nss_wrapper_and_keeps_other_preloads(tmp_path: Path) -> None:
    env = process_env("/lib/libnss_wrapper.so", tmp_path / "hosts", {"LD_PRELOAD": "libtcmalloc.so"}, "h")
    assert env == {
        "LD_PRELOAD": "/lib/libnss_wrapper.so libtcmalloc.so",
        "NSS_WRAPPER_HOSTS": str(tmp_path / "hosts"),
        "NSS_WRAPPER_HOSTNAME": "h",
    }
    again = process_env("/lib/libnss_wrapper.so", tmp_path / "hosts", env)
    assert again["LD_PRELOAD"] == env["LD_PRELOAD"] and "NSS_WRAPPER_HOSTNAME" not in again


def test_atomic_rewrites_report_whether_anything_changed(tmp_path: Path) -> None:
    path = tmp_path / "hosts"
    assert write_atomically(path, "a\n") is True
    assert write_atomically(path, "a\n") is False
    assert write_atomically(path, "b\n") is True and path.read_text() == "b\n"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["hosts"]


RESOLVE = """
import socket, sys
for name in sys.argv[1:]:
    v4 = socket.getaddrinfo(name, 22, socket.AF_INET, socket.SOCK_STREAM)[0][4][0]
    v6 = socket.getaddrinfo(name, 22, socket.AF_INET6, socket.SOCK_STREAM, 0, socket.AI_V4MAPPED)[0][4][0]
    print(name, v4, v6)
print("hostname", socket.gethostname())
"""


def test_names_resolve_through_nss_wrapper_and_follow_rewrites(tmp_path: Path) -> None:
    """The real thing: a process with the env the runner injects resolves the pod names (libnss-wrapper,
    installed by scripts/install-tools.sh, is required)."""
    library = find_nss_wrapper()
    assert library is not None, "libnss-wrapper is not installed: run scripts/install-tools.sh"
    hosts = tmp_path / "hosts"
    write_atomically(hosts, hosts_text([PodAddress("127.0.0.5", "big-abc-0-0", "big-hosts", "ml")]))
    env = {**os.environ, **process_env(library, hosts, os.environ, "big-abc-0-0")}
    names = ["big-abc-0-0.big-hosts", "big-abc-0-0.big-hosts.ml.svc.cluster.local", "localhost"]
    out = subprocess.run(
        [sys.executable, "-c", RESOLVE, *names],
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
        check=True,
    ).stdout.splitlines()
    assert out[0] == "big-abc-0-0.big-hosts 127.0.0.5 ::ffff:127.0.0.5"
    assert out[1] == "big-abc-0-0.big-hosts.ml.svc.cluster.local 127.0.0.5 ::ffff:127.0.0.5"
    assert out[2].startswith("localhost 127.0.0.1")  # other names: the system's resolver
    assert out[3] == "hostname big-abc-0-0"  # gethostname() answers the pod's host name
    write_atomically(hosts, hosts_text([PodAddress("127.0.0.7", "big-abc-0-0", "big-hosts", "ml")]))
    moved = subprocess.run(
        [sys.executable, "-c", RESOLVE, names[0]], env=env, capture_output=True, text=True, timeout=60
    ).stdout.splitlines()
    assert moved[0] == "big-abc-0-0.big-hosts 127.0.0.7 ::ffff:127.0.0.7"
    assert socket.gethostname() != "big-abc-0-0"  # this process is untouched
