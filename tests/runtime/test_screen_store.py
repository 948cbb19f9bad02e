"""The stored int8 lm_head screen: a restart loads it instead of building it, a changed checkpoint
or lm_head never gets a stale one, and a first start builds it in the background (the float32 head
serving meanwhile) and stores it next to the checkpoint."""

from __future__ import annotations

import os
import shutil
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F
from bloomz_api.options import ServeOptions
from bloomz_runtime.backends.bloom import BloomRunner
from bloomz_runtime.backends.cpu import CpuBackend
from bloomz_runtime.backends.greedy_head import ScreenedGreedyHead, can_screen
from bloomz_runtime.backends.loading import checkpoint_files
from bloomz_runtime.backends.screen_store import (
    STORE_DIR_NAME,
    ScreenSource,
    build_parts,
    file_identity,
    load_parts,
    save_parts,
    screen_key,
    store_dirs,
)
from bloomz_runtime.dist import DistContext

pytestmark = pytest.mark.skipif(not can_screen(), reason="needs oneDNN's int8 ops")


def weight(vocab: int = 3000, hidden: int = 64, seed: int = 0) -> torch.Tensor:
    return torch.randn(vocab, hidden, generator=torch.Generator().manual_seed(seed)) * 0.05


def test_stored_parts_round_trip_and_give_the_exact_argmax(tmp_path: Path) -> None:
    w = weight()
    parts = build_parts(w)
    assert save_parts(parts, w, [tmp_path], "k") == tmp_path / "k.pt"
    loaded = load_parts(w, [tmp_path], "k")
    assert loaded is not None
    assert torch.equal(loaded.int8, parts.int8) and torch.equal(loaded.scales, parts.scales)
    assert loaded.norms == parts.norms
    head = ScreenedGreedyHead(w, parts=loaded)
    hidden = torch.randn(3, 64, generator=torch.Generator().manual_seed(1))
    assert torch.equal(head.argmax(hidden), torch.argmax(F.linear(hidden, w), dim=1))
    assert not list(tmp_path.glob(".*partial"))


def test_a_screen_stored_for_other_weights_is_ignored(tmp_path: Path) -> None:
    w = weight()
    save_parts(build_parts(w), w, [tmp_path], "k")
    changed = w.clone()
    changed[0, 0] += 1.0  # row 0 is one of the rows checked on load
    assert load_parts(changed, [tmp_path], "k") is None
    assert load_parts(weight(vocab=2000), [tmp_path], "k") is None  # another shape
    assert load_parts(w, [tmp_path], "other-key") is None
    (tmp_path / "broken.pt").write_bytes(b"not a torch file")
    assert load_parts(w, [tmp_path], "broken") is None


def test_an_unwritable_directory_falls_through_to_the_next(tmp_path: Path) -> None:
    w = weight(vocab=500)
    blocked = tmp_path / "blocked"
    blocked.write_text("a file, so no directory can be made here")
    target = save_parts(build_parts(w), w, [blocked / "sub", tmp_path / "cache"], "k")
    assert target == tmp_path / "cache" / "k.pt"
    assert load_parts(w, [blocked / "sub", tmp_path / "cache"], "k") is not None
    assert save_parts(build_parts(w), w, [blocked / "sub"], "k") is None


def test_the_key_follows_the_weight_files_and_the_shape(tmp_path: Path) -> None:
    file = tmp_path / "model.safetensors"
    file.write_bytes(b"x" * 10)
    before = screen_key([file_identity(file)], (10, 4))
    assert screen_key([file_identity(file)], (10, 4)) == before
    assert screen_key([file_identity(file)], (10, 8)) != before
    file.write_bytes(b"x" * 11)
    assert screen_key([file_identity(file)], (10, 4)) != before
    # A Hub snapshot file is a symlink to a blob named by its content's sha256.
    blob = tmp_path / "blobs" / "0123abcd"
    blob.parent.mkdir()
    blob.write_bytes(b"y")
    (tmp_path / "snap").mkdir()
    (tmp_path / "snap" / "model.safetensors").symlink_to(blob)
    assert file_identity(tmp_path / "snap" / "model.safetensors").endswith(":0123abcd")


def test_store_dirs_prefer_the_checkpoint_then_the_user_cache(tmp_path: Path) -> None:
    dirs = store_dirs(tmp_path / "ckpt", {"HOME": "/home/u"})
    assert dirs == [tmp_path / "ckpt" / STORE_DIR_NAME, Path("/home/u/.cache/bloomz-operator/screens")]
    assert store_dirs(tmp_path, {"XDG_CACHE_HOME": "/x"})[1] == Path("/x/bloomz-operator/screens")


def test_the_stored_screen_is_not_a_weight_file_of_the_checkpoint(tmp_path: Path) -> None:
    (tmp_path / "model.pt").write_bytes(b"w")
    (tmp_path / STORE_DIR_NAME).mkdir()
    (tmp_path / STORE_DIR_NAME / "abc.pt").write_bytes(b"s")
    assert [Path(f).name for f in checkpoint_files(tmp_path)] == ["model.pt"]


def test_a_background_build_hands_over_the_head_and_stores_it(tmp_path: Path) -> None:
    w = weight(vocab=800)
    (tmp_path / "model.safetensors").write_bytes(b"w")
    source = ScreenSource(w, [tmp_path / "model.safetensors"], tmp_path)
    assert source.stored() is None
    heads: list[ScreenedGreedyHead] = []
    source.build_in_background(heads.append).join(timeout=120)
    assert len(heads) == 1
    again = ScreenSource(w, [tmp_path / "model.safetensors"], tmp_path).stored()
    assert again is not None and torch.equal(again.scales, heads[0].scales)


def test_the_cpu_backend_builds_the_screen_once_then_loads_it(tiny_checkpoint: Path, tmp_path: Path) -> None:
    checkpoint = tmp_path / "checkpoint"
    shutil.copytree(tiny_checkpoint, checkpoint, ignore=shutil.ignore_patterns(STORE_DIR_NAME))
    opts = ServeOptions(model=str(checkpoint), device="cpu", screened_greedy=True)
    first = CpuBackend().load(opts, DistContext(0, 1, 0))
    assert isinstance(first, BloomRunner) and first.screen_builder is not None
    first.screen_builder.join(timeout=120)
    assert first.greedy_head is not None and first.greedy_head_name == "int8-screened"
    assert len(list((checkpoint / STORE_DIR_NAME).glob("*.pt"))) == 1
    second = CpuBackend().load(opts, DistContext(0, 1, 0))
    assert isinstance(second, BloomRunner)
    assert second.screen_builder is None and second.greedy_head is not None
    assert torch.equal(second.greedy_head.scales, first.greedy_head.scales)
    # A rewritten checkpoint (new modification time) is screened afresh.
    weights = next(checkpoint.glob("*.safetensors"))
    stat = weights.stat()
    os.utime(weights, ns=(stat.st_atime_ns, stat.st_mtime_ns + 1_000_000_000))
    third = CpuBackend().load(opts, DistContext(0, 1, 0))
    assert isinstance(third, BloomRunner) and third.screen_builder is not None
    third.screen_builder.join(timeout=120)
