"""The lock around DeepSpeed's shared-memory op: a baton left by a killed build is removed, a live
holder of ours is waited for, and the path is torch's; then a real load and a real 2-rank start past
a planted stale baton."""

from __future__ import annotations

import logging
import os
import shutil
import signal
import subprocess
import sys
import threading
from pathlib import Path

import pytest
from bloomz_runtime import shm_op
from helpers import runtime_env, start_runtime, stop_runtime, wait_for, wait_for_serving

# A process of ours that holds the lock, plants a baton as a build in progress does, and says so.
HOLDER = """
import sys
from pathlib import Path
from bloomz_runtime.shm_op import build_lock, BATON
directory = Path(sys.argv[1])
with build_lock(directory):
    (directory / BATON).touch()
    print("held", flush=True)
    sys.stdin.readline()
    (directory / BATON).unlink()
    (directory / "released").touch()
"""


def start_holder(directory: Path) -> subprocess.Popen[str]:
    holder = subprocess.Popen(
        [sys.executable, "-c", HOLDER, str(directory)],
        env=runtime_env(None),
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        text=True,
    )
    assert holder.stdout is not None and holder.stdout.readline() == "held\n"
    return holder


def blocked_waiters(lock_file: Path) -> int:
    """Waiters blocked on `lock_file` in /proc/locks (their lines carry "->")."""
    inode = f":{os.stat(lock_file).st_ino} "
    return sum(1 for line in Path("/proc/locks").read_text().splitlines() if "->" in line and inode in line)


def test_a_planted_stale_baton_is_removed_and_named(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    baton = tmp_path / shm_op.BATON
    baton.touch()
    with caplog.at_level(logging.WARNING, logger="bloomz_runtime.shm_op"), shm_op.build_lock(tmp_path):
        assert not baton.exists()
    assert [r.getMessage() for r in caplog.records] == [
        f"removed stale JIT build lock {baton} (left by a build that was killed)"
    ]


def test_no_baton_no_message(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    with (
        caplog.at_level(logging.WARNING, logger="bloomz_runtime.shm_op"),
        shm_op.build_lock(tmp_path / "new"),
    ):
        assert (tmp_path / "new" / shm_op.OUR_LOCK).exists()
    assert caplog.records == []
    assert not shm_op.remove_stale_baton(tmp_path)


def test_a_live_holder_is_waited_for_and_its_baton_left_alone(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    holder = start_holder(tmp_path)
    seen: list[bool] = []

    def enter() -> None:
        with shm_op.build_lock(tmp_path):
            seen.append((tmp_path / "released").exists())

    try:
        with caplog.at_level(logging.WARNING, logger="bloomz_runtime.shm_op"):
            waiter = threading.Thread(target=enter)
            waiter.start()
            wait_for(
                "the waiter blocked on the holder's lock", lambda: blocked_waiters(tmp_path / shm_op.OUR_LOCK)
            )
            assert seen == [] and (tmp_path / shm_op.BATON).exists()
            assert holder.stdin is not None
            holder.stdin.write("go\n")
            holder.stdin.flush()
            waiter.join(timeout=60)
        assert seen == [True]  # entered only after the holder had finished and let go
        assert caplog.records == []  # the live build's baton was never taken for a stale one
        assert holder.wait(timeout=30) == 0
    finally:
        holder.kill()
        holder.wait()


def test_a_killed_holder_releases_the_lock_and_its_baton_is_removed(tmp_path: Path) -> None:
    holder = start_holder(tmp_path)
    holder.send_signal(signal.SIGKILL)  # killed mid-"build": the kernel drops its lock, its baton stays
    holder.wait()
    assert (tmp_path / shm_op.BATON).exists()
    with shm_op.build_lock(tmp_path):
        assert not (tmp_path / shm_op.BATON).exists()


def test_the_build_directory_is_torchs(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    builder = shm_op.op_builder()
    assert builder is not None and builder.NAME == "deepspeed_shm_comm"
    monkeypatch.setenv("TORCH_EXTENSIONS_DIR", str(tmp_path))
    assert shm_op.build_directory(builder.NAME) == tmp_path / "deepspeed_shm_comm"
    monkeypatch.delenv("TORCH_EXTENSIONS_DIR")
    monkeypatch.setenv("HOME", str(tmp_path))
    monkeypatch.delenv("XDG_CACHE_HOME", raising=False)
    version = f"py{sys.version_info.major}{sys.version_info.minor}"
    assert (
        shm_op.build_directory("some_op") == tmp_path / ".cache/torch_extensions" / f"{version}_cpu/some_op"
    )


def built_copy(tmp_path: Path) -> Path:
    """A private TORCH_EXTENSIONS_DIR holding a copy of this machine's build (mtimes kept, so ninja
    finds it up to date; built from scratch if there is none), with a stale baton planted in it."""
    builder = shm_op.op_builder()
    assert builder is not None
    root = tmp_path / "torch_extensions"
    shutil.copytree(
        shm_op.build_directory(builder.NAME), root / builder.NAME, ignore=shutil.ignore_patterns("lock")
    )
    (root / builder.NAME / shm_op.BATON).touch()
    return root


@pytest.mark.slow
def test_the_op_loads_past_a_stale_baton(tmp_path: Path) -> None:
    root = built_copy(tmp_path)
    code = "from bloomz_runtime.shm_op import load_shm_op; print(load_shm_op())"
    done = subprocess.run(
        [sys.executable, "-c", code],
        env=runtime_env({"TORCH_EXTENSIONS_DIR": str(root)}),
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert done.returncode == 0, done.stderr
    assert done.stdout.splitlines()[-1] == str(root / "deepspeed_shm_comm")
    assert f"removed stale JIT build lock {root / 'deepspeed_shm_comm' / 'lock'}" in done.stderr
    assert not (root / "deepspeed_shm_comm" / shm_op.BATON).exists()


@pytest.mark.slow
def test_two_ranks_reach_serving_past_a_stale_baton(tiny_checkpoint: Path, tmp_path: Path) -> None:
    root = built_copy(tmp_path)
    rt = start_runtime(tiny_checkpoint, world_size=2, env={"TORCH_EXTENSIONS_DIR": str(root)})
    try:
        wait_for_serving(rt.target, 300, rt.process)
        assert "removed stale JIT build lock" in rt.log()
    finally:
        stop_runtime(rt)
