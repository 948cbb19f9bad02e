"""Rank discovery and torch.distributed set-up for ranks started by mpirun (no mpi4py).

Open MPI tells each process who it is through OMPI_COMM_WORLD_*; torch.distributed and
DeepSpeed want RANK / WORLD_SIZE / LOCAL_RANK / MASTER_ADDR / MASTER_PORT.
"""

from __future__ import annotations

import datetime
import logging
import os
from collections.abc import Mapping, MutableMapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

BACKENDS = {"hpu": "hccl", "cuda": "nccl", "cpu": "gloo"}
# Collectives between ranks: loading a 176B checkpoint shard by shard can take many minutes.
DEFAULT_TIMEOUT_S = 1800.0
# Ranks wait this long for their node's download of the weights (176B: some 350 GB).
DOWNLOAD_TIMEOUT_S = 12 * 3600.0
# The control channel (rank 0 -> others) carries a heartbeat when idle, so a shorter limit
# only fires when a peer is really gone.
CONTROL_TIMEOUT_S = 120.0


def hpu_environment(world_size: int, environ: MutableMapping[str, str]) -> None:
    """Intel Gaudi's settings, as optimum-habana's text-generation example sets them (defaults only: a
    user's value wins). PyTorch's Gaudi bridge reads them when habana_frameworks is first imported, so
    they must be in place before that: the launcher puts them in every rank's environment, and
    init_distributed sets them again before it imports the hccl backend (ranks started without the
    launcher). PT_HPU_LAZY_ACC_PAR_MODE is gone: optimum-habana no longer sets it."""
    environ.setdefault("EXPERIMENTAL_WEIGHT_SHARING", "FALSE")
    environ.setdefault("PT_HPU_LAZY_MODE", "1")
    if world_size > 1:
        # Lazy-mode collectives: needed for HPU graphs under DeepSpeed tensor parallelism.
        environ.setdefault("PT_HPU_ENABLE_LAZY_COLLECTIVES", "true")


def rank_env(environ: Mapping[str, str]) -> dict[str, str]:
    """RANK/WORLD_SIZE/LOCAL_RANK/LOCAL_SIZE/MASTER_ADDR/MASTER_PORT from Open MPI's variables.

    Values already set win (a user or another launcher knows better); without Open MPI's
    variables this is a single process.
    """
    rank = environ.get("OMPI_COMM_WORLD_RANK", "0")
    size = environ.get("OMPI_COMM_WORLD_SIZE", "1")
    local = environ.get("OMPI_COMM_WORLD_LOCAL_RANK", rank)
    local_size = environ.get("OMPI_COMM_WORLD_LOCAL_SIZE", size)
    mapped = {
        "RANK": environ.get("RANK", rank),
        "WORLD_SIZE": environ.get("WORLD_SIZE", size),
        "LOCAL_RANK": environ.get("LOCAL_RANK", local),
        # DeepSpeed's CPU shared-memory all-reduce is only set up when LOCAL_SIZE says every
        # rank is on this machine; without it the kernel runs uninitialised and crashes.
        "LOCAL_SIZE": environ.get("LOCAL_SIZE", local_size),
        "MASTER_ADDR": environ.get("MASTER_ADDR", "127.0.0.1"),
        "MASTER_PORT": environ.get("MASTER_PORT", "29500"),
    }
    return mapped


@dataclass
class DistContext:
    rank: int
    world_size: int
    local_rank: int
    # A gloo group for the control channel; None with a single rank.
    control_group: Any = None
    # A gloo group with a download's patience, for download_barrier; None with a single rank.
    download_group: Any = None

    @property
    def is_leader(self) -> bool:
        return self.rank == 0

    def download_barrier(self) -> None:
        """Every rank waits here until each node's local rank 0 has the weights (one download per node)."""
        if self.download_group is None:
            return
        import torch.distributed as dist

        dist.barrier(group=self.download_group)


def init_distributed(device: str, expected_world_size: int) -> DistContext:
    """Export the rank variables and initialise torch.distributed when there is more than one rank."""
    if device == "hpu":
        hpu_environment(expected_world_size, os.environ)
    env = rank_env(os.environ)
    os.environ.update(env)
    rank, world_size, local_rank = int(env["RANK"]), int(env["WORLD_SIZE"]), int(env["LOCAL_RANK"])
    if world_size != expected_world_size:
        raise RuntimeError(f"started with {world_size} ranks but --world-size is {expected_world_size}")
    if world_size == 1:
        return DistContext(rank=0, world_size=1, local_rank=0)

    import torch.distributed as dist

    if device == "hpu":
        import habana_frameworks.torch.distributed.hccl  # noqa: F401  registers the hccl backend
    if device == "cuda":
        import torch

        torch.cuda.set_device(local_rank)
    dist.init_process_group(
        backend=BACKENDS[device],
        rank=rank,
        world_size=world_size,
        timeout=datetime.timedelta(seconds=DEFAULT_TIMEOUT_S),
    )
    # Python objects travel over gloo whatever the device's collective backend is.
    control = dist.new_group(backend="gloo", timeout=datetime.timedelta(seconds=CONTROL_TIMEOUT_S))
    download = dist.new_group(backend="gloo", timeout=datetime.timedelta(seconds=DOWNLOAD_TIMEOUT_S))
    return DistContext(
        rank=rank,
        world_size=world_size,
        local_rank=local_rank,
        control_group=control,
        download_group=download,
    )


def shorten_collective_timeout(ctx: DistContext, seconds: float) -> bool:
    """Once the model is loaded and warmed up no collective may take anywhere near DEFAULT_TIMEOUT_S:
    set this rank's default-group timeout to `seconds` (the step limit), so a lost peer fails a
    collective in that time instead of half an hour. False where it was not set."""
    if ctx.world_size == 1 or seconds <= 0:
        return False
    from torch.distributed import distributed_c10d

    try:
        distributed_c10d._set_pg_timeout(datetime.timedelta(seconds=seconds), None)
    except Exception as error:  # a backend without per-group timeouts keeps its own
        logging.getLogger(__name__).warning("collective timeout left unchanged: %s", error)
        return False
    return True


SHM_DIR = Path("/dev/shm")


def deepspeed_shm_prefix(uid: int, master_addr: str, master_port: str) -> str:
    """How DeepSpeed's CPU shared-memory all-reduce (ops/csrc/cpu/comm/shm.cpp) names a job's segments:
    one per rank, "<prefix><rank>", 69 MB each, never unlinked by DeepSpeed."""
    return f"deepspeed_allreduce_buffer_{uid}_{master_addr}_{master_port}_"


def unlink_own_shm_segment(environ: Mapping[str, str] = os.environ, shm_dir: Path = SHM_DIR) -> bool:
    """Remove this rank's segment name once every rank has opened every segment (after a barrier that
    follows DeepSpeed's set-up): the mappings stay valid, and nothing is left in /dev/shm whatever
    way the job ends, a SIGKILL included. Returns whether there was a segment to unlink."""
    if "MASTER_ADDR" not in environ or "MASTER_PORT" not in environ:
        return False
    prefix = deepspeed_shm_prefix(os.getuid(), environ["MASTER_ADDR"], environ["MASTER_PORT"])
    try:
        (shm_dir / f"{prefix}{environ.get('RANK', '0')}").unlink()
    except OSError:  # already gone, or not ours to remove
        return False
    return True
