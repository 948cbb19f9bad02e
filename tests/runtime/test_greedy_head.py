"""The int8-screened lm_head: its error bound holds and its argmax is the float32 argmax, including
near-ties the screen cannot separate, exact ties, flat logits (fallback) and all-zero rows."""

from __future__ import annotations

import types

import pytest
import torch
import torch.nn.functional as F
from bloomz_runtime.backends import greedy_head
from bloomz_runtime.backends.greedy_head import (
    MAX_RESCORE_SHARE,
    ONEDNN_ISA_ENV,
    RESIDUAL_SHIFT,
    SAFETY,
    SCREEN_ISA,
    ScreenedGreedyHead,
    WeightNorms,
    can_screen,
    candidate_thresholds,
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
    message = "ScreenedGreedyHead needs a 2-D float32 weight"
    with pytest.raises(ValueError) as bfloat16:
        ScreenedGreedyHead(random_weight().to(torch.bfloat16))
    with pytest.raises(ValueError) as flat:
        ScreenedGreedyHead(torch.zeros(16))
    assert str(bfloat16.value) == str(flat.value) == message


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
    assert head.single_level is False
    assert head.fallbacks == 0


def test_the_bound_is_the_documented_sum_of_its_terms() -> None:
    """Each term as the docstring derives it: weight error x ||h||, ||Wq|| x activation error, the
    float32 rounding of both logits (2 x H x 2**-24 x ||W|| x ||h||), a few ulps of the screened
    magnitude, all times SAFETY. Exact values on hand-picked norms: a term left out, or one scaled
    otherwise, changes the bound."""
    norms = WeightNorms(quantized=5.0, error=0.125, original=4.0)
    bound = screening_bound(
        torch.tensor([2.0, 0.5]), torch.tensor([0.5, 0.25]), torch.tensor([3.0, 1.0]), norms, 64
    )
    expected = []
    for h, activation_error, screened_max in ((2.0, 0.5, 3.0), (0.5, 0.25, 1.0)):
        rounding = 2 * 64 * 2.0**-24 * 4.0 * h
        ulps = 2.0**-20 * (screened_max + 5.0 * h)
        expected.append((0.125 * h + 5.0 * activation_error + rounding + ulps) * SAFETY)
    assert bound.dtype == torch.float64
    assert bound.tolist() == pytest.approx(expected, rel=1e-12)
    assert SAFETY > 1


def test_candidate_thresholds_are_the_row_maximum_less_twice_the_bound() -> None:
    screened = torch.tensor([[1.0, 4.0, 2.0], [0.5, -1.0, 0.25]])
    thresholds = candidate_thresholds(
        screened, torch.tensor([0.5, 0.125], dtype=torch.float64), screened.amax(1)
    )
    assert thresholds.dtype == torch.float32 and thresholds.shape == (2, 1)
    assert thresholds.tolist() == [[3.0], [0.25]]


def test_every_nonzero_weight_row_uses_the_whole_int8_range() -> None:
    weight = random_weight(vocab=1500, hidden=32)  # more rows than one build chunk
    weight[7] = 0
    int8, scales, _ = quantize_weight(weight)
    largest = int8.abs().amax(dim=1)
    assert int8.dtype == torch.int8 and scales.dtype == torch.float32
    assert largest[7] == 0 and scales[7] == 1.0
    assert bool((largest[torch.arange(1500) != 7] == 127).all())
    assert torch.allclose(scales[:7], weight[:7].abs().amax(dim=1) / 127)


def small_head(seed: int = 11) -> tuple[ScreenedGreedyHead, torch.Tensor, torch.Tensor]:
    """A 16-token head (so at most one token may be rescored) with token 3 far ahead for hidden
    states near one direction, and three such states."""
    g = torch.Generator().manual_seed(seed)
    weight = torch.randn(16, 8, generator=g) * 0.01
    direction = torch.randn(8, generator=g)
    weight[3] = direction / direction.norm() * 2
    hidden = direction / direction.norm() * 5 + torch.randn(3, 8, generator=g) * 0.01
    return ScreenedGreedyHead(weight), weight, hidden


def test_a_new_head_has_screened_nothing_yet() -> None:
    head, _, _ = small_head()
    assert (head.fallbacks, head.last_rescored, head.single_level) == (0, 0, False)
    assert head.single_level is False
    assert head.max_rescored == 1  # 16 / 16


def test_one_candidate_is_rescored_and_as_many_as_allowed_never_fall_back() -> None:
    head, weight, hidden = small_head()
    assert head.argmax(hidden).tolist() == exact_argmax(hidden, weight).tolist() == [3, 3, 3]
    # Three rows screen with the coarse level alone when that leaves at most max_rescored tokens.
    assert (head.last_rescored, head.single_level, head.fallbacks) == (1, True, 0)
    assert head.argmax(hidden[:1]).tolist() == [3]
    assert (head.last_rescored, head.fallbacks) == (1, 0)
    assert head.single_level is False  # one row: both levels in the matmul's minimum rows


def test_more_candidates_than_allowed_fall_back_every_time() -> None:
    head, weight, hidden = small_head()
    tied = weight.clone()
    tied[9] = tied[3]  # an exact tie: both must be rescored, one more than a 16-token head allows
    head = ScreenedGreedyHead(tied)
    for calls in (1, 2):
        assert head.argmax(hidden[:1]).tolist() == exact_argmax(hidden[:1], tied).tolist() == [3]
        assert (head.last_rescored, head.fallbacks) == (2, calls)


def test_all_zero_rows_pick_token_0_like_torch_argmax() -> None:
    """A zero hidden state: every logit is exactly 0 and the bound is 0, so every token is a
    candidate (the fallback) and the lowest id wins."""
    head, weight, _ = small_head()
    zeros = torch.zeros(2, 8)
    assert head.argmax(zeros).tolist() == exact_argmax(zeros, weight).tolist() == [0, 0]
    assert (head.last_rescored, head.fallbacks) == (16, 1)


def test_screen_pays_off_only_on_avx512_and_amx(monkeypatch: pytest.MonkeyPatch) -> None:
    for capability, expected in (("AVX512", True), ("AMX", True), ("AVX2", False), ("DEFAULT", False)):
        monkeypatch.setattr(torch.backends.cpu, "get_cpu_capability", lambda c=capability: c)
        assert greedy_head.screen_pays_off() is expected, capability


@pytest.mark.parametrize(
    ("mkldnn", "ops", "expected"),
    [
        (True, {"qlinear_prepack": 1, "qlinear_pointwise": 1}, True),
        (False, {"qlinear_prepack": 1, "qlinear_pointwise": 1}, False),
        (True, {"qlinear_pointwise": 1}, False),
        (True, {"qlinear_prepack": 1}, False),
        (True, None, False),
    ],
    ids=["both-ops", "no-mkldnn", "no-prepack", "no-pointwise", "no-onednn-namespace"],
)
def test_can_screen_needs_mkldnn_and_both_onednn_ops(
    monkeypatch: pytest.MonkeyPatch, mkldnn: bool, ops: dict[str, int] | None, expected: bool
) -> None:
    fake_ops = (
        types.SimpleNamespace() if ops is None else types.SimpleNamespace(onednn=types.SimpleNamespace(**ops))
    )
    monkeypatch.setattr(torch.backends.mkldnn, "is_available", lambda: mkldnn)
    monkeypatch.setattr(torch, "ops", fake_ops)
    assert can_screen() is expected
