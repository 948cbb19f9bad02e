"""A pod container as a local process group, stopped the way a container runtime stops one:
SIGTERM to the main process, a grace period, then SIGKILL to everything it started.

Every process the sandbox starts (pod containers, the operator) is forked by one spawner thread that
lives as long as the sandbox, with PR_SET_PDEATHSIG: a sandbox killed with SIGKILL takes them along."""

from __future__ import annotations

import concurrent.futures
import contextlib
import os
import queue
import signal
import subprocess
import threading
import time
from pathlib import Path
from typing import Any

import psutil
from bloomz_runtime.lifetime import preexec_die_with_parent

from bloomz_sandbox.node.process_spec import ProcessSpec


class _Spawner:
    """Forks every child from one thread that never ends before the process does: the kernel sends a
    PR_SET_PDEATHSIG signal when the forking *thread* ends, so forking from a pod-runner thread would
    kill pods whenever that thread stops."""

    def __init__(self) -> None:
        self._requests: queue.SimpleQueue[tuple[concurrent.futures.Future[Any], list[str], dict[str, Any]]]
        self._requests = queue.SimpleQueue()
        self._thread: threading.Thread | None = None
        self._lock = threading.Lock()

    def popen(self, argv: list[str], **kwargs: Any) -> subprocess.Popen[bytes]:
        with self._lock:
            if self._thread is None:
                self._thread = threading.Thread(target=self._serve, name="sandbox-spawner", daemon=True)
                self._thread.start()
        result: concurrent.futures.Future[subprocess.Popen[bytes]] = concurrent.futures.Future()
        self._requests.put((result, argv, kwargs))
        return result.result()

    def _serve(self) -> None:
        while True:
            result, argv, kwargs = self._requests.get()
            try:
                result.set_result(subprocess.Popen(argv, preexec_fn=preexec_die_with_parent(), **kwargs))
            except BaseException as error:  # handed to the caller, which raises it
                result.set_exception(error)


_spawner = _Spawner()


def spawn(argv: list[str], **kwargs: Any) -> subprocess.Popen[bytes]:
    """subprocess.Popen(argv, **kwargs) for a child that dies (SIGKILL) when the sandbox process ends."""
    return _spawner.popen(argv, **kwargs)


def kill_group_now(pid: int) -> None:
    """SIGKILL a process group without waiting: the last resort of a stop that overran its time."""
    with contextlib.suppress(ProcessLookupError, PermissionError):
        os.killpg(pid, signal.SIGKILL)


def stop_group(pid: int, grace_seconds: float) -> None:
    """SIGTERM to a group leader started with start_new_session, up to `grace_seconds` for it to exit,
    then SIGKILL to its group; reaped with os.waitpid (through psutil), never through Popen's lock."""
    try:
        process = psutil.Process(pid)
        process.send_signal(signal.SIGTERM)
        process.wait(timeout=grace_seconds)
    except psutil.TimeoutExpired:
        pass
    except psutil.Error:
        pass
    kill_group_now(pid)
    with contextlib.suppress(psutil.Error):
        psutil.Process(pid).wait(timeout=10)


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
            self._popen = spawn(
                list(self.spec.argv),
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

    def kill_now(self) -> None:
        """SIGKILL the group and every remembered descendant without waiting (a stop that overran)."""
        if self._popen is None:
            return
        kill_group_now(self._popen.pid)
        for process in list(self._descendants.values()):
            with contextlib.suppress(psutil.Error):
                process.kill()
