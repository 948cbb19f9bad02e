"""Multi-node launcher parts: flags, hostfile, SSH options and known_hosts, the group's mpirun command line,
the worker's sshd command line, and the leader's wait for its workers (real sockets, fake clocks)."""

from __future__ import annotations

import socket
import subprocess
from collections.abc import Iterator
from pathlib import Path

import pytest
from bloomz_api.options import ServeOptions, parse_options, to_argv
from bloomz_runtime import launch
from bloomz_runtime.mpijob import MpiJob, hostfile_text, render
from bloomz_runtime.multinode import (
    EXIT_WORKERS_UNREACHABLE,
    MultiNodeOptions,
    WorkersUnreachable,
    avoid_shared_memory_all_reduce_across_nodes,
    check_world_size,
    group_job,
    known_hosts_text,
    prepare_leader,
    probe_ssh_port,
    ranks_span_nodes,
    split_args,
    ssh_options,
    sshd_command,
    sshd_listen_address,
    wait_for_workers,
    worker_session_env,
)
from bloomz_runtime.topology import parse_lscpu

TWO_SOCKETS_HT = parse_lscpu(Path(__file__).with_name("topologies").joinpath("2x40-ht.lscpu").read_text())

HOSTS = "b-abc-0-0.b-hosts,b-abc-0-1.b-hosts"
LEADER_ARGV = [
    "--model", "/models/bloomz", "--device", "hpu", "--world-size", "16",
    "--role", "leader", "--hosts", HOSTS, "--slots-per-host", "8",
    "--ssh-port", "2222", "--ssh-dir", "/etc/bloomz/ssh", "--workers-timeout-s", "600",
    "--port", "50051",
]  # fmt: skip


def test_leader_flags_are_split_from_the_usual_ones() -> None:
    multi, rest = split_args(LEADER_ARGV)
    assert multi.role == "leader"
    assert multi.hosts == ("b-abc-0-0.b-hosts", "b-abc-0-1.b-hosts")
    assert multi.workers == ("b-abc-0-1.b-hosts",)
    assert (multi.slots_per_host, multi.ssh_port, multi.ssh_dir) == (8, 2222, "/etc/bloomz/ssh")
    assert multi.workers_timeout_s == 600
    opts = parse_options(rest, environ={})
    assert (opts.model, opts.device, opts.world_size, opts.port) == ("/models/bloomz", "hpu", 16, 50051)
    check_world_size(multi, opts.world_size)


def test_single_node_argv_passes_through_untouched() -> None:
    argv = ["--model", "m", "--device", "cpu", "--world-size", "2", "--no-kv-cache"]
    multi, rest = split_args(argv)
    assert multi == MultiNodeOptions() and multi.role is None
    assert rest == argv


def test_worker_needs_nothing_but_its_role() -> None:
    multi, rest = split_args(["--role", "worker", "--ssh-port", "2022"])
    assert (multi.role, multi.ssh_port, rest) == ("worker", 2022, [])


@pytest.mark.parametrize(
    "argv",
    [
        ["--role", "leader", "--hosts", "only-me", "--slots-per-host", "8"],
        ["--role", "leader", "--hosts", HOSTS],
    ],
)
def test_leader_without_workers_or_slots_is_refused(argv: list[str]) -> None:
    with pytest.raises(SystemExit):
        split_args(argv)


def test_world_size_must_be_hosts_times_slots() -> None:
    multi, _ = split_args(LEADER_ARGV)
    with pytest.raises(SystemExit, match=r"2 x 8 = 16"):
        check_world_size(multi, 12)


def test_hostfile_lists_every_pod_leader_first() -> None:
    assert hostfile_text(("a.h", "b.h", "c.h"), 8) == "a.h slots=8\nb.h slots=8\nc.h slots=8\n"


def test_known_hosts_trusts_the_groups_key_for_any_host_name() -> None:
    line = "ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIB6b bloomz-operator@ml/big\n"
    assert known_hosts_text(line) == "* ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIB6b\n"


def test_ssh_options_use_the_mounted_key_and_verify_hosts() -> None:
    args = ssh_options("/etc/bloomz/ssh", 2222, "/tmp/x/known_hosts")
    assert args[:4] == ["-i", "/etc/bloomz/ssh/id_ed25519", "-p", "2222"]
    options = {args[i + 1] for i, a in enumerate(args) if a == "-o"}
    assert {"BatchMode=yes", "StrictHostKeyChecking=yes", "UserKnownHostsFile=/tmp/x/known_hosts"} <= options


def single_node_job(opts: ServeOptions, env: dict[str, str], slots: int = 8) -> MpiJob:
    return launch.plan_job(
        opts, env, python="/usr/bin/python3", is_root=True, topology=TWO_SOCKETS_HT, ranks_per_node=slots
    )


def test_group_job_adds_hostfile_ssh_and_scale_out_env() -> None:
    opts = ServeOptions(model="/models/bloomz", device="hpu", world_size=16)
    env = {
        "PATH": "/usr/bin",
        "MASTER_ADDR": "b-abc-0-0.b-hosts",
        "MASTER_PORT": "29500",
        "HABANA_VISIBLE_DEVICES": "0,1,2,3,4,5,6,7",
        "HABANA_LOGS": "/var/log/habana_logs",
        "HCCL_SOCKET_IFNAME": "eth0",
        "FI_PROVIDER": "tcp",
        "UNRELATED": "x",
    }
    multi, _ = split_args(LEADER_ARGV)
    job = group_job(
        single_node_job(opts, env),
        multi,
        hostfile="/tmp/l/hostfile",
        ssh_args=["-i", "k", "-p", "2222"],
        environ=env,
    )
    assert job.hosts == ("localhost", "b-abc-0-1.b-hosts") and job.slots_per_host == 8
    assert job.forwarded_env == (
        "FI_PROVIDER",
        "HABANA_LOGS",
        "HCCL_SOCKET_IFNAME",
        "MASTER_ADDR",
        "MASTER_PORT",
        "PATH",
    )  # the node-local HABANA_VISIBLE_DEVICES stays with each node
    cmd = render(job)
    assert cmd[:5] == ["mpirun", "-np", "16", "--hostfile", "/tmp/l/hostfile"]
    assert cmd[cmd.index("plm_rsh_args") + 1] == "-i k -p 2222"
    assert cmd[cmd.index("plm_rsh_no_tree_spawn") + 1] == "1"
    assert cmd[cmd.index("orte_keep_fqdn_hostnames") + 1] == "1"  # <pod>.<headless service>, not <pod>
    # Each node's 8 ranks share that node's 80 physical cores.
    assert "--allow-run-as-root" in cmd and cmd[cmd.index("--map-by") + 1] == "socket:PE=10"
    serve = cmd.index("/usr/bin/python3")
    assert cmd[serve:] == ["/usr/bin/python3", "-u", "-m", launch.SERVE_MODULE, *to_argv(opts)]


def test_worker_sessions_inherit_paths_and_node_local_devices() -> None:
    env = {
        "PATH": "/opt/habanalabs/bin:/usr/bin",
        "LD_LIBRARY_PATH": "/usr/lib/habanalabs",
        "HABANA_VISIBLE_DEVICES": "all",
        "PT_HPU_LAZY_MODE": "1",
        "KUBERNETES_SERVICE_HOST": "10.0.0.1",
        "QUOTED": 'a"b',
        "HCCL_WEIRD": 'x"y',
    }
    assert worker_session_env(env) == {
        "HABANA_VISIBLE_DEVICES": "all",
        "LD_LIBRARY_PATH": "/usr/lib/habanalabs",
        "PATH": "/opt/habanalabs/bin:/usr/bin",
        "PT_HPU_LAZY_MODE": "1",
    }


def test_sshd_runs_in_the_foreground_with_the_mounted_keys_only() -> None:
    cmd = sshd_command("/etc/bloomz/ssh", 2222, {"PATH": "/usr/bin", "HABANA_VISIBLE_DEVICES": "all"})
    assert cmd[:6] == ["/usr/sbin/sshd", "-D", "-e", "-p", "2222", "-h"]
    assert cmd[6] == "/etc/bloomz/ssh/id_ed25519"
    options = [cmd[i + 1] for i, a in enumerate(cmd) if a == "-o"]
    assert "AuthorizedKeysFile=/etc/bloomz/ssh/authorized_keys" in options
    assert "PasswordAuthentication=no" in options and "PermitRootLogin=prohibit-password" in options
    for hardening in (
        "AllowTcpForwarding=no",
        "PermitTunnel=no",
        "AllowAgentForwarding=no",
        "X11Forwarding=no",
    ):
        assert hardening in options
    assert options[-1] == 'SetEnv PATH="/usr/bin" HABANA_VISIBLE_DEVICES="all"'
    assert not any(o.startswith("SetEnv") for o in sshd_command("/k", 22, {}))


# --- the leader's wait for its workers -------------------------------------------------------------------


class FakeClock:
    def __init__(self) -> None:
        self.now = 0.0

    def __call__(self) -> float:
        return self.now

    def sleep(self, seconds: float) -> None:
        self.now += seconds


def test_wait_returns_once_every_worker_answers() -> None:
    clock = FakeClock()
    answers = {"w1": 3, "w2": 1}  # failures before each worker answers
    tried: list[str] = []

    def probe(host: str, port: int, timeout: float) -> None:
        tried.append(host)
        if answers[host] > 0:
            answers[host] -= 1
            raise OSError("does not resolve")

    wait_for_workers(["w1", "w2"], 2222, 60, probe=probe, clock=clock, sleep=clock.sleep, log=lambda _: None)
    assert clock.now == 3.0
    assert tried.count("w2") == 2 and tried.count("w1") == 4  # an answering worker is not probed again


def test_wait_times_out_naming_each_missing_worker_and_why() -> None:
    clock = FakeClock()

    def probe(host: str, port: int, timeout: float) -> None:
        if host == "w2":
            raise OSError("refuses connections on port 2222")

    with pytest.raises(WorkersUnreachable) as caught:
        wait_for_workers(
            ["w1", "w2"], 2222, 30, probe=probe, clock=clock, sleep=clock.sleep, log=lambda _: None
        )
    assert "1 of 2 worker(s) not reachable on SSH port 2222 after 30 s" in str(caught.value)
    assert "w2: refuses connections on port 2222" in str(caught.value) and "w1" not in str(caught.value)


@pytest.fixture
def listener() -> Iterator[int]:
    with socket.socket() as server:
        server.bind(("127.0.0.1", 0))
        server.listen()
        yield int(server.getsockname()[1])


def closed_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def test_probe_over_real_sockets(listener: int) -> None:
    probe_ssh_port("127.0.0.1", listener, 5)
    with pytest.raises(OSError, match="refuses connections"):
        probe_ssh_port("127.0.0.1", closed_port(), 5)
    with pytest.raises(OSError, match="does not resolve"):
        probe_ssh_port("no-such-pod.bloomz-hosts.invalid", 2222, 5)


@pytest.fixture
def ssh_dir(tmp_path: Path) -> Path:
    keys = tmp_path / "ssh"
    keys.mkdir()
    subprocess.run(
        ["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-C", "t", "-f", str(keys / "id_ed25519")], check=True
    )
    return keys


def test_prepare_leader_writes_the_hostfile_and_waits_for_reachable_workers(
    tmp_path: Path, ssh_dir: Path, listener: int
) -> None:
    multi = MultiNodeOptions(
        role="leader",
        hosts=("localhost", "127.0.0.1"),  # the leader's own name must resolve (workers check it)
        slots_per_host=1,
        ssh_port=listener,
        ssh_dir=str(ssh_dir),
    )
    opts = ServeOptions(model="m", device="cpu", world_size=2)
    env = {"MASTER_ADDR": "127.0.0.1", "PATH": "/usr/bin"}
    cmd = render(prepare_leader(multi, single_node_job(opts, env, 1), env, tmp_path, pod_environ={}))
    assert env["MASTER_ADDR"] == "localhost"  # ranks on other nodes reach rank 0 there
    assert (tmp_path / "hostfile").read_text() == "localhost slots=1\n127.0.0.1 slots=1\n"
    public = (ssh_dir / "id_ed25519.pub").read_text().split()
    assert (tmp_path / "known_hosts").read_text() == f"* {public[0]} {public[1]}\n"
    assert cmd[cmd.index("--hostfile") + 1] == str(tmp_path / "hostfile")
    rsh_args = cmd[cmd.index("plm_rsh_args") + 1]
    assert f"-i {ssh_dir}/id_ed25519 -p {listener}" in rsh_args
    assert f"UserKnownHostsFile={tmp_path / 'known_hosts'}" in rsh_args
    # A MASTER_ADDR the pod sets itself wins.
    env = {"MASTER_ADDR": "10.0.0.7"}
    prepare_leader(multi, single_node_job(opts, env, 1), env, tmp_path, pod_environ=env)
    assert env["MASTER_ADDR"] == "10.0.0.7"


def test_the_leaders_ssh_leaves_from_the_bind_host_when_pods_share_a_machine(
    tmp_path: Path, ssh_dir: Path, listener: int
) -> None:
    multi = MultiNodeOptions(
        role="leader",
        hosts=("localhost", "127.0.0.1"),
        slots_per_host=1,
        ssh_port=listener,
        ssh_dir=str(ssh_dir),
    )
    opts = ServeOptions(model="m", device="cpu", world_size=2)
    env = {"BLOOMZ_BIND_HOST": "127.0.0.9"}
    cmd = render(prepare_leader(multi, single_node_job(opts, {}, 1), {}, tmp_path, pod_environ=env))
    assert cmd[cmd.index("plm_rsh_args") + 1].startswith("-o BindAddress=127.0.0.9 -i ")
    assert "BindAddress" not in " ".join(ssh_options("/k", 2222, "/kh"))  # a pod has one address


def test_prepare_leader_exits_with_a_clear_error_when_workers_never_come(
    tmp_path: Path, ssh_dir: Path
) -> None:
    multi = MultiNodeOptions(
        role="leader",
        hosts=("localhost", "127.0.0.1"),
        slots_per_host=1,
        ssh_port=closed_port(),
        ssh_dir=str(ssh_dir),
        workers_timeout_s=0.5,
    )
    opts = ServeOptions(model="m", device="cpu", world_size=2)
    with pytest.raises(SystemExit) as caught:
        prepare_leader(multi, single_node_job(opts, {}, 1), {}, tmp_path, pod_environ={})
    assert caught.value.code == EXIT_WORKERS_UNREACHABLE


def test_prepare_leader_waits_until_its_own_name_resolves(
    tmp_path: Path, ssh_dir: Path, listener: int, capsys: pytest.CaptureFixture[str]
) -> None:
    # Workers accept the key only from the leader's DNS name (reverse lookup): no record yet, no mpirun.
    multi = MultiNodeOptions(
        role="leader",
        hosts=("leader.invalid", "127.0.0.1"),
        slots_per_host=1,
        ssh_port=listener,
        ssh_dir=str(ssh_dir),
        workers_timeout_s=0.3,
    )
    opts = ServeOptions(model="m", device="cpu", world_size=2)
    with pytest.raises(SystemExit) as caught:
        prepare_leader(multi, single_node_job(opts, {}, 1), {}, tmp_path, pod_environ={})
    assert caught.value.code == EXIT_WORKERS_UNREACHABLE
    assert "leader.invalid: does not resolve" in capsys.readouterr().err


def test_ranks_span_nodes_from_open_mpis_per_node_count() -> None:
    assert ranks_span_nodes({"WORLD_SIZE": "16", "LOCAL_SIZE": "8"})
    assert not ranks_span_nodes({"WORLD_SIZE": "8", "LOCAL_SIZE": "8"})
    assert not ranks_span_nodes({"WORLD_SIZE": "1"})
    # One machine: DeepSpeed's shared-memory all-reduce stays (nothing to change, deepspeed not touched).
    assert avoid_shared_memory_all_reduce_across_nodes({"WORLD_SIZE": "2", "LOCAL_SIZE": "2"}) is False


def test_worker_sessions_keep_preloaded_libraries_and_nss_wrapper_settings() -> None:
    env = {
        "LD_PRELOAD": "/usr/lib/x86_64-linux-gnu/libtcmalloc.so.4",
        "NSS_WRAPPER_HOSTS": "/var/run/hosts",
        "NSS_WRAPPER_PASSWD": "/tmp/passwd",
        "HOME": "/root",
    }
    assert worker_session_env(env) == {
        "LD_PRELOAD": "/usr/lib/x86_64-linux-gnu/libtcmalloc.so.4",
        "NSS_WRAPPER_HOSTS": "/var/run/hosts",
        "NSS_WRAPPER_PASSWD": "/tmp/passwd",
    }


def test_sshd_listens_on_the_bind_host_only_when_one_is_given() -> None:
    cmd = sshd_command("/k", 2222, {"PATH": "/usr/bin"}, listen_address="127.0.0.7")
    options = [cmd[i + 1] for i, a in enumerate(cmd) if a == "-o"]
    assert "ListenAddress=127.0.0.7" in options
    assert options[-1].startswith("SetEnv ")  # the session env stays last
    assert not any(o.startswith("ListenAddress") for o in sshd_command("/k", 2222, {}))


def test_sshd_listens_on_the_pod_address() -> None:
    assert sshd_listen_address({"POD_IP": "10.1.2.3"}) == "10.1.2.3"
    assert sshd_listen_address({"POD_IP": "10.1.2.3", "BLOOMZ_BIND_HOST": "127.0.0.7"}) == "127.0.0.7"
    assert sshd_listen_address({}) == ""


@pytest.mark.skipif(
    not Path("/usr/sbin/sshd").exists(), reason="needs openssh-server (the runtime images have it)"
)
def test_the_real_sshd_accepts_the_hardened_configuration(tmp_path: Path) -> None:
    key = tmp_path / "id_ed25519"
    subprocess.run(["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-f", str(key)], check=True)
    (tmp_path / "authorized_keys").write_text((tmp_path / "id_ed25519.pub").read_text())
    cmd = sshd_command(str(tmp_path), 2222, {"PATH": "/usr/bin"}, listen_address="127.0.0.1")
    # -t: check the configuration and keys, then exit (instead of -D -e: serve in the foreground).
    check = [cmd[0], "-t", *[arg for arg in cmd[1:] if arg not in ("-D", "-e")]]
    result = subprocess.run(check, capture_output=True, text=True, timeout=30)
    assert result.returncode == 0, result.stderr
