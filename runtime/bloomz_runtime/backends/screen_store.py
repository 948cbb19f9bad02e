"""The int8 screen of a float32 lm_head, kept on disk so a restart does not build it again.

Building the screen (quantizing a [250880, hidden] matrix and the row norms its error bound needs,
greedy_head.py) costs several seconds of a CPU start-up, as much as loading the rest of the model.
The built parts are stored next to the checkpoint (or in the user's cache directory when the
checkpoint's directory is read-only) under a key made of the checkpoint's weight files (name,
size, modification time, and the blob name of a Hub snapshot file, which is its content's sha256)
and the matrix's shape. A stored screen is also checked against sampled rows of the matrix when
it is loaded: a stale one would void the screen's error bound, and so the exactness of greedy ids.

Without a stored screen, the CPU backend builds it in a background thread after loading (greedy
steps use the float32 head until it is ready) and stores it for the next start.
"""

from __future__ import annotations

import contextlib
import hashlib
import logging
import os
import threading
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

import torch

from bloomz_runtime.backends.greedy_head import ScreenedGreedyHead, WeightNorms, quantize_weight

log = logging.getLogger(__name__)

FORMAT = 1  # bump when the stored parts or their meaning change
STORE_DIR_NAME = ".bloomz-screen"
# Rows of the float32 matrix stored with the screen and compared exactly on load.
CHECK_ROWS = 64


@dataclass(frozen=True)
class ScreenParts:
    """What ``ScreenedGreedyHead`` builds from a matrix, before oneDNN's prepacking."""

    int8: torch.Tensor
    scales: torch.Tensor
    norms: WeightNorms


def build_parts(weight: torch.Tensor) -> ScreenParts:
    with torch.no_grad():
        int8, scales, norms = quantize_weight(weight)
    return ScreenParts(int8, scales, norms)


def file_identity(path: Path) -> str:
    """name, size and modification time; a symlinked Hub snapshot file adds its blob's name."""
    stat = path.stat()
    resolved = path.resolve()
    blob = resolved.name if resolved.name != path.name else ""
    return f"{path.name}:{stat.st_size}:{stat.st_mtime_ns}:{blob}"


def screen_key(identities: Sequence[str], shape: Sequence[int]) -> str:
    """Stable name of the screen of a matrix of ``shape`` in the checkpoint whose files are these."""
    text = "\n".join([f"format={FORMAT}", f"shape={list(shape)}", *sorted(identities)])
    return hashlib.sha256(text.encode()).hexdigest()[:32]


def store_dirs(model_dir: Path, environ: Mapping[str, str] = os.environ) -> list[Path]:
    """Where a screen may be kept, most preferred first: beside the checkpoint, then the user's cache."""
    cache_home = environ.get("XDG_CACHE_HOME") or str(Path(environ.get("HOME", "/tmp")) / ".cache")
    return [model_dir / STORE_DIR_NAME, Path(cache_home) / "bloomz-operator" / "screens"]


def check_indices(vocab: int) -> torch.Tensor:
    return torch.linspace(0, vocab - 1, min(CHECK_ROWS, vocab)).long()


def save_parts(parts: ScreenParts, weight: torch.Tensor, dirs: Sequence[Path], key: str) -> Path | None:
    """Write the parts to the first directory that takes them (atomically); None if none does."""
    rows = check_indices(weight.shape[0])
    payload = {
        "format": FORMAT,
        "int8": parts.int8,
        "scales": parts.scales,
        "norms": [parts.norms.quantized, parts.norms.error, parts.norms.original],
        "check_rows": rows,
        "check_values": weight.index_select(0, rows).clone(),
    }
    for directory in dirs:
        target = directory / f"{key}.pt"
        partial = directory / f".{key}.{os.getpid()}.partial"
        try:
            directory.mkdir(parents=True, exist_ok=True)
            torch.save(payload, partial)
            os.replace(partial, target)
            return target
        except (OSError, RuntimeError) as error:  # torch.save reports some I/O errors as RuntimeError
            log.debug("cannot store the lm_head screen in %s: %s", directory, error)
            with contextlib.suppress(OSError):
                partial.unlink(missing_ok=True)
    return None


def load_parts(weight: torch.Tensor, dirs: Sequence[Path], key: str) -> ScreenParts | None:
    """The stored parts for ``weight`` if a directory holds them and they match it, else None."""
    for directory in dirs:
        path = directory / f"{key}.pt"
        if not path.is_file():
            continue
        try:
            payload = torch.load(path, weights_only=True, mmap=True)
        except (OSError, RuntimeError, ValueError) as failure:
            log.warning("ignoring the unreadable stored lm_head screen %s: %s", path, failure)
            continue
        if not _matches(payload, weight):
            log.warning("ignoring the stored lm_head screen %s: it does not match the lm_head", path)
            continue
        quantized, error, original = (float(v) for v in payload["norms"])
        # The scales are read on every step: a copy in memory, not pages of the file.
        return ScreenParts(
            payload["int8"], payload["scales"].clone(), WeightNorms(quantized, error, original)
        )
    return None


def _matches(payload: Mapping[str, object], weight: torch.Tensor) -> bool:
    int8, scales = payload.get("int8"), payload.get("scales")
    rows, values = payload.get("check_rows"), payload.get("check_values")
    if payload.get("format") != FORMAT or not all(
        isinstance(t, torch.Tensor) for t in (int8, scales, rows, values)
    ):
        return False
    assert isinstance(int8, torch.Tensor) and isinstance(scales, torch.Tensor)
    assert isinstance(rows, torch.Tensor) and isinstance(values, torch.Tensor)
    return (
        int8.dtype == torch.int8
        and tuple(int8.shape) == tuple(weight.shape)
        and tuple(scales.shape) == (weight.shape[0],)
        and torch.equal(rows, check_indices(weight.shape[0]))
        and torch.equal(weight.index_select(0, rows), values)
    )


class ScreenSource:
    """The screen of one lm_head: loaded from the store now, or built and stored in the background."""

    def __init__(self, weight: torch.Tensor, weight_files: Sequence[str | Path], model_dir: Path) -> None:
        self.weight = weight
        self.dirs = store_dirs(model_dir)
        self.key = screen_key([file_identity(Path(f)) for f in weight_files], tuple(weight.shape))
        self.thread: threading.Thread | None = None

    def stored(self) -> ScreenedGreedyHead | None:
        parts = load_parts(self.weight, self.dirs, self.key)
        return None if parts is None else ScreenedGreedyHead(self.weight, parts=parts)

    def build_in_background(self, ready: Callable[[ScreenedGreedyHead], None]) -> threading.Thread:
        """Build, hand to ``ready`` and store, in a daemon thread at a lower CPU priority (start-up
        and serving steps come first; a process that exits meanwhile just has no stored screen)."""

        def run() -> None:
            _lower_this_threads_priority()
            try:
                parts = build_parts(self.weight)
                ready(ScreenedGreedyHead(self.weight, parts=parts))
                stored = save_parts(parts, self.weight, self.dirs, self.key)
                log.info(
                    "int8 lm_head screen ready%s", f", stored in {stored}" if stored else " (not stored)"
                )
            except Exception:  # the float32 head stays in use: slower, still exact
                log.exception("building the int8 lm_head screen failed; greedy steps keep the float32 head")

        self.thread = threading.Thread(target=run, name="lm-head-screen", daemon=True)
        self.thread.start()
        return self.thread


def _lower_this_threads_priority(increment: int = 10) -> None:
    """Linux nice values are per thread; the threads this one starts (its OpenMP team) inherit it."""
    try:
        tid = threading.get_native_id()
        os.setpriority(os.PRIO_PROCESS, tid, os.getpriority(os.PRIO_PROCESS, tid) + increment)
    except (AttributeError, OSError):
        pass
