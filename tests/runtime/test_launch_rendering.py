"""The launcher's rank environment: threads per rank and its fixed entries (placement and the mpirun
line are in test_placement.py)."""

from __future__ import annotations

import pytest
from bloomz_api.options import ServeOptions
from bloomz_runtime.launch import rank_environment, threads_per_rank


@pytest.mark.parametrize(("cpus", "ranks", "threads"), [(8, 2, 4), (9, 2, 4), (1, 4, 1), (0, 1, 1)])
def test_threads_per_rank_share_the_cores(cpus: int, ranks: int, threads: int) -> None:
    assert threads_per_rank(cpus, ranks) == threads


def test_rank_output_is_unbuffered_unless_the_caller_says_otherwise() -> None:
    opts = ServeOptions(model="m", device="cpu", world_size=2)
    env = rank_environment(opts, {}, master_port=1, cpu_count=2, pidfile=None)
    assert env["PYTHONUNBUFFERED"] == "1"
    kept = rank_environment(opts, {"PYTHONUNBUFFERED": "0"}, master_port=1, cpu_count=2, pidfile=None)
    assert kept["PYTHONUNBUFFERED"] == "0"
