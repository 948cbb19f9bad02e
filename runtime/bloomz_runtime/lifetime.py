"""Child processes that die with their parent: Linux's PR_SET_PDEATHSIG through ctypes.

A process we start must not outlive us when we are killed with SIGKILL (no handler runs then): the
kernel sends the child the chosen signal as soon as the thread that forked it ends. So callers fork
from a thread that lives as long as the process (the main thread, or a long-lived spawner thread).
Off Linux these are no-ops.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import os
import signal
import sys
from collections.abc import Callable

PR_SET_PDEATHSIG = 1

_libc = (
    ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6", use_errno=True)
    if sys.platform == "linux"
    else None
)


def die_with_parent(sig: int = signal.SIGKILL, parent_pid: int | None = None) -> None:
    """Ask the kernel to send `sig` to this process when its parent ends. `parent_pid` is who the
    parent should be: if it already ended before the request (we were re-parented), end now."""
    if _libc is None:
        return
    if _libc.prctl(PR_SET_PDEATHSIG, int(sig), 0, 0, 0) != 0:
        raise OSError(ctypes.get_errno(), "prctl(PR_SET_PDEATHSIG) failed")
    if parent_pid is not None and os.getppid() != parent_pid:
        os.kill(os.getpid(), sig)


def preexec_die_with_parent(sig: int = signal.SIGKILL) -> Callable[[], None]:
    """A subprocess `preexec_fn` (it runs in the child between fork and exec): the child dies with us.
    Everything it needs is looked up before the fork; the child only calls prctl and getppid."""
    parent = os.getpid()

    def preexec() -> None:
        die_with_parent(sig, parent)

    return preexec
