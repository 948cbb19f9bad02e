"""The workers' SSH key is accepted only from the group template's leaders: the authorized_keys line the
operator renders (`from=` with the leaders' DNS names) and the worker's sshd command line (`UseDNS yes`),
checked with a real sshd and real ssh clients bound to different loopback addresses. nss_wrapper stands in
for cluster DNS (reverse and forward lookups of the pods' names), as in the sandbox."""

from __future__ import annotations

import base64
import getpass
import os
import socket
import subprocess
from collections.abc import Iterator
from pathlib import Path

import pytest
from bloomz_operator.builders import Owner
from bloomz_operator.groups import headless_service_name, member_name, ssh_client_patterns
from bloomz_operator.sshkeys import (
    AUTHORIZED_KEYS,
    PRIVATE_KEY,
    PUBLIC_KEY,
    authorized_keys_line,
    build_ssh_secret,
    generate_key_pair,
)
from bloomz_runtime.multinode import sshd_command
from helpers import wait_for

OWNER = Owner(name="big", namespace="team-a", uid="5f0c1d2e-0000-4000-8000-000000000001")
HASH = "abcdef0123"
SSHD = Path("/usr/sbin/sshd")
NSS_WRAPPER = next(
    (
        p
        for p in map(Path, ("/usr/lib/x86_64-linux-gnu", "/usr/lib64", "/usr/lib"))
        if (p / "libnss_wrapper.so").is_file()
    ),
    None,
)
WORKER_ADDRESS = "127.0.0.2"


def fqdn(pod: str) -> str:
    return f"{pod}.{headless_service_name(OWNER.name)}.{OWNER.namespace}.svc.cluster.local"


def short(pod: str) -> str:
    return f"{pod}.{headless_service_name(OWNER.name)}"


def test_the_authorized_keys_line_names_only_the_templates_leaders() -> None:
    patterns = ssh_client_patterns(OWNER, HASH)
    leader = member_name(OWNER, HASH, 0, 0)
    assert patterns == [
        short(leader).replace("-0-0.", "-*-0."),
        f"{short(leader).replace('-0-0.', '-*-0.')}.team-a.svc.*",
    ]
    line = authorized_keys_line("ssh-ed25519 AAAAC3Nza t@x\n", patterns)
    assert line == f'from="{",".join(patterns)}" ssh-ed25519 AAAAC3Nza t@x\n'
    for bad in ([], ['a",command="sh'], ["a b"], ["a,b"]):
        with pytest.raises(ValueError):
            authorized_keys_line("ssh-ed25519 AAAA", bad)


def test_the_secret_carries_the_restricted_line_and_the_bare_public_key() -> None:
    keys = generate_key_pair("t")
    data = build_ssh_secret(OWNER, keys, HASH, lambda h: ssh_client_patterns(OWNER, h))["data"]
    authorized = base64.b64decode(data[f"{HASH}.{AUTHORIZED_KEYS}"]).decode()
    assert authorized.startswith(f'from="{short(member_name(OWNER, HASH, 0, 0)).replace("-0-0.", "-*-0.")},')
    assert authorized.endswith(keys.public_openssh + "\n")
    # The leader's known_hosts reads the public key file: it stays a plain key line.
    assert base64.b64decode(data[f"{HASH}.{PUBLIC_KEY}"]).decode() == keys.public_openssh + "\n"


def test_sshd_looks_client_names_up() -> None:
    cmd = sshd_command("/k", 2222, {})
    assert cmd[cmd.index("UseDNS=yes") - 1] == "-o"


@pytest.fixture
def worker(tmp_path: Path) -> Iterator[tuple[int, Path]]:
    """A worker's real sshd on WORKER_ADDRESS with the Secret's files; yields (port, private key)."""
    if not SSHD.exists() or NSS_WRAPPER is None:
        pytest.skip("needs openssh-server and nss_wrapper (scripts/install-tools.sh)")
    keys = generate_key_pair("t")
    secret = build_ssh_secret(OWNER, keys, HASH, lambda h: ssh_client_patterns(OWNER, h))
    ssh_dir = tmp_path / "ssh"
    ssh_dir.mkdir()
    for name in (PRIVATE_KEY, PUBLIC_KEY, AUTHORIZED_KEYS):
        (ssh_dir / name).write_bytes(base64.b64decode(secret["data"][f"{HASH}.{name}"]))
        (ssh_dir / name).chmod(0o400)
    group1 = [member_name(OWNER, HASH, 1, m) for m in range(2)]
    other = member_name(OWNER, "0123456789", 0, 0)  # a leader of another template
    hosts = tmp_path / "hosts"
    hosts.write_text(
        f"127.0.0.3 {fqdn(group1[0])} {short(group1[0])}\n"  # group 1's leader, as cluster DNS names it
        f"127.0.0.4 {fqdn(group1[1])} {short(group1[1])}\n"  # a worker of the same group
        f"127.0.0.5 {short(member_name(OWNER, HASH, 2, 0))}\n"  # group 2's leader, short name (the sandbox)
        f"127.0.0.6 {fqdn(other)}\n"
        f"127.0.0.7 {fqdn(group1[0]).replace('.svc.', '.pod.')}\n"  # not the headless Service's record
    )
    with socket.socket() as probe:
        probe.bind((WORKER_ADDRESS, 0))
        port = probe.getsockname()[1]
    env = {
        **os.environ,
        "LD_PRELOAD": str(NSS_WRAPPER / "libnss_wrapper.so"),
        "NSS_WRAPPER_HOSTS": str(hosts),
    }
    cmd = sshd_command(str(ssh_dir), port, {"PATH": "/usr/bin:/bin"}, listen_address=WORKER_ADDRESS)
    cmd = [cmd[0], "-o", f"PidFile={tmp_path}/sshd.pid", *cmd[1:]]  # sshd: the first value given wins
    sshd = subprocess.Popen(cmd, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    try:
        wait_for("the worker's sshd to listen", lambda: _accepts(port), timeout=30.0, interval=0.1)
        yield port, ssh_dir / PRIVATE_KEY
    finally:
        sshd.terminate()
        try:
            sshd.communicate(timeout=10)
        except subprocess.TimeoutExpired:
            sshd.kill()
            sshd.communicate()


def _accepts(port: int) -> bool:
    try:
        socket.create_connection((WORKER_ADDRESS, port), timeout=1).close()
    except OSError:
        return False
    return True


def ssh_from(source: str, port: int, key: Path) -> subprocess.CompletedProcess[str]:
    cmd = [
        "ssh", "-i", str(key), "-p", str(port), "-b", source,
        "-o", "IdentitiesOnly=yes", "-o", "BatchMode=yes",
        "-o", "StrictHostKeyChecking=no", "-o", "UserKnownHostsFile=/dev/null", "-o", "LogLevel=ERROR",
        f"{getpass.getuser()}@{WORKER_ADDRESS}", "echo", "in",
    ]  # fmt: skip
    return subprocess.run(cmd, capture_output=True, text=True, timeout=60)


@pytest.mark.slow
def test_the_key_works_from_the_templates_leaders_only(worker: tuple[int, Path]) -> None:
    port, key = worker
    for leader in ("127.0.0.3", "127.0.0.5"):
        result = ssh_from(leader, port, key)
        assert (result.returncode, result.stdout) == (0, "in\n"), (leader, result.stderr)
    # The same key from a worker of the group, another template's leader, a name outside the headless
    # Service, and an address with no name at all: refused.
    for outsider in ("127.0.0.4", "127.0.0.6", "127.0.0.7", "127.0.0.8"):
        result = ssh_from(outsider, port, key)
        assert result.returncode == 255 and "in\n" not in result.stdout, (outsider, result.stderr)
        assert "Permission denied" in result.stderr, (outsider, result.stderr)
