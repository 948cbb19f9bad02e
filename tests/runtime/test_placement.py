"""Rank placement from recorded CPU topologies (`lscpu -p` files in topologies/), the job model and its
mpirun command line for Open MPI 4 and 5."""

from __future__ import annotations

import os
import shutil
import subprocess
from dataclasses import replace
from pathlib import Path

import pytest
from bloomz_api.options import ServeOptions
from bloomz_runtime.launch import build_command, plan_job
from bloomz_runtime.mpijob import (
    Binding,
    MpiJob,
    detect_mpi_major,
    device_binding,
    hpu_binding,
    parse_mpi_major,
    render,
    socket_shares,
)
from bloomz_runtime.topology import CpuTopology, LogicalCpu, current_topology, parse_lscpu, read_sysfs

TOPOLOGIES = Path(__file__).with_name("topologies")


def recorded(name: str) -> CpuTopology:
    return parse_lscpu((TOPOLOGIES / f"{name}.lscpu").read_text())


def cpuset(spec: str) -> set[int]:
    """A cgroup cpuset list ("0-19,80-99")."""
    cpus: set[int] = set()
    for part in spec.split(","):
        low, _, high = part.partition("-")
        cpus.update(range(int(low), int(high or low) + 1))
    return cpus


def hpu_command(topology: CpuTopology, ranks: int, mpi_major: int = 4) -> str:
    opts = ServeOptions(model="/models/bloomz-7b1", device="hpu", world_size=ranks)
    cmd = build_command(opts, {}, python="python3", is_root=True, topology=topology, mpi_major=mpi_major)
    return " ".join(cmd[: cmd.index("python3")])


@pytest.mark.parametrize(
    ("name", "sockets", "cores", "cpus"),
    [("2x40-ht", 2, 80, 160), ("2x56-ht", 2, 112, 224), ("1x32-ht", 1, 32, 64), ("ci-2cpu", 1, 2, 2)],
)
def test_recorded_topologies_count_physical_cores(name: str, sockets: int, cores: int, cpus: int) -> None:
    topology = recorded(name)
    assert (topology.sockets, topology.physical_cores, topology.logical_cpus) == (sockets, cores, cpus)


def test_gaudi2_server_2x40_cores_with_hyperthreads_gives_ten_cores_per_rank() -> None:
    # 160 logical CPUs / 8 ranks would ask for 20 cores each: 160 cores on an 80-core machine.
    assert hpu_command(recorded("2x40-ht"), 8) == (
        "mpirun -np 8 --allow-run-as-root --bind-to core --map-by socket:PE=10 --rank-by core"
    )


def test_2x56_cores_with_hyperthreads() -> None:
    assert hpu_command(recorded("2x56-ht"), 8) == (
        "mpirun -np 8 --allow-run-as-root --bind-to core --map-by socket:PE=14 --rank-by core"
    )
    assert hpu_binding(recorded("2x56-ht"), 4) == Binding(map_by="socket", pe=28)


def test_one_socket() -> None:
    assert hpu_command(recorded("1x32-ht"), 8) == (
        "mpirun -np 8 --allow-run-as-root --bind-to core --map-by socket:PE=4 --rank-by core"
    )


def test_cpuset_limited_container_counts_only_its_cores() -> None:
    # 20 cores of socket 0 with their hyperthreads: the container sees 40 CPUs, 20 physical cores.
    container = recorded("2x40-ht").restricted(cpuset("0-19,80-99"))
    assert (container.sockets, container.physical_cores, container.logical_cpus) == (1, 20, 40)
    assert hpu_command(container, 8) == (
        "mpirun -np 8 --allow-run-as-root --bind-to core --map-by socket:PE=2 --rank-by core"
    )


def test_cpuset_covering_sockets_unevenly_maps_by_slot() -> None:
    # 30 cores on socket 0, 10 on socket 1: by socket, 4 ranks x 5 cores would not fit on socket 1.
    container = recorded("2x40-ht").restricted(cpuset("0-29,40-49"))
    assert container.cores_per_socket == {0: 30, 1: 10}
    assert hpu_binding(container, 8) == Binding(map_by="slot", pe=5)
    assert "--map-by slot:PE=5" in hpu_command(container, 8)


def test_fewer_cores_than_ranks_leaves_ranks_unbound() -> None:
    assert hpu_binding(recorded("ci-2cpu"), 8) == Binding()
    assert "--bind-to none --map-by slot" in hpu_command(recorded("ci-2cpu"), 8)


def test_vm_with_one_core_per_socket_maps_by_slot() -> None:
    vm = CpuTopology(tuple(LogicalCpu(cpu=i, core=0, socket=i) for i in range(8)))
    assert hpu_binding(vm, 4) == Binding(map_by="slot", pe=2)


def test_multi_node_places_the_ranks_of_one_node() -> None:
    # 16 ranks over 2 nodes: each node's 8 ranks share its 80 cores.
    opts = ServeOptions(model="m", device="hpu", world_size=16)
    job = plan_job(opts, {}, topology=recorded("2x40-ht"), ranks_per_node=8)
    assert job.binding == Binding(map_by="socket", pe=10)


def test_socket_shares_round_robin() -> None:
    assert socket_shares(8, 2) == [4, 4]
    assert socket_shares(3, 2) == [2, 1]
    assert socket_shares(1, 4) == [1, 0, 0, 0]


# --- Open MPI 4 and 5 ------------------------------------------------------------------------------


def test_open_mpi_5_ranks_by_slot_and_maps_by_package() -> None:
    assert hpu_command(recorded("2x40-ht"), 8, mpi_major=5) == (
        "mpirun -np 8 --allow-run-as-root --bind-to core --map-by package:PE=10 --rank-by slot"
    )


@pytest.mark.parametrize(
    ("mpi_major", "flags"),
    [
        (4, ["--bind-to", "none", "--map-by", "slot", "--oversubscribe"]),
        (5, ["--bind-to", "none", "--map-by", "slot:OVERSUBSCRIBE"]),
    ],
)
def test_cpu_ranks_oversubscribe_in_each_versions_words(mpi_major: int, flags: list[str]) -> None:
    opts = ServeOptions(model="m", device="cpu", world_size=2)
    cmd = build_command(opts, {}, python="py", mpi_major=mpi_major)
    assert cmd[3 : cmd.index("py")] == flags


GROUP = MpiJob(
    program=("py", "-u", "-m", "bloomz_runtime.serve"),
    world_size=16,
    binding=Binding(map_by="socket", pe=10),
    forwarded_env=("MASTER_ADDR", "PATH"),
    hosts=("localhost", "w1.hosts"),
    slots_per_host=8,
    hostfile="/tmp/hostfile",
    runtime_params=(("ssh_args", "-i k -p 2222"), ("no_tree_spawn", "1"), ("keep_fqdn_hostnames", "1")),
)


def test_group_command_open_mpi_4() -> None:
    assert render(GROUP) == [
        "mpirun", "-np", "16", "--hostfile", "/tmp/hostfile",
        "--mca", "plm_rsh_args", "-i k -p 2222",
        "--mca", "plm_rsh_no_tree_spawn", "1",
        "--mca", "orte_keep_fqdn_hostnames", "1",
        "--bind-to", "core", "--map-by", "socket:PE=10", "--rank-by", "core",
        "-x", "MASTER_ADDR", "-x", "PATH",
        "py", "-u", "-m", "bloomz_runtime.serve",
    ]  # fmt: skip


def test_group_command_open_mpi_5_uses_prrte_names() -> None:
    assert render(replace(GROUP, mpi_major=5)) == [
        "mpirun", "-np", "16", "--hostfile", "/tmp/hostfile",
        "--prtemca", "plm_ssh_args", "-i k -p 2222",
        "--prtemca", "plm_ssh_no_tree_spawn", "1",
        "--prtemca", "prte_keep_fqdn_hostnames", "1",
        "--bind-to", "core", "--map-by", "package:PE=10", "--rank-by", "slot",
        "-x", "MASTER_ADDR", "-x", "PATH",
        "py", "-u", "-m", "bloomz_runtime.serve",
    ]  # fmt: skip


def test_a_group_needs_its_hostfile() -> None:
    with pytest.raises(ValueError) as refused:
        render(replace(GROUP, hostfile=None))
    assert str(refused.value) == "a job over several hosts needs its hostfile written first"


@pytest.mark.parametrize(
    ("text", "major"),
    [
        ("mpirun (Open MPI) 4.1.4\n\nReport bugs to http://www.open-mpi.org/community/help/\n", 4),
        ("mpirun (Open MPI) 5.0.7\n\nReport bugs to https://www.open-mpi.org/community/help/\n", 5),
    ],
)
def test_version_from_mpirun_output(text: str, major: int) -> None:
    assert parse_mpi_major(text) == major


def test_version_output_of_something_else_is_refused() -> None:
    with pytest.raises(ValueError) as refused:
        parse_mpi_major("HYDRA build details:\n    Version: 4.1\n")
    assert str(refused.value) == "not Open MPI's version output: 'HYDRA build details:\\n    Version: 4.1'"


def test_a_long_version_output_is_quoted_to_80_characters() -> None:
    with pytest.raises(ValueError) as refused:
        parse_mpi_major("y" * 100)
    assert str(refused.value) == f"not Open MPI's version output: {'y' * 80!r}"


def test_installed_mpirun_version_is_detected() -> None:
    mpirun = shutil.which("mpirun")
    if mpirun is None:
        pytest.skip("no mpirun here")
    out = subprocess.run([mpirun, "--version"], capture_output=True, text=True, check=True).stdout
    assert detect_mpi_major(mpirun) == parse_mpi_major(out)
    assert detect_mpi_major("/nonexistent/mpirun") == 4  # cannot answer: mpirun fails later, loudly


def test_sysfs_reader_pairs_core_and_package_ids(tmp_path: Path) -> None:
    # sysfs numbers cores per package: core 0 exists on both sockets, and hyperthread siblings share one.
    layout = {0: (0, 0), 1: (1, 0), 2: (0, 1), 3: (1, 1), 4: (0, 0), 5: (1, 0), 6: (0, 1), 7: (1, 1)}
    for cpu, (core, package) in layout.items():
        topo = tmp_path / f"cpu{cpu}" / "topology"
        topo.mkdir(parents=True)
        (topo / "core_id").write_text(f"{core}\n")
        (topo / "physical_package_id").write_text(f"{package}\n")
    (tmp_path / "cpu8").mkdir()  # offline: no topology directory
    (tmp_path / "cpu10").mkdir()  # offline too, and listed between cpu1 and cpu2
    (tmp_path / "cpufreq").mkdir()
    topology = read_sysfs(tmp_path)
    assert (topology.sockets, topology.physical_cores, topology.logical_cpus) == (2, 4, 8)
    assert topology.restricted({0, 4}).physical_cores == 1


def test_a_sysfs_without_cpus_is_refused(tmp_path: Path) -> None:
    with pytest.raises(OSError) as refused:
        read_sysfs(tmp_path)
    assert str(refused.value) == f"no CPU topology under {tmp_path}"


def test_without_sysfs_the_topology_comes_from_lscpu(monkeypatch: pytest.MonkeyPatch) -> None:
    from bloomz_runtime import topology as module

    from_sysfs = read_sysfs()

    def unreadable() -> CpuTopology:
        raise OSError("no sysfs here")

    monkeypatch.setattr(module, "read_sysfs", unreadable)
    assert current_topology().cpus == from_sysfs.restricted(os.sched_getaffinity(0)).cpus


def test_the_topology_is_limited_to_this_process_cpuset(monkeypatch: pytest.MonkeyPatch) -> None:
    asked: list[int] = []
    first = min(os.sched_getaffinity(0))

    def affinity(pid: int) -> set[int]:
        asked.append(pid)
        return {first}

    monkeypatch.setattr(os, "sched_getaffinity", affinity)
    assert [c.cpu for c in current_topology().cpus] == [first] and asked == [0]


def test_this_machine_is_read_within_its_cpuset() -> None:
    topology = current_topology()
    assert topology.logical_cpus == len(os.sched_getaffinity(0))
    assert 1 <= topology.physical_cores <= topology.logical_cpus


def test_device_binding_per_device() -> None:
    assert device_binding("cuda", None, 8) == Binding()
    assert device_binding("cpu", None, 8) == Binding(oversubscribe=True)
    assert device_binding("hpu", None, 8) == Binding()  # topology unknown: unbound, never refused


def test_one_rank_per_node_is_bound_to_every_physical_core() -> None:
    # 80 cores do not fit one socket's 40: by slot
    assert hpu_binding(recorded("2x40-ht"), 1) == Binding(map_by="slot", pe=80)
    single = CpuTopology((LogicalCpu(cpu=0, core=0, socket=0),))
    assert hpu_binding(single, 1) == Binding(map_by="slot", pe=1)  # one core, one socket: by slot


def test_sockets_of_two_cores_map_by_socket() -> None:
    """Only one-core sockets (a VM's) map by slot; two cores per socket are a real socket's share."""
    small = CpuTopology(tuple(LogicalCpu(cpu=i, core=i % 2, socket=i // 2) for i in range(4)))
    assert hpu_binding(small, 2) == Binding(map_by="socket", pe=2)


LSCPU_LINES = "0,0,0\n1,1,0\n2,0,1\n3,1,1\n"


@pytest.mark.parametrize(
    "text",
    [
        LSCPU_LINES,  # no header: CPU,Core,Socket
        "# CPU,Core,Socket\n" + LSCPU_LINES,
        "#CPU,Core,Socket\n\n" + LSCPU_LINES.replace("\n", "\n\n"),  # blank lines anywhere
        "# Socket,CPU,Core\n0,0,0\n0,1,1\n1,2,0\n1,3,1\n",  # the header names the order
        "# Core,Socket,CPU\n0,0,0\n1,0,1\n0,1,2\n1,1,3\n",
        "# CPU,Core,Socket,Node,,L1d:L1i\n0,0,0,0,,0:0\n1,1,0,0,,1:1\n2,0,1,1,,2:2\n3,1,1,1,,3:3\n",
    ],
)
def test_lscpu_columns_are_read_by_their_header(text: str) -> None:
    topology = parse_lscpu(text)
    assert [(c.cpu, c.core, c.socket) for c in topology.cpus] == [(0, 0, 0), (1, 1, 0), (2, 0, 1), (3, 1, 1)]


def test_a_header_without_the_three_columns_keeps_the_default_order() -> None:
    assert parse_lscpu("# CPU,Core\n" + LSCPU_LINES).cpus == parse_lscpu(LSCPU_LINES).cpus


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("0,0,0\nx,0,0\n", "not an `lscpu -p` line: 'x,0,0'"),
        ("0,0\n", "not an `lscpu -p` line: '0,0'"),
        ("# CPU,Core,Socket\n", "no CPUs in the `lscpu -p` output"),
        ("", "no CPUs in the `lscpu -p` output"),
    ],
)
def test_what_is_not_lscpu_output_is_refused_with_the_line(text: str, message: str) -> None:
    with pytest.raises(ValueError) as refused:
        parse_lscpu(text)
    assert str(refused.value) == message
