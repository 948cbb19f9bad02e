"""The sandbox's stop is bounded: a stage that hangs or fails has its processes killed and the next
stage runs; a process that ignores SIGTERM is SIGKILLed with its group; spawned children carry
PR_SET_PDEATHSIG."""

from __future__ import annotations

import subprocess
import sys
import threading
from pathlib import Path

import psutil
from bloomz_sandbox.node.processes import spawn, stop_group
from bloomz_sandbox.stack import run_stage
from helpers import wait_for


def test_a_stage_that_hangs_is_given_up_and_its_processes_killed() -> None:
    never = threading.Event()
    killed: list[str] = []
    assert run_stage("hanging", never.wait, 0.2, lambda: killed.append("hanging")) is False
    assert killed == ["hanging"]
    never.set()


def test_a_stage_that_fails_has_its_processes_killed_too() -> None:
    killed: list[str] = []

    def broken() -> None:
        raise RuntimeError("boom")

    assert run_stage("broken", broken, 5.0, lambda: killed.append("broken")) is False
    assert killed == ["broken"]
    assert run_stage("fine", lambda: None, 5.0, lambda: killed.append("fine")) is True
    assert killed == ["broken"]


def test_stop_group_kills_a_group_whose_leader_ignores_sigterm(tmp_path: Path) -> None:
    ready = tmp_path / "ready"
    program = (
        "import signal, subprocess, sys, time\n"
        "signal.signal(signal.SIGTERM, signal.SIG_IGN)\n"
        "child = subprocess.Popen([sys.executable, '-c', 'import time; time.sleep(300)'])\n"
        f"open({str(ready)!r}, 'w').write(str(child.pid))\n"
        "time.sleep(300)\n"
    )
    leader = spawn([sys.executable, "-c", program], start_new_session=True)
    wait_for("the group to start", lambda: ready.is_file() and ready.read_text(), 60)
    member = psutil.Process(int(ready.read_text()))
    stop_group(leader.pid, grace_seconds=0.5)
    assert not psutil.pid_exists(leader.pid) or psutil.Process(leader.pid).status() == psutil.STATUS_ZOMBIE
    member.wait(10)  # SIGKILLed with the group (psutil.TimeoutExpired if it survived)


def test_spawned_children_die_with_their_parent_process(tmp_path: Path) -> None:
    """A process that spawn()s a sleeper is SIGKILLed: the sleeper dies too."""
    pid_file = tmp_path / "pid"
    program = (
        "import sys, time\n"
        "from bloomz_sandbox.node.processes import spawn\n"
        "child = spawn([sys.executable, '-c', 'import time; time.sleep(300)'], start_new_session=True)\n"
        f"open({str(pid_file)!r}, 'w').write(str(child.pid))\n"
        "time.sleep(300)\n"
    )
    parent = subprocess.Popen([sys.executable, "-c", program])
    try:
        wait_for("the sleeper", lambda: pid_file.is_file() and pid_file.read_text(), 60)
        sleeper = psutil.Process(int(pid_file.read_text()))
        parent.kill()
        parent.wait(30)
        wait_for(
            "the sleeper to die with it",
            lambda: not sleeper.is_running() or sleeper.status() == psutil.STATUS_ZOMBIE,
            30,
        )
    finally:
        if parent.poll() is None:
            parent.kill()
            parent.wait(10)
