"""Loading large checkpoints the DeepSpeed-inference way (pure parts first, then the I/O).

A 176B BLOOM does not fit in host memory once per rank: every rank builds the model on the meta
device (no memory), and DeepSpeed reads only its shard from the checkpoint files listed in a
"checkpoints json" (as optimum-habana's text-generation example does).
"""

from __future__ import annotations

import json
import os
import tempfile
from collections.abc import Sequence
from pathlib import Path
from typing import Any

WEIGHT_SUFFIXES = (".safetensors", ".bin", ".pt")
# Files DeepSpeed must not treat as weights even though they match a suffix.
NOT_WEIGHTS = ("training_args.bin", "optimizer.pt", "scheduler.pt")
# Architectures DeepSpeed's AutoTP can fill from a checkpoints json while built on the meta device.
META_LOADABLE = ("bloom", "llama")


def checkpoint_files(model_dir: Path) -> list[str]:
    """Weight files of a checkpoint directory, one format only (safetensors preferred), sorted."""
    files = [p for p in model_dir.rglob("*") if p.is_file() and p.name not in NOT_WEIGHTS]
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


def resolve_model_dir(model: str, cache_dir: str | None = None) -> Path:
    """A local directory for ``model``: the path itself, or the Hub snapshot (downloaded if needed)."""
    path = Path(model)
    if path.is_dir():
        return path
    from huggingface_hub import snapshot_download

    return Path(
        snapshot_download(
            model,
            cache_dir=cache_dir,
            allow_patterns=["*.json", "*.safetensors", "*.model", "*.txt", "tokenizer*"],
        )
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
