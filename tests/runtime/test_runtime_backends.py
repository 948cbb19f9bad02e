"""Device backends: what can be checked without the device (option building, buckets, checkpoint json)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from bloomz_runtime.backends import get_backend
from bloomz_runtime.backends.base import torch_dtype
from bloomz_runtime.backends.hpu import HpuBloomRunner, HpuModelRunner, bucket_length, hpu_environment
from bloomz_runtime.backends.loading import (
    bloom_injection_policy,
    checkpoint_files,
    checkpoints_json,
    ds_inference_kwargs,
    loads_on_meta,
    resolve_model_dir,
    write_checkpoints_json,
)


@pytest.mark.parametrize(
    ("length", "bucket", "limit", "expected"),
    [(1, 128, None, 128), (128, 128, None, 128), (129, 128, None, 256), (7, 16, None, 16), (0, 64, None, 64),
     (2000, 128, 2048, 2048), (2040, 128, 2040, 2040), (100, 128, 50, 128)],
)  # fmt: skip
def test_bucket_length(length: int, bucket: int, limit: int | None, expected: int) -> None:
    assert bucket_length(length, bucket, limit) == expected


@pytest.mark.parametrize("runner_class", [HpuModelRunner, HpuBloomRunner])
def test_hpu_runners_pad_prompts_to_buckets(runner_class: type[HpuModelRunner | HpuBloomRunner]) -> None:
    runner = runner_class(
        model=None, tokenizer=None, device=torch.device("cpu"), dtype=torch.bfloat16, backend="hpu"
    )
    runner.max_input_tokens = 300
    assert [runner.prompt_length(n) for n in (7, 128, 200, 290)] == [128, 128, 256, 300]


def test_hpu_bloom_runner_uses_static_shapes() -> None:
    assert HpuBloomRunner.static_shapes and HpuBloomRunner.cache_chunk == 128


def test_hpu_environment_sets_defaults_only() -> None:
    env = {"PT_HPU_LAZY_MODE": "0"}
    hpu_environment(8, env)
    assert env["PT_HPU_LAZY_MODE"] == "0"  # the user's choice stays
    assert env["PT_HPU_ENABLE_LAZY_COLLECTIVES"] == "true" and "PT_HPU_LAZY_ACC_PAR_MODE" not in env
    single: dict[str, str] = {}
    hpu_environment(1, single)
    assert "PT_HPU_ENABLE_LAZY_COLLECTIVES" not in single


def test_checkpoint_files_prefer_safetensors(tmp_path: Path) -> None:
    for name in ("model-00002-of-00002.safetensors", "model-00001-of-00002.safetensors", "pytorch_model.bin",
                 "training_args.bin", "config.json"):  # fmt: skip
        (tmp_path / name).write_text("x")
    files = checkpoint_files(tmp_path)
    assert [Path(f).name for f in files] == [
        "model-00001-of-00002.safetensors",
        "model-00002-of-00002.safetensors",
    ]
    out = write_checkpoints_json(tmp_path, tmp_path / "ckpt.json")
    assert (
        json.loads(out.read_text())
        == checkpoints_json(files)
        == {
            "type": "ds_model",
            "checkpoints": files,
            "version": 1.0,
        }
    )


def test_checkpoint_files_bin_only_and_missing(tmp_path: Path) -> None:
    (tmp_path / "pytorch_model.bin").write_text("x")
    (tmp_path / "training_args.bin").write_text("x")
    assert [Path(f).name for f in checkpoint_files(tmp_path)] == ["pytorch_model.bin"]
    with pytest.raises(FileNotFoundError):
        checkpoint_files(tmp_path / "nothing-here")


def test_meta_loading_only_for_sharded_known_architectures() -> None:
    assert loads_on_meta("bloom", 8)
    assert not loads_on_meta("bloom", 1)
    assert not loads_on_meta("gpt2", 8)


def test_ds_inference_kwargs() -> None:
    policy = bloom_injection_policy()
    ((block, layers),) = policy.items()
    assert block.__name__ == "BloomBlock" and layers == ("self_attention.dense", "mlp.dense_4h_to_h")
    kw = ds_inference_kwargs(
        torch.bfloat16, 8, checkpoint="/tmp/c.json", graphs=True, injection_policy=policy
    )
    assert kw == {
        "dtype": torch.bfloat16,
        "tensor_parallel": {"tp_size": 8},
        "enable_cuda_graph": True,
        "replace_with_kernel_inject": False,
        "injection_policy": policy,
        "checkpoint": "/tmp/c.json",
    }
    assert "checkpoint" not in ds_inference_kwargs(torch.float32, 2)


def test_dtype_mapping_and_backend_lookup(tiny_checkpoint: Path) -> None:
    assert torch_dtype("bfloat16") is torch.bfloat16 and torch_dtype("float32") is torch.float32
    assert [get_backend(d).name for d in ("cpu", "cuda", "hpu")] == ["cpu", "cuda", "hpu"]
    with pytest.raises(ValueError):
        get_backend("tpu")
    assert resolve_model_dir(str(tiny_checkpoint)) == tiny_checkpoint


def test_load_for_deepspeed_meta_for_sharded_bloom_host_otherwise(tiny_checkpoint: Path) -> None:
    from bloomz_runtime.backends.loading import load_for_deepspeed
    from transformers import AutoConfig

    config = AutoConfig.from_pretrained(tiny_checkpoint)
    model, checkpoint = load_for_deepspeed(tiny_checkpoint, config, torch.float32, 2)
    assert checkpoint is not None and next(model.parameters()).is_meta
    assert json.loads(Path(checkpoint).read_text())["checkpoints"]
    for host_device in (None, "cpu"):
        model, checkpoint = load_for_deepspeed(
            tiny_checkpoint, config, torch.float32, 1, host_device=host_device
        )
        assert checkpoint is None and not next(model.parameters()).is_meta
