"""One model of the job mpirun starts, rendered to a command line in one place.

`MpiJob` holds what the launcher decides (the program every rank runs, world size, hosts and slots per
host, process binding, forwarded environment, Open MPI parameters, the Open MPI major version);
`render` turns it into argv. Nothing else writes mpirun flags, and nothing reads them back.

Open MPI 5 replaced its runtime (ORTE) with PRRTE: the ranking policy `core` became `slot`, `socket`
became `package`, `--oversubscribe` became a `:OVERSUBSCRIBE` mapping qualifier, and the runtime's
parameters changed names (`plm_rsh_*` -> `plm_ssh_*`, `orte_*` -> `prte_*`) and travel with
`--prtemca` instead of `--mca`. Parameters are kept here under neutral names and given the right
name when rendered; `mpi_major` comes from `mpirun --version` (`detect_mpi_major`).
"""

from __future__ import annotations

import re
import subprocess
from dataclasses import dataclass

from bloomz_runtime.topology import CpuTopology

DEFAULT_MPI_MAJOR = 4
# Neutral name -> (Open MPI 4 name, Open MPI 5 name), both runtime (ORTE / PRRTE) parameters.
RUNTIME_PARAMS = {
    # Options of every SSH hop mpirun makes to another node.
    "ssh_args": ("plm_rsh_args", "plm_ssh_args"),
    # Only mpirun's own node opens SSH connections (the other nodes need not reach each other).
    "no_tree_spawn": ("plm_rsh_no_tree_spawn", "plm_ssh_no_tree_spawn"),
    # Open MPI cuts host names at the first dot by default; `<pod>.<headless service>` must stay whole.
    "keep_fqdn_hostnames": ("orte_keep_fqdn_hostnames", "prte_keep_fqdn_hostnames"),
}


@dataclass(frozen=True)
class Binding:
    """Where each rank runs. `map_by` is "socket" or "slot"; `pe` cores per rank (0: not bound)."""

    map_by: str = "slot"
    pe: int = 0
    oversubscribe: bool = False

    @property
    def bound(self) -> bool:
        return self.pe > 0


UNBOUND = Binding()


@dataclass(frozen=True)
class MpiJob:
    program: tuple[str, ...]
    world_size: int
    binding: Binding = UNBOUND
    forwarded_env: tuple[str, ...] = ()
    # Several nodes: the hostfile's hosts (this node first) and ranks per host; none: this node only.
    hosts: tuple[str, ...] = ()
    slots_per_host: int = 0
    hostfile: str | None = None
    # (neutral name from RUNTIME_PARAMS, value)
    runtime_params: tuple[tuple[str, str], ...] = ()
    allow_run_as_root: bool = False
    mpi_major: int = DEFAULT_MPI_MAJOR
    mpirun: str = "mpirun"

    @property
    def uses_mpirun(self) -> bool:
        return self.world_size > 1 or bool(self.hosts)


def hostfile_text(hosts: tuple[str, ...] | list[str], slots: int) -> str:
    """Open MPI's hostfile, one `<host> slots=<n>` line per node (DeepSpeed's and optimum-habana's format)."""
    return "".join(f"{host} slots={slots}\n" for host in hosts)


def binding_flags(binding: Binding, mpi_major: int) -> list[str]:
    five = mpi_major >= 5
    if not binding.bound:
        map_by = "slot:OVERSUBSCRIBE" if binding.oversubscribe and five else "slot"
        flags = ["--bind-to", "none", "--map-by", map_by]
        return [*flags, "--oversubscribe"] if binding.oversubscribe and not five else flags
    target = "package" if binding.map_by == "socket" and five else binding.map_by
    return [
        "--bind-to", "core",
        "--map-by", f"{target}:PE={binding.pe}",
        "--rank-by", "slot" if five else "core",
    ]  # fmt: skip


def runtime_param_flags(params: tuple[tuple[str, str], ...], mpi_major: int) -> list[str]:
    option = "--prtemca" if mpi_major >= 5 else "--mca"
    flags: list[str] = []
    for name, value in params:
        four, five = RUNTIME_PARAMS[name]
        flags += [option, five if mpi_major >= 5 else four, value]
    return flags


def render(job: MpiJob) -> list[str]:
    """The command line that starts every rank: the program itself for one local rank, mpirun otherwise."""
    if not job.uses_mpirun:
        return list(job.program)
    if job.hosts and not job.hostfile:
        raise ValueError("a job over several hosts needs its hostfile written first")
    cmd = [job.mpirun, "-np", str(job.world_size)]
    if job.hostfile:
        cmd += ["--hostfile", job.hostfile]
    cmd += runtime_param_flags(job.runtime_params, job.mpi_major)
    if job.allow_run_as_root:
        cmd.append("--allow-run-as-root")
    cmd += binding_flags(job.binding, job.mpi_major)
    for name in job.forwarded_env:
        cmd += ["-x", name]
    return cmd + list(job.program)


def socket_shares(ranks: int, sockets: int) -> list[int]:
    """Ranks per socket under `--map-by socket` (round robin, the first sockets take the remainder)."""
    return [ranks // sockets + (1 if index < ranks % sockets else 0) for index in range(sockets)]


def hpu_binding(topology: CpuTopology, ranks_per_node: int) -> Binding:
    """Each rank bound to its own block of physical cores (Intel's recipe for Gaudi servers):
    PE = physical cores / ranks per node (optimum-habana's sockets x cores per socket / ranks).

    By socket where every socket holds its round-robin share of blocks, by slot where it does not (a
    cpuset that covers the sockets unevenly; or a VM with one core per socket, as optimum-habana does);
    unbound when there are fewer physical cores than ranks."""
    pe = topology.physical_cores // max(1, ranks_per_node)
    if pe < 1:
        return UNBOUND
    per_socket = list(topology.cores_per_socket.values())
    shares = socket_shares(ranks_per_node, len(per_socket))
    fits = all(share * pe <= cores for share, cores in zip(shares, per_socket, strict=True))
    one_core_sockets = max(per_socket) == 1
    return Binding(map_by="socket" if fits and not one_core_sockets else "slot", pe=pe)


def device_binding(device: str, topology: CpuTopology | None, ranks_per_node: int) -> Binding:
    """hpu: bound blocks of physical cores. cuda: the GPU does the work, leave the host threads free.
    cpu: ranks share the cores through OMP_NUM_THREADS, unbound, oversubscription allowed (a container's
    cpuset often does not match what mpirun believes the node has)."""
    if device == "hpu" and topology is not None:
        return hpu_binding(topology, ranks_per_node)
    if device == "cpu":
        return Binding(oversubscribe=True)
    return UNBOUND


_VERSION = re.compile(r"\(Open MPI\)\s+(\d+)\.")


def parse_mpi_major(text: str) -> int:
    """The major version in `mpirun --version` output ("mpirun (Open MPI) 4.1.4")."""
    match = _VERSION.search(text)
    if not match:
        raise ValueError(f"not Open MPI's version output: {text.strip()[:80]!r}")
    return int(match.group(1))


def detect_mpi_major(mpirun: str = "mpirun") -> int:
    """Ask the installed mpirun; an mpirun that cannot answer fails later with its own error, so the
    default (4) is as good as any here."""
    try:
        done = subprocess.run([mpirun, "--version"], capture_output=True, text=True, timeout=30)
        return parse_mpi_major(done.stdout + done.stderr)
    except (OSError, subprocess.TimeoutExpired, ValueError):
        return DEFAULT_MPI_MAJOR
