"""The CPU topology mpirun places ranks on: sockets and physical cores, hyperthreads folded in.

Gaudi servers have hyperthreading (2 sockets x 40 cores = 160 logical CPUs), and Open MPI's
`--map-by socket:PE=n` counts physical cores: asking for logical CPUs / ranks cores per rank asks for
twice the machine and mpirun refuses to start. So placement is computed from physical cores, as
optimum-habana's `distributed_runner.py` does (sockets x cores per socket / ranks per node), and only
from the CPUs this container may use (its cpuset), which is also all Open MPI's hwloc sees.

`parse_lscpu` and `CpuTopology` are pure (tests feed them recorded `lscpu -p` outputs);
`read_sysfs` and `current_topology` read this machine.
"""

from __future__ import annotations

import os
import subprocess
from collections import Counter
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path

SYSFS_CPU = Path("/sys/devices/system/cpu")
LSCPU_COLUMNS = "CPU,CORE,SOCKET"


@dataclass(frozen=True)
class LogicalCpu:
    cpu: int
    core: int
    socket: int


@dataclass(frozen=True)
class CpuTopology:
    cpus: tuple[LogicalCpu, ...]

    def restricted(self, allowed: Iterable[int]) -> CpuTopology:
        """Only the logical CPUs in `allowed` (the cpuset a container is limited to)."""
        keep = set(allowed)
        return CpuTopology(tuple(c for c in self.cpus if c.cpu in keep))

    @property
    def cores_per_socket(self) -> dict[int, int]:
        """Physical cores per socket (a core counts once whatever its hyperthreads)."""
        return dict(sorted(Counter(socket for socket, _ in {(c.socket, c.core) for c in self.cpus}).items()))

    @property
    def sockets(self) -> int:
        return len(self.cores_per_socket)

    @property
    def physical_cores(self) -> int:
        return sum(self.cores_per_socket.values())

    @property
    def logical_cpus(self) -> int:
        return len(self.cpus)


def parse_lscpu(text: str) -> CpuTopology:
    """`lscpu -p` output (the columns named by its `# CPU,Core,Socket,...` header; CPU,Core,Socket
    when there is none). Core ids are paired with their socket, so per-socket numbering works too."""
    columns = ["cpu", "core", "socket"]
    cpus = []
    for line in text.splitlines():
        line = line.strip()
        if not line:
            continue
        if line.startswith("#"):
            header = [name.strip().lower() for name in line.lstrip("#").split(",")]
            if {"cpu", "core", "socket"} <= set(header):
                columns = header
            continue
        fields = dict(zip(columns, line.split(","), strict=False))
        try:
            cpus.append(LogicalCpu(int(fields["cpu"]), int(fields["core"]), int(fields["socket"])))
        except (KeyError, ValueError) as error:
            raise ValueError(f"not an `lscpu -p` line: {line!r}") from error
    if not cpus:
        raise ValueError("no CPUs in the `lscpu -p` output")
    return CpuTopology(tuple(cpus))


def read_sysfs(root: Path = SYSFS_CPU) -> CpuTopology:
    """Every CPU's core and package ids from sysfs (Linux); raises OSError where it has none."""
    cpus = []
    for entry in sorted(root.glob("cpu[0-9]*")):
        topo = entry / "topology"
        if not topo.is_dir():  # offline CPUs have no topology directory
            continue
        cpus.append(
            LogicalCpu(
                int(entry.name[3:]),
                int((topo / "core_id").read_text()),
                int((topo / "physical_package_id").read_text()),
            )
        )
    if not cpus:
        raise OSError(f"no CPU topology under {root}")
    return CpuTopology(tuple(cpus))


def current_topology() -> CpuTopology:
    """This machine's topology limited to the CPUs this process may run on (its cpuset)."""
    try:
        topology = read_sysfs()
    except (OSError, ValueError):
        text = subprocess.run(
            ["lscpu", f"-p={LSCPU_COLUMNS}"], capture_output=True, text=True, timeout=30, check=True
        ).stdout
        topology = parse_lscpu(text)
    allowed = os.sched_getaffinity(0) if hasattr(os, "sched_getaffinity") else None
    return topology.restricted(allowed) if allowed else topology
