"""Hub checkpoints: which files are fetched (safetensors, else *.bin), a pinned revision, one download per
node (local rank 0 fetches, the others wait and read the node's cache), and the CPU backend loading a
*.bin-only repository through the real code path.

The Hub itself is the only stand-in (fake_hub.FakeHub): every cache read is huggingface_hub's own. The
per-node barrier also runs for real: two ranks under mpirun over gloo (download_rank.py)."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import huggingface_hub
import pytest
import torch
from bloomz_runtime.backends.loading import download_patterns, resolve_model_dir, weight_patterns
from bloomz_runtime.dist import DistContext
from bloomz_runtime.mpijob import Binding, MpiJob, render
from fake_hub import FakeHub
from helpers import free_port

REPO = "bigscience/bloomz-tiny"


def test_safetensors_are_preferred() -> None:
    files = ["config.json", "model.safetensors", "pytorch_model.bin", "tokenizer.json"]
    assert weight_patterns(files) == ["*.safetensors"]


def test_bin_weights_where_a_repository_has_no_safetensors() -> None:
    files = ["config.json", "pytorch_model-00001-of-00002.bin", "training_args.bin", "tokenizer.json"]
    assert weight_patterns(files) == ["*.bin"]
    assert download_patterns(files) == ["*.json", "*.model", "*.txt", "tokenizer*", "*.bin"]


def test_a_repository_without_weights_is_refused() -> None:
    with pytest.raises(FileNotFoundError, match=r"no \*\.safetensors or \*\.bin"):
        weight_patterns(["config.json", "training_args.bin", "README.md"])


@pytest.fixture
def bin_only_hub(tiny_checkpoint: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> FakeHub:
    """The tiny checkpoint re-saved as pytorch_model.bin (no safetensors), at revision "v1"."""
    from transformers import AutoModelForCausalLM

    repo = tmp_path / "hub" / "v1"
    model = AutoModelForCausalLM.from_pretrained(tiny_checkpoint)
    model.save_pretrained(repo, safe_serialization=False)
    for name in tiny_checkpoint.iterdir():
        if name.name.startswith("tokenizer") or name.name == "special_tokens_map.json":
            shutil.copy(name, repo / name.name)
    (repo / "README.md").write_text("not fetched")
    hub = FakeHub(tmp_path / "hub", tmp_path / "cache")
    monkeypatch.setattr(huggingface_hub, "list_repo_files", hub.list_repo_files)
    monkeypatch.setattr(huggingface_hub, "snapshot_download", hub.snapshot_download)
    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_OFFLINE", False)
    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_CACHE", str(hub.cache))
    return hub


def test_one_download_per_node_at_the_pinned_revision(bin_only_hub: FakeHub) -> None:
    events: list[str] = []
    cache = str(bin_only_hub.cache)
    leader = resolve_model_dir(
        REPO, "v1", local_rank=0, node_barrier=lambda: events.append("barrier"), cache_dir=cache
    )
    assert [c[0] for c in bin_only_hub.calls] + events == ["list", "download", "barrier"]
    assert bin_only_hub.calls[1][2:] == ("v1", ("*.json", "*.model", "*.txt", "tokenizer*", "*.bin"))
    assert sorted(p.name for p in leader.iterdir()) == sorted(
        ["config.json", "generation_config.json", "pytorch_model.bin", "special_tokens_map.json"]
        + [p.name for p in (bin_only_hub.root / "v1").glob("tokenizer*")]
    )
    # Another rank of the node: waits first, then finds the same snapshot in the cache, asking no Hub.
    bin_only_hub.calls.clear()
    other = resolve_model_dir(
        REPO, "v1", local_rank=1, node_barrier=lambda: events.append("barrier"), cache_dir=cache
    )
    assert bin_only_hub.calls == [("cache", REPO, "v1")] and events == ["barrier", "barrier"]
    assert other == leader


def test_offline_every_rank_reads_the_cache(bin_only_hub: FakeHub, monkeypatch: pytest.MonkeyPatch) -> None:
    first = resolve_model_dir(REPO, "v1", cache_dir=str(bin_only_hub.cache))
    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_OFFLINE", True)
    bin_only_hub.calls.clear()
    assert resolve_model_dir(REPO, "v1", cache_dir=str(bin_only_hub.cache)) == first
    assert bin_only_hub.calls == [("cache", REPO, "v1")]


def test_a_local_directory_is_used_as_it_is(tiny_checkpoint: Path) -> None:
    assert resolve_model_dir(str(tiny_checkpoint), "v1") == tiny_checkpoint


def test_cpu_backend_serves_a_bin_only_repository(bin_only_hub: FakeHub, tiny_checkpoint: Path) -> None:
    from bloomz_api.options import ServeOptions
    from bloomz_runtime.backends.cpu import CpuBackend
    from transformers import AutoModelForCausalLM

    opts = ServeOptions(model=REPO, device="cpu", revision="v1", screened_greedy=False)
    runner = CpuBackend().load(opts, DistContext(rank=0, world_size=1, local_rank=0))
    assert bin_only_hub.calls[1][0] == "download" and bin_only_hub.calls[1][2] == "v1"
    reference = AutoModelForCausalLM.from_pretrained(tiny_checkpoint).state_dict()
    loaded = runner.model.state_dict()
    # The CPU backend repacks the linear layers; every tensor it keeps as it is holds the *.bin's values.
    kept = [name for name in loaded if name in reference and loaded[name].shape == reference[name].shape]
    assert "transformer.word_embeddings.weight" in kept and len(kept) >= 10
    assert all(torch.equal(loaded[name], reference[name]) for name in kept)


def test_two_ranks_under_mpirun_download_once(tmp_path: Path) -> None:
    # Rank 0's download takes a second: rank 1, reading the cache without waiting, would find nothing.
    repo = tmp_path / "hub" / "v1"
    repo.mkdir(parents=True)
    for name in ("config.json", "tokenizer.json", "model.safetensors", "pytorch_model.bin"):
        (repo / name).write_text(name)
    out = tmp_path / "out"
    out.mkdir()
    script = Path(__file__).with_name("download_rank.py")
    env = {**os.environ, "MASTER_ADDR": "127.0.0.1", "MASTER_PORT": str(free_port()), "OMP_NUM_THREADS": "1"}
    job = MpiJob(
        program=(sys.executable, str(script), str(tmp_path / "hub"), str(tmp_path / "cache"), str(out)),
        world_size=2,
        binding=Binding(oversubscribe=True),
        forwarded_env=("MASTER_ADDR", "MASTER_PORT", "OMP_NUM_THREADS", "PATH", "PYTHONPATH"),
        allow_run_as_root=os.geteuid() == 0,
    )
    done = subprocess.run(render(job), env=env, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stdout[-2000:] + done.stderr[-2000:]
    ranks = [json.loads((out / f"rank{rank}.json").read_text()) for rank in (0, 1)]
    assert [call[0] for call in ranks[0]["calls"]] == ["list", "download"]
    assert ranks[0]["calls"][1][3][-1] == "*.safetensors"  # safetensors preferred over the *.bin copy
    assert ranks[1]["calls"] == [["cache", REPO, "v1"]]
    assert ranks[0]["path"] == ranks[1]["path"]
    assert sorted(p.name for p in Path(ranks[0]["path"]).iterdir()) == [
        "config.json",
        "model.safetensors",
        "tokenizer.json",
    ]
