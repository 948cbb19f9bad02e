"""The download Job's entry point against the sandbox's local hub (real HTTP, real huggingface_hub):
progress and done lines, the snapshot then found offline, and each failure's reason and exit code."""

from __future__ import annotations

import errno
import json
import os
import shutil
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
from bloomz_runtime.download import EXIT_PERMANENT, Failure, failure_of, progress_event, wanted_files
from bloomz_sandbox.hub import GATED_MARKER, LocalHub

REPO_ID = "bigscience/bloomz-tiny"


@pytest.fixture(scope="module")
def hub(tmp_path_factory: pytest.TempPathFactory, tiny_checkpoint: Path) -> Any:
    root = tmp_path_factory.mktemp("hub")
    shutil.copytree(tiny_checkpoint, root / REPO_ID)
    shutil.copytree(tiny_checkpoint, root / "gated" / "model")
    (root / "gated" / "model" / GATED_MARKER).write_text("")
    with LocalHub(root) as running:
        yield running


def run_download(hub: LocalHub, home: Path, *args: str) -> tuple[int, list[dict[str, Any]]]:
    env = {**os.environ, "HF_ENDPOINT": hub.endpoint, "HF_HOME": str(home), "HF_HUB_DISABLE_TELEMETRY": "1"}
    env.pop("HF_HUB_OFFLINE", None)
    done = subprocess.run(
        [sys.executable, "-m", "bloomz_runtime.download", *args, "--progress-interval", "0.2"],
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
    )
    lines = [json.loads(line) for line in done.stdout.splitlines() if line.startswith("{")]
    return done.returncode, lines


def test_download_reports_bytes_and_the_snapshot_loads_offline(hub: LocalHub, tmp_path: Path) -> None:
    code, lines = run_download(hub, tmp_path, "--model", REPO_ID, "--revision", "main")
    assert code == 0, lines
    first, last = lines[0], lines[-1]
    assert first["event"] == "progress" and first["bytesDone"] == 0
    size = sum(p.stat().st_size for p in (hub.root / REPO_ID).iterdir() if p.is_file())
    assert last["event"] == "done" and last["bytesDone"] == last["bytesTotal"] == size
    # What the runtime does with HF_HUB_OFFLINE=1: the cache alone resolves the revision.
    check = (
        "from bloomz_runtime.backends.loading import resolve_model_dir; "
        f"print(resolve_model_dir({REPO_ID!r}, 'main'))"
    )
    env = {**os.environ, "HF_HOME": str(tmp_path), "HF_HUB_OFFLINE": "1", "HF_ENDPOINT": "http://127.0.0.1:9"}
    found = subprocess.run(
        [sys.executable, "-c", check], env=env, capture_output=True, text=True, timeout=120
    )
    assert found.returncode == 0, found.stderr
    assert Path(found.stdout.strip(), "config.json").is_file()
    # A second run fetches nothing again (the Job of another resource on the same volume).
    before = len(hub.requests)
    code, lines = run_download(hub, tmp_path, "--model", REPO_ID)
    assert code == 0 and lines[-1]["event"] == "done"
    assert not [r for r in hub.requests[before:] if r[0] == "GET" and "/resolve/" in r[1]]


@pytest.mark.parametrize(
    ("model", "revision", "reason", "status"),
    [
        ("nobody/missing", "main", "RepoNotFound", 404),
        (REPO_ID, "v9", "RevisionNotFound", 404),
        ("gated/model", "main", "GatedRepo", 401),
    ],
)
def test_a_hub_refusal_is_named_and_permanent(
    hub: LocalHub, tmp_path: Path, model: str, revision: str, reason: str, status: int
) -> None:
    code, lines = run_download(hub, tmp_path, "--model", model, "--revision", revision)
    assert code == EXIT_PERMANENT
    assert lines[-1]["event"] == "failed"
    assert (lines[-1]["reason"], lines[-1]["status"]) == (reason, status)


def test_an_unreachable_hub_is_retried(tmp_path: Path) -> None:
    closed = LocalHub(tmp_path)  # never started: its port refuses connections
    closed.stop()
    code, lines = run_download(closed, tmp_path, "--model", REPO_ID)
    assert code == 1 and lines[-1]["reason"] == "HubUnreachable"


def test_disk_full_is_found_behind_a_wrapping_error() -> None:
    try:
        try:
            raise OSError(errno.ENOSPC, "No space left on device")
        except OSError as inner:
            raise RuntimeError("download failed") from inner
    except RuntimeError as error:
        failure = failure_of(error)
    assert failure == Failure("DiskFull", None, failure.message, True)
    assert "No space left" in failure.message


def test_progress_is_capped_at_the_total_and_only_wanted_files_count() -> None:
    class Item:
        def __init__(self, path: str, size: int) -> None:
            self.path, self.size = path, size

    tree = [Item("config.json", 10), Item("model.safetensors", 100), Item("model.bin", 90), Item("a.png", 5)]
    assert wanted_files(tree) == {"config.json": 10, "model.safetensors": 100}
    assert progress_event(150, 110, 2) == {
        "event": "progress",
        "bytesDone": 110,
        "bytesTotal": 110,
        "files": 2,
    }


def test_a_cache_seeded_elsewhere_and_copied_in_is_completed_without_refetching(
    hub: LocalHub, tmp_path: Path
) -> None:
    """The pre-seeding path of docs/operations.md: fill a cache on another machine, copy it with tar (the
    snapshot's symbolic links kept), and the Job fetches only what the copy lacks."""
    seed = tmp_path / "seed"
    code, lines = run_download(hub, seed / "huggingface", "--model", REPO_ID, "--revision", "main")
    assert code == 0, lines
    commit = lines[-1]["commit"]
    volumes = [tmp_path / "full", tmp_path / "partial"]
    for volume in volumes:
        volume.mkdir()
        packed = subprocess.run(
            ["tar", "-C", str(seed), "-cf", "-", "huggingface"], capture_output=True, check=True
        )
        subprocess.run(["tar", "-C", str(volume), "-xf", "-"], input=packed.stdout, check=True)
    snapshot = (
        volumes[1] / "huggingface" / "hub" / f"models--{REPO_ID.replace('/', '--')}" / "snapshots" / commit
    )
    links = sorted(p for p in snapshot.rglob("*") if p.is_symlink())
    assert links, "the copy kept no symbolic link"
    missing = links[-1]
    missing.resolve().unlink()  # a seed that was cut short: one blob and its link absent
    missing.unlink()
    fetched: dict[Path, list[str]] = {}
    for volume in volumes:
        before = len(hub.requests)
        code, lines = run_download(hub, volume / "huggingface", "--model", REPO_ID, "--revision", commit)
        assert code == 0 and lines[-1]["event"] == "done", lines
        fetched[volume] = [r[1] for r in hub.requests[before:] if r[0] == "GET" and "/resolve/" in r[1]]
    assert fetched[volumes[0]] == []
    assert len(fetched[volumes[1]]) == 1 and fetched[volumes[1]][0].endswith(
        missing.relative_to(snapshot).as_posix()
    )
    assert missing.is_file()
