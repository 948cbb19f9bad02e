"""Multi-node replicas, runtime side: one replica's ranks spread over a group of pods (one per node).

    leader:  python3 -m bloomz_runtime.launch --role leader --hosts H0,H1,... --slots-per-host N <usual flags>
    worker:  python3 -m bloomz_runtime.launch --role worker [--ssh-port 2222] [--ssh-dir /etc/bloomz/ssh]

A worker only runs sshd (in the foreground, with the key pair the operator mounted) until the leader's
mpirun starts its ranks over SSH. The leader waits until every worker resolves and accepts TCP on the SSH
port, writes a hostfile (`<host> slots=<n>`, itself first as `localhost` so rank 0 - the gRPC server - is
local), and runs the usual mpirun command with the hostfile, SSH options for Open MPI's rsh launcher and
MASTER_ADDR = its own address, so ranks on the other nodes reach rank 0's rendezvous.

The pure parts (argument split, known_hosts, the group's job, the sshd command line, the env a worker's
SSH sessions get) are unit-tested; `wait_for_workers`, `prepare_leader` and `run_worker` are the edges.
The mpirun command line itself is rendered from the job in one place (mpijob.render).
"""

from __future__ import annotations

import argparse
import contextlib
import os
import socket
import sys
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, replace
from pathlib import Path

# BLOOMZ_BIND_HOST: the address the runtime's servers bind to (unset in a real pod: every address); a
# worker's sshd listens there too.
from bloomz_api.options import BIND_HOST_ENV

from bloomz_runtime.mpijob import MpiJob, hostfile_text

ROLE_LEADER = "leader"
ROLE_WORKER = "worker"
POD_IP_ENV = "POD_IP"
DEFAULT_SSH_PORT = 2222
DEFAULT_SSH_DIR = "/etc/bloomz/ssh"
DEFAULT_WORKERS_TIMEOUT_S = 600.0
PRIVATE_KEY = "id_ed25519"
PUBLIC_KEY = "id_ed25519.pub"
AUTHORIZED_KEYS = "authorized_keys"
SSHD = "/usr/sbin/sshd"
LOCALHOST = "localhost"
# Where Kubernetes reads a container's termination message (shown in the pod's and the resource's status).
TERMINATION_LOG = "/dev/termination-log"
# The leader's exit code when the workers never became reachable (EX_TEMPFAIL: the pod restarts and retries).
EXIT_WORKERS_UNREACHABLE = 75
# Device assignments are per node (the device plugin sets them in each pod): the leader must not impose its
# own on the other nodes' ranks, which get their pod's values through their SSH session instead.
NODE_LOCAL_ENV = (
    "HABANA_VISIBLE_DEVICES",
    "HABANA_VISIBLE_MODULES",
    "CUDA_VISIBLE_DEVICES",
    "NVIDIA_VISIBLE_DEVICES",
)
# Multi-node communication settings every rank needs (Intel's HCCL scale-out, libfabric, gloo/NCCL sockets).
SCALE_OUT_ENV_PREFIXES = ("HCCL_", "FI_", "RDMAV_", "MLX5_", "GLOO_")
# What a worker's SSH sessions inherit from the worker container (sshd gives sessions a clean environment):
# the image's paths, so that orted and python are found, and the node-local device settings.
WORKER_SESSION_ENV_PREFIXES = (
    "HABANA_",
    "PT_HPU_",
    "HCCL_",
    "NVIDIA_",
    "CUDA_",
    "FI_",
    "RDMAV_",
    "GC_KERNEL_PATH",
    # nss_wrapper: user (arbitrary-UID images, as on OpenShift) and host entries outside /etc.
    "NSS_WRAPPER_",
)
# LD_PRELOAD: Gaudi images preload tcmalloc (and nss_wrapper users preload it) for every process, ranks too.
WORKER_SESSION_ENV_NAMES = (
    "PATH",
    "LD_LIBRARY_PATH",
    "LD_PRELOAD",
    "PYTHONPATH",
    "VIRTUAL_ENV",
    "OPAL_PREFIX",
)


class WorkersUnreachable(RuntimeError):
    """Some workers did not resolve or accept connections on the SSH port in time."""


@dataclass(frozen=True)
class MultiNodeOptions:
    role: str | None = None  # None: a single-node replica (the launcher's usual path)
    hosts: tuple[str, ...] = ()
    slots_per_host: int = 0
    ssh_port: int = DEFAULT_SSH_PORT
    ssh_dir: str = DEFAULT_SSH_DIR
    workers_timeout_s: float = DEFAULT_WORKERS_TIMEOUT_S

    @property
    def workers(self) -> tuple[str, ...]:
        return self.hosts[1:]


def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(add_help=False, allow_abbrev=False)
    p.add_argument("--role", choices=(ROLE_LEADER, ROLE_WORKER), default=None)
    p.add_argument("--hosts", default="", help="the group's pods, leader first, comma-separated")
    p.add_argument("--slots-per-host", type=int, default=0, help="ranks per pod (cardsPerNode)")
    p.add_argument("--ssh-port", type=int, default=DEFAULT_SSH_PORT)
    p.add_argument("--ssh-dir", default=DEFAULT_SSH_DIR, help="the mounted key pair")
    p.add_argument("--workers-timeout-s", type=float, default=DEFAULT_WORKERS_TIMEOUT_S)
    return p


def split_args(argv: Sequence[str]) -> tuple[MultiNodeOptions, list[str]]:
    """Take the multi-node flags out of the launcher's argv; the rest goes to the usual option parser."""
    ns, rest = _parser().parse_known_args(list(argv))
    hosts = tuple(h.strip() for h in ns.hosts.split(",") if h.strip())
    opts = MultiNodeOptions(
        role=ns.role,
        hosts=hosts,
        slots_per_host=ns.slots_per_host,
        ssh_port=ns.ssh_port,
        ssh_dir=ns.ssh_dir,
        workers_timeout_s=ns.workers_timeout_s,
    )
    if opts.role == ROLE_LEADER:
        if len(hosts) < 2:
            raise SystemExit("--role leader needs --hosts with the leader and at least one worker")
        if opts.slots_per_host < 1:
            raise SystemExit("--role leader needs --slots-per-host >= 1")
    return opts, rest


def check_world_size(opts: MultiNodeOptions, world_size: int) -> None:
    if len(opts.hosts) * opts.slots_per_host != world_size:
        raise SystemExit(
            f"--world-size {world_size} must equal hosts x slots per host "
            f"({len(opts.hosts)} x {opts.slots_per_host} = {len(opts.hosts) * opts.slots_per_host})"
        )


def known_hosts_text(public_key_line: str) -> str:
    """Every worker's host key is the group's own public key (the operator's Secret): trust it for any host
    name, and nothing else, so the leader still verifies whom it talks to."""
    key_type, key = public_key_line.split()[:2]
    return f"* {key_type} {key}\n"


def ssh_options(ssh_dir: str, port: int, known_hosts: str, bind_address: str = "") -> list[str]:
    """The options of every SSH hop mpirun makes to a worker; from `bind_address` when given (pods sharing
    one machine: the workers accept the key only from the leader's own address, by its DNS name)."""
    bind = ["-o", f"BindAddress={bind_address}"] if bind_address else []
    return [*bind,
        "-i", f"{ssh_dir}/{PRIVATE_KEY}",
        "-p", str(port),
        "-o", "IdentitiesOnly=yes",
        "-o", "BatchMode=yes",
        "-o", "StrictHostKeyChecking=yes",
        "-o", f"UserKnownHostsFile={known_hosts}",
        "-o", "ConnectTimeout=30",
        "-o", "ServerAliveInterval=30",
        "-o", "LogLevel=ERROR",
    ]  # fmt: skip


def multinode_env_names(forwarded: Sequence[str], environ: Mapping[str, str]) -> list[str]:
    """The launcher's forwarded names without the node-local ones, plus the scale-out settings."""
    names = {n for n in forwarded if n not in NODE_LOCAL_ENV}
    names |= {n for n in environ if n.startswith(SCALE_OUT_ENV_PREFIXES)}
    return sorted(names)


def group_job(
    job: MpiJob, opts: MultiNodeOptions, *, hostfile: str, ssh_args: Sequence[str], environ: Mapping[str, str]
) -> MpiJob:
    """The launcher's job spread over the group: the hostfile (this node first, as `localhost`), the SSH
    options of Open MPI's launcher (the agent stays its default, ssh), the environment every node gets."""
    return replace(
        job,
        hosts=(LOCALHOST, *opts.workers),
        slots_per_host=opts.slots_per_host,
        hostfile=hostfile,
        runtime_params=(
            ("ssh_args", " ".join(ssh_args)),
            ("no_tree_spawn", "1"),
            # `<pod>` alone does not resolve in a cluster, only `<pod>.<headless service>` does.
            ("keep_fqdn_hostnames", "1"),
        ),
        forwarded_env=tuple(multinode_env_names(job.forwarded_env, environ)),
    )


def worker_session_env(environ: Mapping[str, str]) -> dict[str, str]:
    """What a worker's SSH sessions (hence its ranks) must inherit from the worker container."""
    return {
        name: value
        for name, value in sorted(environ.items())
        if (name.startswith(WORKER_SESSION_ENV_PREFIXES) or name in WORKER_SESSION_ENV_NAMES)
        and '"' not in value
        and "\n" not in value
    }


def sshd_command(
    ssh_dir: str, port: int, session_env: Mapping[str, str], sshd: str = SSHD, listen_address: str = ""
) -> list[str]:
    """sshd in the foreground, logging to stderr (the pod log), keys only, with the mounted key pair;
    on every address unless `listen_address` (BLOOMZ_BIND_HOST: several pods sharing one machine)."""
    cmd = [
        sshd, "-D", "-e",
        "-p", str(port),
        "-h", f"{ssh_dir}/{PRIVATE_KEY}",
        "-o", f"AuthorizedKeysFile={ssh_dir}/{AUTHORIZED_KEYS}",
        "-o", "PermitRootLogin=prohibit-password",
        "-o", "PubkeyAuthentication=yes",
        "-o", "PasswordAuthentication=no",
        "-o", "KbdInteractiveAuthentication=no",
        # Secret volumes are symlinks into a directory Kubernetes owns: the file modes are what matters.
        "-o", "StrictModes=no",
        "-o", "UsePAM=no",
        "-o", "PidFile=/tmp/bloomz-sshd.pid",
        # Sessions only run the ranks: no forwarding, tunnels or agents through a worker.
        "-o", "AllowTcpForwarding=no",
        "-o", "AllowStreamLocalForwarding=no",
        "-o", "AllowAgentForwarding=no",
        "-o", "X11Forwarding=no",
        "-o", "PermitTunnel=no",
        "-o", "PermitUserEnvironment=no",
        # authorized_keys accepts the key `from=` the leaders' DNS names only: sshd must look the client's
        # address up (reverse, then forward to confirm) to match them; an address alone never matches.
        "-o", "UseDNS=yes",
    ]  # fmt: skip
    if listen_address:
        cmd += ["-o", f"ListenAddress={listen_address}"]
    if session_env:
        cmd += ["-o", "SetEnv " + " ".join(f'{k}="{v}"' for k, v in session_env.items())]
    return cmd


Probe = Callable[[str, int, float], None]


def probe_ssh_port(host: str, port: int, timeout: float) -> None:
    """Raise OSError unless `host` resolves and accepts a TCP connection on `port`."""
    try:
        infos = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM)
    except socket.gaierror as error:
        raise OSError(f"does not resolve ({error.strerror or error})") from error
    last: OSError | None = None
    for family, kind, proto, _, address in infos:
        with socket.socket(family, kind, proto) as sock:
            sock.settimeout(timeout)
            try:
                sock.connect(address)
                return
            except OSError as error:
                last = error
    raise OSError(f"refuses connections on port {port} ({last})")


def probe_resolves(host: str, port: int, timeout: float) -> None:
    """Raise OSError unless `host` resolves (the leader's own name: nothing listens on its SSH port)."""
    try:
        socket.getaddrinfo(host, port, type=socket.SOCK_STREAM)
    except socket.gaierror as error:
        raise OSError(f"does not resolve ({error.strerror or error})") from error


def wait_for_workers(
    hosts: Sequence[str],
    port: int,
    timeout_s: float,
    *,
    probe: Probe = probe_ssh_port,
    clock: Callable[[], float] = time.monotonic,
    sleep: Callable[[float], None] = time.sleep,
    interval_s: float = 1.0,
    log: Callable[[str], None] = lambda line: print(line, file=sys.stderr, flush=True),
) -> None:
    """Block until every worker resolves and accepts TCP on the SSH port: no DNS or sshd race with mpirun.
    Raises WorkersUnreachable naming each worker still missing and why."""
    deadline = clock() + timeout_s
    pending: dict[str, str] = {host: "not tried yet" for host in hosts}
    while True:
        for host in list(pending):
            try:
                probe(host, port, 5.0)
            except OSError as error:
                pending[host] = str(error)
            else:
                del pending[host]
                log(f"launch: worker {host} accepts SSH on port {port}")
        if not pending:
            return
        if clock() >= deadline:
            missing = "; ".join(f"{host}: {why}" for host, why in pending.items())
            raise WorkersUnreachable(
                f"{len(pending)} of {len(hosts)} worker(s) not reachable on SSH port {port} "
                f"after {timeout_s:g} s: {missing}"
            )
        sleep(interval_s)


def prepare_leader(
    opts: MultiNodeOptions,
    job: MpiJob,
    env: dict[str, str],
    workdir: Path,
    pod_environ: Mapping[str, str] = os.environ,
) -> MpiJob:
    """The leader's side effects before mpirun: check the group's shape, point every rank at rank 0
    (MASTER_ADDR, unless the pod sets one), write the hostfile and known_hosts, wait for the workers.
    Returns the group's job; exits with a termination message if the workers never come."""
    check_world_size(opts, job.world_size)
    if "MASTER_ADDR" not in pod_environ:
        env["MASTER_ADDR"] = opts.hosts[0]
    hostfile = workdir / "hostfile"
    known_hosts = workdir / "known_hosts"
    known_hosts.write_text(known_hosts_text((Path(opts.ssh_dir) / PUBLIC_KEY).read_text()))
    ssh_args = ssh_options(opts.ssh_dir, opts.ssh_port, str(known_hosts), pod_environ.get(BIND_HOST_ENV, ""))
    group = group_job(job, opts, hostfile=str(hostfile), ssh_args=ssh_args, environ=env)
    # The leader is `localhost` in its own hostfile: Open MPI then knows rank 0's node is this one without
    # resolving the leader's DNS name (which may not be published yet) to one of its interfaces.
    hostfile.write_text(hostfile_text(group.hosts, group.slots_per_host))
    try:
        # Workers accept the key only from this pod's DNS name (a reverse lookup): wait until it is published.
        own = opts.hosts[:1]
        wait_for_workers(own, opts.ssh_port, opts.workers_timeout_s, probe=probe_resolves, log=lambda _: None)
        wait_for_workers(opts.workers, opts.ssh_port, opts.workers_timeout_s)
    except WorkersUnreachable as error:
        message = f"launch: {error}"
        print(message, file=sys.stderr, flush=True)
        with contextlib.suppress(OSError):  # not in a pod
            Path(TERMINATION_LOG).write_text(message)
        raise SystemExit(EXIT_WORKERS_UNREACHABLE) from error
    return group


def sshd_listen_address(environ: Mapping[str, str]) -> str:
    """BLOOMZ_BIND_HOST where pods share one machine, else the pod's own address (the operator sets POD_IP);
    "" (every address) only when neither is known."""
    return environ.get(BIND_HOST_ENV) or environ.get(POD_IP_ENV, "")


def run_worker(opts: MultiNodeOptions, environ: Mapping[str, str] | None = None) -> int:
    """Become sshd (exec): the pod lives as long as sshd does, and the leader starts the ranks."""
    env = dict(os.environ if environ is None else environ)
    # sshd's privilege separation directory; images do not always ship it. Only sshd run as root needs
    # it, and only root may create it: a non-root worker goes on without.
    with contextlib.suppress(PermissionError):
        Path("/run/sshd").mkdir(mode=0o755, parents=True, exist_ok=True)
    listen = sshd_listen_address(env)
    cmd = sshd_command(opts.ssh_dir, opts.ssh_port, worker_session_env(env), listen_address=listen)
    print("launch: worker:", " ".join(cmd[:12]), "...", file=sys.stderr, flush=True)
    os.execvp(cmd[0], cmd)
    return 127  # not reached


def ranks_span_nodes(environ: Mapping[str, str]) -> bool:
    """Whether this job's ranks live on more than one node (Open MPI's per-node count is smaller)."""
    world = int(environ.get("WORLD_SIZE", "1"))
    return int(environ.get("LOCAL_SIZE", str(world))) < world


def avoid_shared_memory_all_reduce_across_nodes(environ: Mapping[str, str] = os.environ) -> bool:
    """DeepSpeed's CPU shared-memory all-reduce is set up only when every rank is on one machine, yet its
    kernel is still called when they are not (and crashes): across nodes, make DeepSpeed use the process
    group's all-reduce. Call after `deepspeed.init_inference`. Returns whether it had to."""
    if not ranks_span_nodes(environ):
        return False
    from deepspeed.comm import comm as ds_comm

    backend = getattr(ds_comm, "cdb", None)
    if backend is not None and hasattr(backend, "shm_vector_kernel_level"):
        backend.shm_vector_kernel_level = 0  # below every kernel's level: torch.distributed.all_reduce
    return True
