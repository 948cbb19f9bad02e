"""A pod container as a local process group, stopped the way a container runtime stops one:
SIGTERM to the main process, a grace period, then SIGKILL to everything it started."""

from __future__ import annotations

import contextlib
import os
import signal
import subprocess
import time
from pathlib import Path

import psutil

from bloomz_sandbox.node.process_spec import ProcessSpec


def processes_with_env(wanted: dict[str, str]) -> list[psutil.Process]:
    """Live processes whose environment holds every `wanted` pair: how the runner finds what a pod's
    process started outside its process tree (a daemonized orted, the ranks it started), which a
    container's cgroup would still hold."""
    found = []
    for process in psutil.process_iter():
        try:
            environ = process.environ()
            if (
                all(environ.get(k) == v for k, v in wanted.items())
                and process.status() != psutil.STATUS_ZOMBIE
            ):
                found.append(process)
        except psutil.Error:
            continue
    return found


def kill_all(processes: list[psutil.Process]) -> None:
    for process in processes:
        with contextlib.suppress(psutil.Error):
            process.kill()
    psutil.wait_procs(processes, timeout=5)


class LocalProcess:
    def __init__(self, spec: ProcessSpec, log_path: Path) -> None:
        self.spec = spec
        self.log_path = log_path
        self.started_at = 0.0
        self._popen: subprocess.Popen[bytes] | None = None
        # Every descendant seen so far: ranks orphaned by a crashed launcher are still ours to kill.
        self._descendants: dict[int, psutil.Process] = {}

    def start(self) -> None:
        for directory in self.spec.directories:
            directory.mkdir(parents=True, exist_ok=True)
        self.log_path.parent.mkdir(parents=True, exist_ok=True)
        with self.log_path.open("ab") as log:
            log.write(f"--- sandbox: starting {' '.join(self.spec.argv)}\n".encode())
            log.flush()
            self._popen = subprocess.Popen(
                self.spec.argv,
                env=self.spec.env,
                cwd=self.spec.cwd,
                stdin=subprocess.DEVNULL,
                stdout=log,
                stderr=subprocess.STDOUT,
                start_new_session=True,  # its own process group, like a container
            )
        self.started_at = time.time()

    @property
    def pid(self) -> int | None:
        return self._popen.pid if self._popen else None

    def poll(self) -> int | None:
        """The exit status once the main process ended (negative: killed by that signal)."""
        if self._popen is None:
            return None
        self._remember_descendants()
        return self._popen.poll()

    def _remember_descendants(self) -> None:
        if self._popen is None or self._popen.returncode is not None:
            return
        try:
            for child in psutil.Process(self._popen.pid).children(recursive=True):
                self._descendants.setdefault(child.pid, child)
        except psutil.Error:
            pass

    def alive_processes(self) -> list[psutil.Process]:
        """The main process and every descendant still running (what a pod's cgroup would hold)."""
        alive: list[psutil.Process] = []
        if self._popen is not None and self._popen.poll() is None:
            alive.append(psutil.Process(self._popen.pid))
        for process in self._descendants.values():
            try:
                if process.is_running() and process.status() != psutil.STATUS_ZOMBIE:
                    alive.append(process)
            except psutil.Error:
                continue
        return alive

    def stop(self, grace_seconds: float) -> int | None:
        """SIGTERM to the main process, wait up to the grace period, then SIGKILL all that is left."""
        if self._popen is None:
            return None
        self._remember_descendants()
        if self._popen.poll() is None:
            try:
                self._popen.send_signal(signal.SIGTERM)
                self._popen.wait(timeout=max(grace_seconds, 0.0))
            except (subprocess.TimeoutExpired, ProcessLookupError):
                pass
        self.kill_leftovers()
        return self._popen.returncode

    def kill_leftovers(self) -> None:
        """SIGKILL the process group and any remembered descendant, and reap them."""
        if self._popen is None:
            return
        self._remember_descendants()
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.killpg(self._popen.pid, signal.SIGKILL)
        for process in self.alive_processes():
            try:
                process.kill()
            except psutil.Error:
                continue
        with contextlib.suppress(subprocess.TimeoutExpired):
            self._popen.wait(timeout=10)
        psutil.wait_procs(list(self._descendants.values()), timeout=5)
