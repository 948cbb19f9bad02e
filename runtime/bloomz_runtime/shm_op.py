"""DeepSpeed's CPU shared-memory all-reduce op, loaded under a lock that cannot go stale.

DeepSpeed JIT-builds ``deepspeed_shm_comm`` with torch.utils.cpp_extension.load, whose FileBaton
creates ``<build directory>/lock`` with O_EXCL and waits for it to vanish, without limit: a process
killed mid-build leaves it behind, and every later multi-rank start on the machine hangs silently.
Our own lock is an fcntl lock, which the kernel drops when its holder dies. Every rank of a node
loads the op while holding it (DeepSpeed's own load then finds the op loaded), so a baton found
while we hold it belongs to no live build of ours: it is removed.

``python -m bloomz_runtime.shm_op`` builds the op ahead of time (make setup).
"""

from __future__ import annotations

import contextlib
import fcntl
import logging
from collections.abc import Iterator
from pathlib import Path
from typing import Any

log = logging.getLogger(__name__)

# torch's FileBaton file in a build directory (torch/utils/cpp_extension.py).
BATON = "lock"
# Ours, next to it: the same file for every rank that shares the build directory.
OUR_LOCK = "bloomz.flock"


def op_builder() -> Any | None:
    """DeepSpeed's builder of the op, found as DeepSpeed's TorchBackend finds it (build_shm_op);
    None where DeepSpeed would not load it (a platform without the op)."""
    import deepspeed.ops
    from deepspeed.accelerator import get_accelerator

    builder = get_accelerator().create_op_builder("ShareMemCommBuilder")
    if builder is None or not deepspeed.ops.__compatible_ops__.get(builder.NAME, False):
        return None
    return builder


def build_directory(name: str) -> Path:
    """Where torch builds extension `name` (TORCH_EXTENSIONS_DIR, else ~/.cache/torch_extensions/
    py<ver>_<accelerator>): torch's own function, so the baton we look for is the one it waits on."""
    from torch.utils.cpp_extension import _get_build_directory

    return Path(_get_build_directory(name, verbose=False))


def remove_stale_baton(directory: Path) -> bool:
    """Remove torch's baton in `directory`; call only while holding build_lock. True if there was one."""
    baton = directory / BATON
    try:
        baton.unlink()
    except FileNotFoundError:
        return False
    log.warning("removed stale JIT build lock %s (left by a build that was killed)", baton)
    return True


@contextlib.contextmanager
def build_lock(directory: Path) -> Iterator[None]:
    """Hold this machine's lock on the build in `directory` (waiting for a live holder), with any
    baton a killed build left removed."""
    directory.mkdir(parents=True, exist_ok=True)
    with open(directory / OUR_LOCK, "a") as handle:
        fcntl.flock(handle, fcntl.LOCK_EX)
        try:
            remove_stale_baton(directory)
            yield
        finally:
            fcntl.flock(handle, fcntl.LOCK_UN)


def load_shm_op() -> Path | None:
    """Build (if needed) and load the op under build_lock, before DeepSpeed's TorchBackend asks for
    it; returns the build directory, or None where DeepSpeed has no such op here."""
    builder = op_builder()
    if builder is None:
        return None
    directory = build_directory(builder.NAME)
    with build_lock(directory):
        builder.load(verbose=False)
    return directory


def main() -> int:
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    directory = load_shm_op()
    if directory is None:
        print("[setup] DeepSpeed has no shared-memory all-reduce op on this platform")
    else:
        print(f"[setup] DeepSpeed's shared-memory all-reduce op is built in {directory}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
