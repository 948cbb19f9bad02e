"""A bounded operator shutdown: SIGTERM or SIGINT stops Kopf, and the process exits within a deadline.

Kopf stops on a signal by cancelling its tasks, but a reconcile pass runs in a worker thread that cannot be
cancelled: with the API server stalled (a dead node, a stopped process), the pass sits in its API calls until
their timeouts, one after the other, and the interpreter waits for that thread before it exits - 150 s and
more with no answer to SIGTERM. So the first signal sets Kopf's stop flag (a graceful stop, which usually
takes a second) and starts a timer thread that ends the process (`os._exit`, exit code 1) if it is still
there after the deadline. The default deadline stays under the kubelet's 30 s grace period, so the operator
ends itself, with a log line that says why, before the kubelet's SIGKILL.
"""

from __future__ import annotations

import asyncio
import logging
import os
import signal
import threading
from collections.abc import Callable

DEFAULT_DEADLINE_S = 20.0
EXIT_FORCED = 1
SIGNALS = (signal.SIGTERM, signal.SIGINT)

log = logging.getLogger(__name__)


class BoundedShutdown:
    """The stop flag to hand to `kopf.run`, and the signal handling that sets it and arms the deadline."""

    def __init__(
        self,
        deadline_s: float = DEFAULT_DEADLINE_S,
        exit_now: Callable[[int], None] = os._exit,
    ) -> None:
        self.deadline_s = deadline_s
        self.stop_flag = threading.Event()
        self._exit_now = exit_now
        self._armed = threading.Event()
        self.cancelled = threading.Event()  # tests only: a deadline that no longer applies
        self.timer: threading.Thread | None = None

    def request_stop(self, reason: str) -> None:
        """Stop Kopf gracefully and make sure the process is gone `deadline_s` from the first call."""
        if self._armed.is_set():
            return
        self._armed.set()
        log.info(f"{reason}: the operator is stopping (it exits within {self.deadline_s:g} s)")
        self.timer = threading.Thread(target=self._expire, name="shutdown-deadline", daemon=True)
        self.timer.start()
        self.stop_flag.set()

    def _expire(self) -> None:
        if self.cancelled.wait(self.deadline_s):
            return
        log.error(f"the operator did not stop within {self.deadline_s:g} s (a call in flight?): exiting now")
        logging.shutdown()
        self._exit_now(EXIT_FORCED)

    def install(self, loop: asyncio.AbstractEventLoop) -> None:
        """Take SIGTERM and SIGINT over from Kopf (call from inside its loop, after it has set its own)."""
        if threading.current_thread() is not threading.main_thread():
            return  # signals reach the main thread only; a test running the operator in a thread stops it
        for sig in SIGNALS:
            loop.add_signal_handler(sig, self.request_stop, signal.Signals(sig).name)
