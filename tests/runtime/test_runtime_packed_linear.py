"""oneDNN-prepacked linear layers of the CPU backend: same results as ``nn.Linear`` (up to float32
rounding) for every batch size a running batch can have, and only plain ``nn.Linear`` is packed."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from bloomz_api.options import ServeOptions
from bloomz_runtime.backends import cpu
from bloomz_runtime.backends.cpu import CpuBackend, PackedLinear, can_pack_linears, pack_linears
from bloomz_runtime.dist import DistContext


def test_packing_applies_to_float32_only() -> None:
    # The pinned x86 torch build has oneDNN; other dtypes keep transformers' own kernels.
    assert can_pack_linears(torch.float32)
    assert not can_pack_linears(torch.bfloat16)


@pytest.mark.parametrize("bias", [True, False])
@pytest.mark.parametrize("shape", [(1, 64), (3, 64), (16, 64), (2, 5, 64)])
def test_packed_linear_equals_linear(bias: bool, shape: tuple[int, ...]) -> None:
    g = torch.Generator().manual_seed(0)
    linear = torch.nn.Linear(64, 96, bias=bias)
    with torch.no_grad():  # seeded weights: nn.Linear's own init reads the global RNG
        linear.weight.copy_(torch.randn(96, 64, generator=g) * 0.1)
        if linear.bias is not None:
            linear.bias.copy_(torch.randn(96, generator=g))
    packed = PackedLinear(linear)
    x = torch.randn(*shape, generator=g)
    with torch.inference_mode():
        expected = linear(x)
        got = packed(x)
    assert got.shape == expected.shape
    assert torch.allclose(got, expected, atol=1e-5, rtol=1e-5)
    assert not torch.equal(got, torch.zeros_like(got))


class _Subclass(torch.nn.Linear):
    """Stands for DeepSpeed's sharded layers, whose forward does more than a matmul."""


def test_pack_linears_replaces_only_plain_linear_layers() -> None:
    model = torch.nn.Sequential(torch.nn.Linear(8, 8), torch.nn.GELU(), _Subclass(8, 4))
    nested = torch.nn.Sequential(torch.nn.Linear(4, 2))
    model.add_module("nested", nested)
    assert pack_linears(model, min_elements=0) == 2
    assert isinstance(model[0], PackedLinear)
    assert type(model[2]) is _Subclass
    assert isinstance(nested[0], PackedLinear)


def test_pack_linears_leaves_small_matrices_to_mkl() -> None:
    model = torch.nn.Sequential(torch.nn.Linear(1024, 1024), torch.nn.Linear(1024, 1023))
    assert pack_linears(model) == 1
    assert isinstance(model[0], PackedLinear)
    assert type(model[1]) is torch.nn.Linear


def test_auto_leaves_a_small_model_unpacked_and_unscreened(tiny_checkpoint: Path) -> None:
    """The tiny model's matrices are below both sizes: plain MKL matmuls and the float32 head."""
    runner = CpuBackend().load(ServeOptions(model=str(tiny_checkpoint), device="cpu"), DistContext(0, 1, 0))
    assert getattr(runner, "greedy_head", None) is None
    assert not any(isinstance(m, PackedLinear) for m in runner.model.modules())


@pytest.mark.parametrize("screened", [True, False], ids=["screened-greedy", "float32-head"])
def test_cpu_backend_packs_one_rank_float32(
    tiny_checkpoint: Path, screened: bool, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(cpu, "PACK_MIN_ELEMENTS", 0)  # the tiny model's matrices are below the size
    opts = ServeOptions(model=str(tiny_checkpoint), device="cpu", screened_greedy=screened)
    runner = CpuBackend().load(opts, DistContext(0, 1, 0))
    builder = getattr(runner, "screen_builder", None)
    if builder is not None:  # no stored screen yet: it is built in the background
        builder.join(timeout=120)
    layer = runner.model.transformer.h[0]
    assert isinstance(layer.self_attention.query_key_value, PackedLinear)
    assert isinstance(layer.mlp.dense_4h_to_h, PackedLinear)
    head = runner.model.lm_head
    if screened:
        # Greedy steps read the int8 screen; sampling steps the tied float32 matrix as it is.
        assert getattr(runner, "greedy_head", None) is not None
        assert type(head) is torch.nn.Linear
        tied = head.weight is runner.model.transformer.word_embeddings.weight
        assert tied == bool(runner.model.config.tie_word_embeddings)
        assert [m for m in runner.model.modules() if type(m) is torch.nn.Linear] == [head]
    else:
        assert getattr(runner, "greedy_head", None) is None
        assert isinstance(head, PackedLinear)
        assert not any(type(m) is torch.nn.Linear for m in runner.model.modules())
        # The tied embedding keeps its own weight for the lookup.
        assert runner.model.transformer.word_embeddings.weight.shape[0] == head.out_features


def test_kernel_by_rows() -> None:
    assert [cpu.uses_plain_kernel(rows) for rows in (1, 2, 3, 4, 16)] == [True, True, False, False, False]


@pytest.mark.parametrize("shape", [(1, 64), (2, 64), (1, 2, 64), (2, 1, 64)])
def test_one_or_two_rows_equal_linear_exactly(shape: tuple[int, ...]) -> None:
    g = torch.Generator().manual_seed(1)
    linear = torch.nn.Linear(64, 96)
    with torch.no_grad():
        linear.weight.copy_(torch.randn(96, 64, generator=g))
        linear.bias.copy_(torch.randn(96, generator=g))
    x = torch.randn(*shape, generator=g)
    with torch.inference_mode():
        assert torch.equal(PackedLinear(linear)(x), linear(x))


def test_without_the_plain_copy_every_call_is_packed(monkeypatch: pytest.MonkeyPatch) -> None:
    linear = torch.nn.Linear(64, 96)
    calls: list[int] = []
    real = torch.ops.mkldnn._linear_pointwise

    def counting(*args: object) -> torch.Tensor:
        calls.append(1)
        return real(*args)

    kept, packed_only = PackedLinear(linear), PackedLinear(linear, keep_plain=False)
    assert kept.weight is linear.weight and packed_only.weight is None
    monkeypatch.setattr(cpu, "_linear_pointwise", counting)
    with torch.inference_mode():
        kept(torch.randn(1, 64))
        assert calls == []
        kept(torch.randn(3, 64))
        assert calls == [1]
        packed_only(torch.randn(1, 64))
        assert calls == [1, 1]
