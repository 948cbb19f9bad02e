"""A stand-in for the Hugging Face Hub (the network only): `list_repo_files` and the downloading
`snapshot_download` read repositories under `root/<revision>/` and write huggingface_hub's real cache
layout; cache reads (`local_files_only=True`) are huggingface_hub's own. Used by test_model_download.py
and by download_rank.py (ranks under mpirun)."""

from __future__ import annotations

import fnmatch
import shutil
import time
from pathlib import Path
from typing import Any

import huggingface_hub

COMMIT = "0123456789abcdef0123456789abcdef01234567"
REAL_SNAPSHOT_DOWNLOAD = huggingface_hub.snapshot_download


class FakeHub:
    def __init__(self, root: Path, cache: Path, download_s: float = 0.0) -> None:
        self.root, self.cache = root, cache
        # How long a download takes: a rank that did not wait for it finds no snapshot in the cache.
        self.download_s = download_s
        self.calls: list[tuple[Any, ...]] = []

    def install(self) -> None:
        """Replace the Hub functions in huggingface_hub (for a process of its own; tests use monkeypatch)."""
        huggingface_hub.list_repo_files = self.list_repo_files  # type: ignore[assignment]
        huggingface_hub.snapshot_download = self.snapshot_download  # type: ignore[assignment]
        huggingface_hub.constants.HF_HUB_OFFLINE = False

    def list_repo_files(self, repo_id: str, *, revision: str | None = None, **_: Any) -> list[str]:
        self.calls.append(("list", repo_id, revision))
        repo = self.root / str(revision)
        return sorted(str(p.relative_to(repo)) for p in repo.rglob("*"))

    def snapshot_download(self, repo_id: str, **kw: Any) -> str:
        if kw.get("local_files_only"):
            self.calls.append(("cache", repo_id, kw.get("revision")))
            return str(REAL_SNAPSHOT_DOWNLOAD(repo_id, **kw))
        revision, patterns = kw["revision"], kw["allow_patterns"]
        self.calls.append(("download", repo_id, revision, tuple(patterns)))
        time.sleep(self.download_s)
        repo_cache = Path(kw.get("cache_dir") or self.cache) / f"models--{repo_id.replace('/', '--')}"
        snapshot = repo_cache / "snapshots" / COMMIT
        for source in (self.root / revision).rglob("*"):
            if source.is_file() and any(fnmatch.fnmatch(source.name, p) for p in patterns):
                snapshot.mkdir(parents=True, exist_ok=True)
                shutil.copy(source, snapshot / source.name)
        (repo_cache / "refs").mkdir(parents=True, exist_ok=True)
        (repo_cache / "refs" / revision).write_text(COMMIT)
        return str(snapshot)
