"""The int8-screened lm_head: its error bound holds and its argmax is the float32 argmax, including
near-ties the screen cannot separate, exact ties, flat logits (fallback) and all-zero rows."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from bloomz_runtime.backends.greedy_head import (
    MAX_RESCORE_SHARE,
    ONEDNN_ISA_ENV,
    RESIDUAL_SHIFT,
    SCREEN_ISA,
    ScreenedGreedyHead,
    can_screen,
    cap_onednn_isa,
    power_of_two_scale,
    quantize_activations,
    quantize_weight,
    screening_bound,
)


def test_the_pinned_torch_has_the_onednn_int8_ops() -> None:
    assert can_screen()


def exact_argmax(hidden: torch.Tensor, weight: torch.Tensor) -> torch.Tensor:
    return torch.argmax(F.linear(hidden, weight), dim=1)


def random_weight(vocab: int = 6000, hidden: int = 256, std: float = 0.02, seed: int = 0) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    return torch.randn(vocab, hidden, generator=g) * std


def test_power_of_two_scale_covers_the_largest_value_in_127_steps() -> None:
    for largest in (1e-6, 0.3, 1.0, 3.9, 127.0, 5000.0):
        scale = power_of_two_scale(largest)
        assert largest / scale <= 127 < 2 * largest / scale
        assert scale == 2.0 ** round(torch.log2(torch.tensor(scale)).item())
    assert power_of_two_scale(0.0) == 1.0


def test_activation_levels_and_their_error_norms() -> None:
    hidden = (
        torch.randn(3, 64, generator=torch.Generator().manual_seed(3))
        * torch.tensor([1.0, 10.0, 0.01])[:, None]
    )
    one = quantize_activations(hidden, residual_level=False)
    two = quantize_activations(hidden, residual_level=True)
    assert one.residual is None and two.residual is not None
    assert one.coarse.dtype == torch.uint8 and two.residual.dtype == torch.uint8
    represented = two.scale * ((two.coarse.double() - 128) + (two.residual.double() - 128) / RESIDUAL_SHIFT)
    errors = torch.linalg.vector_norm(hidden.double() - represented, dim=1)
    assert torch.allclose(errors, two.error_norms)
    # The residual level makes the representation about 2**7 finer.
    assert float(two.error_norms.max()) * 32 < float(one.error_norms.max())


def test_weight_quantization_norms() -> None:
    weight = random_weight(vocab=3000, hidden=64)
    weight[5] = 0  # an all-zero row must not divide by zero
    int8, scales, norms = quantize_weight(weight)
    dequantized = int8.double() * scales.double()[:, None]
    assert torch.equal(int8[5], torch.zeros(64, dtype=torch.int8))
    assert float(torch.linalg.vector_norm(dequantized - weight.double(), dim=1).max()) <= norms.error * 1.001
    assert float(torch.linalg.vector_norm(dequantized, dim=1).max()) <= norms.quantized * 1.001
    assert float(torch.linalg.vector_norm(weight.double(), dim=1).max()) <= norms.original * 1.001


@pytest.mark.parametrize("rows", [1, 2, 5])
def test_the_screen_is_the_int8_product_of_both_levels(rows: int) -> None:
    """oneDNN's u8 x s8 matmul (zero point 128) gives the integer products exactly, scaled in float32."""
    weight = random_weight(vocab=2000, hidden=128)
    head = ScreenedGreedyHead(weight)
    hidden = torch.randn(rows, 128, generator=torch.Generator().manual_seed(rows))
    screened, levels = head.screen(hidden)
    assert levels.residual is not None
    int8, scales, _ = quantize_weight(weight)
    levels_sum = (levels.coarse.double() - 128) + (levels.residual.double() - 128) / RESIDUAL_SHIFT
    expected = (levels_sum @ int8.double().t()) * levels.scale * scales.double()
    assert screened.shape == (rows, 2000)
    tolerance = 2.0**-20 * float(expected.abs().max())
    assert float((screened.double() - expected).abs().max()) <= tolerance


@pytest.mark.parametrize("rows", [1, 2, 3, 16])
@pytest.mark.parametrize("outliers", [False, True], ids=["plain", "outlier-dims"])
def test_the_bound_holds_and_the_argmax_is_exact(rows: int, outliers: bool) -> None:
    weight = random_weight()
    head = ScreenedGreedyHead(weight)
    g = torch.Generator().manual_seed(rows)
    for _ in range(10):
        hidden = torch.randn(rows, weight.shape[1], generator=g)
        if outliers:  # LLM hidden states carry a few large dimensions
            hidden[:, :3] *= 40
        screened, levels = head.screen(hidden)
        exact = hidden.double() @ weight.double().t()
        bound = screening_bound(
            torch.linalg.vector_norm(hidden.double(), dim=1),
            levels.error_norms,
            screened.abs().amax(dim=1),
            head.norms,
            head.hidden_size,
        )
        assert bool(((screened.double() - exact).abs() <= bound[:, None]).all())
        assert torch.equal(head.argmax(hidden), exact_argmax(hidden, weight))
        assert 1 <= head.last_rescored < weight.shape[0] * MAX_RESCORE_SHARE
    assert head.fallbacks == 0


def test_near_ties_the_screen_cannot_separate_are_rescored_in_float32() -> None:
    weight = random_weight(std=0.001)
    hidden = torch.randn(4, weight.shape[1], generator=torch.Generator().manual_seed(4))
    # Token 100 wins by a margin far below the int8 resolution; 7 and 3000 are one ulp-level behind.
    direction = hidden.sum(dim=0) / hidden.sum(dim=0).norm()
    weight[100] = direction
    weight[7] = direction * (1 - 1e-5)
    weight[3000] = direction * (1 - 2e-5)
    head = ScreenedGreedyHead(weight)
    chosen = head.argmax(hidden)
    assert torch.equal(chosen, exact_argmax(hidden, weight))
    assert head.last_rescored >= 3


def test_exact_ties_resolve_to_the_lowest_id_like_torch_argmax() -> None:
    weight = random_weight(std=0.001)
    hidden = torch.randn(2, weight.shape[1], generator=torch.Generator().manual_seed(2))
    direction = hidden.sum(dim=0)
    for token in (4000, 50, 2222):
        weight[token] = direction
    head = ScreenedGreedyHead(weight)
    assert head.argmax(hidden).tolist() == exact_argmax(hidden, weight).tolist() == [50, 50]


def test_flat_logits_fall_back_to_the_float32_head() -> None:
    """Every token within the bound of the best: rescoring would read too much, so the step uses
    the full float32 projection (still the exact argmax)."""
    weight = torch.full((6000, 256), 0.01) + random_weight(std=1e-7)
    head = ScreenedGreedyHead(weight)
    hidden = torch.randn(2, 256, generator=torch.Generator().manual_seed(5))
    assert torch.equal(head.argmax(hidden), exact_argmax(hidden, weight))
    assert head.fallbacks == 1 and head.last_rescored > 6000 * MAX_RESCORE_SHARE


def test_only_float32_matrices_are_screened() -> None:
    with pytest.raises(ValueError, match="float32"):
        ScreenedGreedyHead(random_weight().to(torch.bfloat16))


def test_the_onednn_isa_cap_leaves_an_operators_choice_alone() -> None:
    environ: dict[str, str] = {}
    assert cap_onednn_isa(environ) and environ == {ONEDNN_ISA_ENV: SCREEN_ISA}
    for name in (ONEDNN_ISA_ENV, "DNNL_MAX_CPU_ISA"):
        chosen = {name: "ALL"}
        assert not cap_onednn_isa(chosen) and chosen == {name: "ALL"}


def test_larger_batches_screen_with_the_coarse_level_alone_unless_it_leaves_too_many() -> None:
    weight = random_weight()
    head = ScreenedGreedyHead(weight)
    g = torch.Generator().manual_seed(7)
    plain = torch.randn(16, weight.shape[1], generator=g)
    assert torch.equal(head.argmax(plain), exact_argmax(plain, weight))
    assert head.single_level  # half the matmul rows, exact all the same
    outliers = plain.clone()
    outliers[:, :3] *= 40  # the coarse level's error grows with the largest value: retried with both
    assert torch.equal(head.argmax(outliers), exact_argmax(outliers, weight))
    assert not head.single_level and head.last_rescored < weight.shape[0] * MAX_RESCORE_SHARE
    two_rows = plain[:2]  # both levels fit in the matmul's minimum rows: always both
    assert torch.equal(head.argmax(two_rows), exact_argmax(two_rows, weight))
    assert not head.single_level
    assert head.fallbacks == 0
