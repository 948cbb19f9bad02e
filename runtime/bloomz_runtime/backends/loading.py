"""Loading large checkpoints the DeepSpeed-inference way (pure parts first, then the I/O).

A 176B BLOOM does not fit in host memory once per rank: every rank builds the model on the meta
device (no memory), and DeepSpeed reads only its shard from the checkpoint files listed in a
"checkpoints json" (as optimum-habana's text-generation example does). A Hub checkpoint is
downloaded once per node, at a pinned revision when one is given.
"""

from __future__ import annotations

import json
import os
import tempfile
from collections.abc import Callable, Iterable, Sequence
from pathlib import Path
from typing import Any

from bloomz_api.options import ServeOptions

from bloomz_runtime.dist import DistContext

WEIGHT_SUFFIXES = (".safetensors", ".bin", ".pt")
# What a Hub download fetches besides the weights: config, tokenizer, generation settings.
METADATA_PATTERNS = ("*.json", "*.model", "*.txt", "tokenizer*")
# Files DeepSpeed must not treat as weights even though they match a suffix.
NOT_WEIGHTS = ("training_args.bin", "optimizer.pt", "scheduler.pt")
# Architectures DeepSpeed's AutoTP can fill from a checkpoints json while built on the meta device.
META_LOADABLE = ("bloom", "llama")


def checkpoint_files(model_dir: Path) -> list[str]:
    """Weight files of a checkpoint directory, one format only (safetensors preferred), sorted.

    Hidden directories are not the checkpoint's (the stored lm_head screen, download metadata)."""
    files = [
        p
        for p in model_dir.rglob("*")
        if p.is_file()
        and p.name not in NOT_WEIGHTS
        and not any(part.startswith(".") for part in p.relative_to(model_dir).parts[:-1])
    ]
    for suffix in WEIGHT_SUFFIXES:
        chosen = sorted(str(p) for p in files if p.name.endswith(suffix))
        if chosen:
            return chosen
    raise FileNotFoundError(f"no weight files ({', '.join(WEIGHT_SUFFIXES)}) under {model_dir}")


def checkpoints_json(files: Sequence[str]) -> dict[str, Any]:
    """The description DeepSpeed-inference's ``checkpoint=`` argument reads."""
    return {"type": "ds_model", "checkpoints": list(files), "version": 1.0}


def write_checkpoints_json(model_dir: Path, path: Path) -> Path:
    path.write_text(json.dumps(checkpoints_json(checkpoint_files(model_dir))))
    return path


def loads_on_meta(model_type: str, world_size: int) -> bool:
    return world_size > 1 and model_type in META_LOADABLE


def bloom_injection_policy() -> dict[Any, tuple[str, str]]:
    """Which linear layers' outputs DeepSpeed all-reduces in a BLOOM block (optimum-habana's policy)."""
    from transformers.models.bloom.modeling_bloom import BloomBlock

    return {BloomBlock: ("self_attention.dense", "mlp.dense_4h_to_h")}


def ds_inference_kwargs(
    dtype: Any,
    world_size: int,
    *,
    checkpoint: str | None = None,
    graphs: bool = False,
    injection_policy: dict[Any, tuple[str, str]] | None = None,
    kernel_inject: bool = False,
) -> dict[str, Any]:
    """Arguments of ``deepspeed.init_inference``.

    ``graphs`` is DeepSpeed's enable_cuda_graph, which Habana's fork maps to HPU graphs.
    Kernel injection stays off by default: the engine needs the transformers modules (and their
    key/value cache layout) to join and leave rows between steps.
    """
    kwargs: dict[str, Any] = {
        "dtype": dtype,
        "tensor_parallel": {"tp_size": world_size},
        "enable_cuda_graph": graphs,
        "replace_with_kernel_inject": kernel_inject,
    }
    if injection_policy:
        kwargs["injection_policy"] = injection_policy
    if checkpoint:
        kwargs["checkpoint"] = checkpoint
    return kwargs


def weight_patterns(repo_files: Iterable[str]) -> list[str]:
    """Which weights to fetch from a Hub repository's file list: its safetensors, or its `*.bin` files
    where it has none (older repositories; optimum-habana's get_repo_root also falls back to them)."""
    names = [name for name in repo_files if Path(name).name not in NOT_WEIGHTS]
    for suffix in (".safetensors", ".bin"):
        if any(name.endswith(suffix) for name in names):
            return [f"*{suffix}"]
    raise FileNotFoundError("the repository has no *.safetensors or *.bin weights")


def download_patterns(repo_files: Iterable[str]) -> list[str]:
    return [*METADATA_PATTERNS, *weight_patterns(repo_files)]


def resolve_model_dir(
    model: str,
    revision: str | None = None,
    *,
    local_rank: int = 0,
    node_barrier: Callable[[], None] | None = None,
    cache_dir: str | None = None,
) -> Path:
    """A local directory for ``model``: the path itself, or the Hub snapshot at ``revision``.

    Downloaded once per node: local rank 0 fetches while the other ranks wait at ``node_barrier``
    (every rank calls it), then they find the snapshot in the node's cache without asking the Hub.
    Offline (HF_HUB_OFFLINE), the cache must already hold it."""
    path = Path(model)
    if path.is_dir():
        return path
    import huggingface_hub
    from huggingface_hub import constants

    def cached() -> Path:
        return Path(
            huggingface_hub.snapshot_download(
                model, revision=revision, cache_dir=cache_dir, local_files_only=True
            )
        )

    snapshot: Path | None = None
    if local_rank == 0:
        if constants.HF_HUB_OFFLINE:
            snapshot = cached()
        else:
            files = huggingface_hub.list_repo_files(model, revision=revision)
            snapshot = Path(
                huggingface_hub.snapshot_download(
                    model, revision=revision, cache_dir=cache_dir, allow_patterns=download_patterns(files)
                )
            )
    if node_barrier is not None:
        node_barrier()
    return snapshot if snapshot is not None else cached()


def model_dir_for(opts: ServeOptions, ctx: DistContext) -> Path:
    """The checkpoint directory of this rank's model (see resolve_model_dir)."""
    return resolve_model_dir(
        opts.model, opts.revision, local_rank=ctx.local_rank, node_barrier=ctx.download_barrier
    )


def load_for_deepspeed(
    model_dir: Path, config: Any, dtype: Any, world_size: int, *, host_device: str | None = None
) -> tuple[Any, str | None]:
    """The model to hand to deepspeed.init_inference and its checkpoints json (None: weights loaded).

    Large models are built on the meta device so every rank reads only its shard (the full model never
    sits in host memory), as optimum-habana does; smaller ones load on the host, inside
    deepspeed.OnDevice(host_device) when given (Habana's fork wants the load scoped to "cpu").
    """
    import deepspeed
    from transformers import AutoModelForCausalLM

    if loads_on_meta(config.model_type, world_size):
        with deepspeed.OnDevice(dtype=dtype, device="meta"):
            model = AutoModelForCausalLM.from_config(config, torch_dtype=dtype)
        tmp = Path(tempfile.mkdtemp(prefix="bloomz-ds-"))
        return model, str(write_checkpoints_json(model_dir, tmp / f"checkpoints-{os.getpid()}.json"))
    if host_device is None:
        model = AutoModelForCausalLM.from_pretrained(model_dir, torch_dtype=dtype, low_cpu_mem_usage=True)
        return model, None
    with deepspeed.OnDevice(dtype=dtype, device=host_device):
        return AutoModelForCausalLM.from_pretrained(model_dir, torch_dtype=dtype), None
