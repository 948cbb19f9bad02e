"""Rank 0's step watchdog: a step that runs past a limit is a hang (a rank stopped or gone, a
collective that never completes; DeepSpeed's CPU shared-memory all-reduce has no timeout at all).

The serve loop asks `overdue` twice a second. When it says yes, rank 0 reports NOT_SERVING, answers
every accepted request UNAVAILABLE (clients retry elsewhere: nothing accepted is lost silently), and
the process exits with EXIT_STUCK so Kubernetes restarts the pod. The engine thread itself stays
blocked in the collective, which is why the exit is os._exit, not a return.
"""

from __future__ import annotations

import os
import sys
import time
from collections.abc import Iterable

from bloomz_runtime.errors import Unavailable
from bloomz_runtime.requests import GenerationRequest

EXIT_STUCK = 3
# After failing the requests, how long the event loop gets to send those answers before the exit.
FLUSH_S = 1.0


def overdue(step_started: float | None, now: float, limit_s: float) -> bool:
    """Whether a step that began at `step_started` (None: no step running) has run past `limit_s`
    (0 or less: no limit)."""
    return limit_s > 0 and step_started is not None and now - step_started > limit_s


def stuck_error(limit_s: float) -> Unavailable:
    return Unavailable(
        f"the engine is stuck (a step ran over {limit_s:.0f} s: a rank stopped or a collective hung); "
        "the server restarts, retry the request"
    )


def fail_all(requests: Iterable[GenerationRequest], error: BaseException) -> int:
    """Fail every request not yet answered with `error`; how many were."""
    now = time.monotonic()
    failed = 0
    for req in requests:
        if not req.done:
            req.fail(error, now)
            failed += 1
    return failed


def exit_stuck() -> None:
    """End the process at once: the engine thread is blocked in C and would never join."""
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(EXIT_STUCK)
