"""`python -m bloomz_runtime.download --model M [--revision R]`: fetch a Hub checkpoint into the cache.

The entry point of the operator's model-download Job: the same files the runtime would fetch
(backends.loading.download_patterns) into huggingface_hub's cache (`HF_HOME`, on the cache PVC), so
runtime pods then start with `HF_HUB_OFFLINE=1`. It reports on stdout, one JSON object per line:
`{"event": "progress", "bytesDone": N, "bytesTotal": T}` every `--progress-interval` seconds, then
`{"event": "done", ...}` or `{"event": "failed", "reason": R, "status": S, "message": M}`. The Job's
container uses `terminationMessagePolicy: FallbackToLogsOnError`, so on failure that last line is the
pod's termination message, where the operator reads the reason.
Exit codes: 0 done; 2 a failure that a retry cannot fix (401/403 gated or private, 404 unknown repository
or revision, disk full: the Job fails at once); 1 anything else (network: the Job retries).
"""

from __future__ import annotations

import argparse
import errno
import json
import sys
import threading
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TextIO

from bloomz_runtime.backends.loading import download_patterns

EXIT_RETRY, EXIT_PERMANENT = 1, 2


@dataclass(frozen=True)
class Failure:
    reason: str  # RepoNotFound, RevisionNotFound, GatedRepo, Forbidden, DiskFull, HubError, HubUnreachable
    status: int | None  # the Hub's HTTP status, when it answered
    message: str
    permanent: bool

    def as_event(self) -> dict[str, Any]:
        return {"event": "failed", "reason": self.reason, "status": self.status, "message": self.message}


def _first_line(error: BaseException) -> str:
    text = str(error).strip() or type(error).__name__
    return " ".join(part.strip() for part in text.splitlines() if part.strip())[:400]


def failure_of(error: BaseException) -> Failure:
    """What went wrong, in the words a ModelCached condition shows (the most specific error first)."""
    from huggingface_hub.errors import (
        GatedRepoError,
        HfHubHTTPError,
        RepositoryNotFoundError,
        RevisionNotFoundError,
    )

    cause: BaseException | None = error
    while cause is not None:  # ENOSPC may arrive wrapped
        if isinstance(cause, OSError) and cause.errno == errno.ENOSPC:
            return Failure("DiskFull", None, f"no space left on the cache volume: {_first_line(cause)}", True)
        cause = cause.__cause__ or cause.__context__
    status = None
    if isinstance(error, HfHubHTTPError) and error.response is not None:
        status = error.response.status_code
    message = _first_line(error)
    # GatedRepoError and RevisionNotFoundError subclass RepositoryNotFoundError: test them first.
    if isinstance(error, GatedRepoError):
        return Failure("GatedRepo", status, message, True)
    if isinstance(error, RevisionNotFoundError):
        return Failure("RevisionNotFound", status, message, True)
    if isinstance(error, RepositoryNotFoundError):
        return Failure("RepoNotFound", status, message, True)
    if status in (401, 403):
        return Failure("Forbidden", status, message, True)
    if status is not None:
        return Failure("HubError", status, message, status == 404)
    return Failure("HubUnreachable", None, message, False)


def repo_cache_dir(cache_dir: Path, model: str) -> Path:
    """huggingface_hub's folder for a model repository inside its cache."""
    return cache_dir / f"models--{model.replace('/', '--')}"


def bytes_on_disk(blobs: Path) -> int:
    """Bytes of the repository's blobs, finished and in progress (`*.incomplete`)."""
    if not blobs.is_dir():
        return 0
    return sum(p.stat().st_size for p in blobs.iterdir() if p.is_file())


def wanted_files(tree: Iterable[Any]) -> dict[str, int]:
    """Path -> size of the files the download fetches (the runtime's patterns) from a repository tree."""
    from huggingface_hub.utils import filter_repo_objects

    files = {item.path: int(item.size or 0) for item in tree if getattr(item, "size", None) is not None}
    chosen = filter_repo_objects(list(files), allow_patterns=download_patterns(files))
    return {path: files[path] for path in chosen}


def progress_event(done: int, total: int, files: int) -> dict[str, Any]:
    return {"event": "progress", "bytesDone": min(done, total), "bytesTotal": total, "files": files}


def _emit(out: TextIO, event: dict[str, Any]) -> None:
    out.write(json.dumps(event, separators=(",", ":")) + "\n")
    out.flush()


def download(
    model: str,
    revision: str | None,
    cache_dir: Path,
    *,
    out: TextIO,
    interval: float = 2.0,
    list_tree: Callable[..., Iterable[Any]] | None = None,
) -> dict[str, Any]:
    """Fetch the checkpoint, reporting progress on `out`; the final "done" event (raises on failure)."""
    import huggingface_hub

    api = huggingface_hub.HfApi()
    tree = (list_tree or api.list_repo_tree)(model, revision=revision, recursive=True)
    files = wanted_files(tree)
    total = sum(files.values())
    blobs = repo_cache_dir(cache_dir, model) / "blobs"
    stop = threading.Event()

    def report() -> None:
        while not stop.wait(interval):
            _emit(out, progress_event(bytes_on_disk(blobs), total, len(files)))

    _emit(out, progress_event(bytes_on_disk(blobs), total, len(files)))
    reporter = threading.Thread(target=report, name="download-progress", daemon=True)
    reporter.start()
    try:
        snapshot = huggingface_hub.snapshot_download(
            model, revision=revision, cache_dir=str(cache_dir), allow_patterns=list(files) or None
        )
    finally:
        stop.set()
        reporter.join(timeout=interval + 1)
    done = {
        "event": "done",
        "bytesDone": total,
        "bytesTotal": total,
        "files": len(files),
        "commit": Path(snapshot).name,
    }
    _emit(out, done)
    return done


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        prog="python -m bloomz_runtime.download", description=__doc__.split("\n")[0]
    )
    parser.add_argument("--model", required=True, help="Hub repository id, e.g. bigscience/bloomz-7b1")
    parser.add_argument("--revision", default=None, help="branch, tag or commit (default: the main branch)")
    parser.add_argument("--cache-dir", default=None, help="huggingface_hub cache (default: $HF_HOME/hub)")
    parser.add_argument("--progress-interval", type=float, default=2.0, help="seconds between progress lines")
    return parser.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    from huggingface_hub import constants

    cache_dir = Path(args.cache_dir or constants.HF_HUB_CACHE)
    try:
        download(args.model, args.revision, cache_dir, out=sys.stdout, interval=args.progress_interval)
    except Exception as error:  # every failure ends as one line the operator can read
        failure = failure_of(error)
        _emit(sys.stdout, failure.as_event())
        return EXIT_PERMANENT if failure.permanent else EXIT_RETRY
    return 0


if __name__ == "__main__":
    sys.exit(main())
