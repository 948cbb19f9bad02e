"""The launcher's command rendering, whole: every device's mpirun placement flags and the defaults of
build_command, and the rank environment's fixed entries."""

from __future__ import annotations

import sys

import pytest
from bloomz_runtime.launch import build_command, mpirun_binding_flags, rank_environment, threads_per_rank
from bloomz_runtime.options import ServeOptions, to_argv


@pytest.mark.parametrize(
    ("device", "world_size", "cpus", "flags"),
    [
        ("hpu", 8, 160, ["--bind-to", "core", "--map-by", "socket:PE=20", "--rank-by", "core"]),
        ("hpu", 8, 4, ["--bind-to", "core", "--map-by", "socket:PE=1", "--rank-by", "core"]),
        ("cuda", 4, 64, ["--bind-to", "none", "--map-by", "slot"]),
        ("cpu", 2, 2, ["--bind-to", "none", "--map-by", "slot", "--oversubscribe"]),
    ],
)
def test_each_device_gets_its_placement(device: str, world_size: int, cpus: int, flags: list[str]) -> None:
    assert mpirun_binding_flags(device, world_size, cpus) == flags


def test_build_command_defaults_are_one_cpu_not_root_and_this_python() -> None:
    opts = ServeOptions(model="m", device="hpu", world_size=2)
    cmd = build_command(opts, {})
    assert cmd == [
        "mpirun", "-np", "2",
        "--bind-to", "core", "--map-by", "socket:PE=1", "--rank-by", "core",
        sys.executable, "-u", "-m", "bloomz_runtime.serve", *to_argv(opts),
    ]  # fmt: skip


@pytest.mark.parametrize(("cpus", "ranks", "threads"), [(8, 2, 4), (9, 2, 4), (1, 4, 1), (0, 1, 1)])
def test_threads_per_rank_share_the_cores(cpus: int, ranks: int, threads: int) -> None:
    assert threads_per_rank(cpus, ranks) == threads


def test_rank_output_is_unbuffered_unless_the_caller_says_otherwise() -> None:
    opts = ServeOptions(model="m", device="cpu", world_size=2)
    env = rank_environment(opts, {}, master_port=1, cpu_count=2, pidfile=None)
    assert env["PYTHONUNBUFFERED"] == "1"
    kept = rank_environment(opts, {"PYTHONUNBUFFERED": "0"}, master_port=1, cpu_count=2, pidfile=None)
    assert kept["PYTHONUNBUFFERED"] == "0"
