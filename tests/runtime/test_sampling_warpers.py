"""Sampling compared with transformers' own logits processors on fixed logits, and per-row isolation."""

from __future__ import annotations

import pytest
import torch
from bloomz_runtime.backends.base import StepScores
from bloomz_runtime.sampling import (
    RowSampler,
    apply_repetition_penalty,
    choose_tokens,
    draw_on_device,
    filter_top_k,
    filter_top_p,
    needs_logits,
)
from bloomz_runtime.validation import SamplingParams
from transformers.generation.logits_process import (
    LogitsProcessorList,
    RepetitionPenaltyLogitsProcessor,
    TemperatureLogitsWarper,
    TopKLogitsWarper,
    TopPLogitsWarper,
)

VOCAB = 12
DRAWS = 3000


def fixed_logits(seed: int, vocab: int = VOCAB) -> torch.Tensor:
    """Distinct logits of both signs (no ties, so every rule has one right answer)."""
    return torch.randn(vocab, generator=torch.Generator().manual_seed(seed)) * 2.0


def hf(processors: list[object], logits: torch.Tensor, seen: list[int] | None = None) -> torch.Tensor:
    ids = torch.tensor([seen if seen is not None else [0]], dtype=torch.long)
    return LogitsProcessorList(processors)(ids, logits[None].clone())[0]


def hf_probabilities(params: SamplingParams, logits: torch.Tensor, seen: list[int]) -> torch.Tensor:
    """The distribution transformers' generate samples from, processors in its order."""
    processors: list[object] = []
    if params.repetition_penalty != 1.0:
        processors.append(RepetitionPenaltyLogitsProcessor(params.repetition_penalty))
    processors.append(TemperatureLogitsWarper(params.temperature))
    if params.top_k > 0:
        processors.append(TopKLogitsWarper(params.top_k))
    if params.top_p < 1.0:
        processors.append(TopPLogitsWarper(params.top_p))
    return torch.softmax(hf(processors, logits, seen), dim=-1)


@pytest.mark.parametrize("k", [1, 2, 5, VOCAB - 1, VOCAB, VOCAB + 3])
@pytest.mark.parametrize("seed", [0, 1, 2])
def test_top_k_equals_transformers(k: int, seed: int) -> None:
    logits = fixed_logits(seed)
    assert torch.equal(filter_top_k(logits, k), hf([TopKLogitsWarper(k)], logits))


@pytest.mark.parametrize("k", [0, -1])
def test_top_k_off(k: int) -> None:
    logits = fixed_logits(3)
    assert torch.equal(filter_top_k(logits, k), logits)


@pytest.mark.parametrize("top_p", [0.05, 0.3, 0.5, 0.75, 0.9, 0.99, 1.0])
@pytest.mark.parametrize("seed", [0, 1, 2])
def test_top_p_equals_transformers(top_p: float, seed: int) -> None:
    logits = fixed_logits(seed)
    assert torch.equal(filter_top_p(logits, top_p), hf([TopPLogitsWarper(top_p)], logits))


def test_top_p_keeps_the_token_that_crosses_p() -> None:
    logits = torch.tensor([0.5, 0.3, 0.2]).log()
    kept = filter_top_p(logits, 0.6).isfinite().tolist()
    assert kept == [True, True, False]  # 0.5 alone is short of 0.6: the 0.3 that crosses it stays
    assert filter_top_p(logits, 0.85).isfinite().tolist() == [True, True, True]
    assert filter_top_p(logits, 0.4).isfinite().tolist() == [True, False, False]


@pytest.mark.parametrize("penalty", [0.5, 1.3, 2.0])
def test_repetition_penalty_equals_transformers(penalty: float) -> None:
    logits = fixed_logits(4)
    seen = [1, 3, 3, 7, 0]  # repeats count once, as in transformers
    got = apply_repetition_penalty(logits, torch.tensor(seen), penalty)
    assert torch.equal(got, hf([RepetitionPenaltyLogitsProcessor(penalty)], logits, seen))
    assert torch.equal(got[[2, 4, 5]], logits[[2, 4, 5]])  # unseen ids untouched


def test_temperature_equals_transformers_on_the_sampled_distribution() -> None:
    """Temperature changes only the distribution: compare the empirical one with transformers'."""
    logits = fixed_logits(5)
    for temperature in (0.4, 1.0, 2.5):
        params = SamplingParams(do_sample=True, temperature=temperature, seed=11)
        assert total_variation(empirical(params, logits, [0]), hf_probabilities(params, logits, [0])) < 0.04
        assert torch.allclose(
            hf([TemperatureLogitsWarper(temperature)], logits), logits / temperature, rtol=0, atol=0
        )


def empirical(params: SamplingParams, logits: torch.Tensor, prompt: list[int]) -> torch.Tensor:
    sampler = RowSampler(params, prompt)
    counts = torch.zeros(logits.shape[0])
    for _ in range(DRAWS):
        counts[sampler.choose(logits)] += 1
    return counts / DRAWS


def total_variation(p: torch.Tensor, q: torch.Tensor) -> float:
    return float((p - q).abs().sum() / 2)


@pytest.mark.parametrize(
    "params",
    [
        SamplingParams(do_sample=True, temperature=0.7, top_k=4, seed=1),
        SamplingParams(do_sample=True, temperature=1.3, top_p=0.8, seed=2),
        SamplingParams(do_sample=True, temperature=0.9, top_k=6, top_p=0.7, repetition_penalty=1.5, seed=3),
        SamplingParams(do_sample=True, repetition_penalty=0.6, seed=4),
    ],
    ids=["top-k", "top-p", "all", "penalty<1"],
)
def test_sampling_follows_the_transformers_pipeline(params: SamplingParams) -> None:
    logits = fixed_logits(6)
    prompt = [int(torch.argmax(logits)), 2]
    expected = hf_probabilities(params, logits, prompt)
    got = empirical(params, logits, prompt)
    assert bool((got[expected == 0] == 0).all())  # never a filtered token
    assert total_variation(got, expected) < 0.04


def test_greedy_with_a_penalty_follows_the_tokens_it_observes() -> None:
    logits = torch.tensor([0.0, 3.0, 2.9, -1.0])
    sampler = RowSampler(SamplingParams(repetition_penalty=1.2), [0])
    assert sampler.choose(logits) == 1
    sampler.observe(1)  # 3.0 / 1.2 = 2.5 < 2.9
    assert sampler.choose(logits) == 2
    expected = hf([RepetitionPenaltyLogitsProcessor(1.2)], logits, [0, 1])
    assert sampler.choose(logits) == int(torch.argmax(expected))
    plain = RowSampler(SamplingParams(), [0])
    plain.observe(1)
    assert plain.seen is None and plain.choose(logits) == 1


def test_a_seed_makes_draws_reproducible_and_different_seeds_differ() -> None:
    logits = torch.zeros(1000)

    def draws(seed: int | None) -> list[int]:
        sampler = RowSampler(SamplingParams(do_sample=True, seed=seed), [0])
        return [sampler.choose(logits) for _ in range(20)]

    assert draws(9) == draws(9)
    assert draws(9) != draws(10)
    assert draws(None) != draws(None)  # unseeded rows draw from fresh generators


def test_needs_logits_only_for_sampling_or_a_penalty() -> None:
    greedy = RowSampler(SamplingParams(), [0])
    assert not needs_logits([greedy, greedy])
    assert not needs_logits([])
    assert needs_logits([greedy, RowSampler(SamplingParams(do_sample=True, seed=0), [0])])
    assert needs_logits([RowSampler(SamplingParams(repetition_penalty=0.9), [0]), greedy])


def test_a_failing_row_gets_its_error_and_the_other_rows_their_tokens() -> None:
    logits = torch.stack(
        [fixed_logits(7), torch.full((VOCAB,), float("nan")), fixed_logits(8), fixed_logits(9)]
    )
    samplers = [
        RowSampler(SamplingParams(do_sample=True, top_k=1, seed=0), [0]),
        RowSampler(SamplingParams(do_sample=True, seed=0), [0]),  # NaN logits: multinomial fails
        RowSampler(SamplingParams(), [0]),
        RowSampler(SamplingParams(repetition_penalty=1.1), [0]),
    ]
    greedy = torch.tensor([5, 6, 7, 8])  # the batched argmax the step computed for greedy rows
    tokens = choose_tokens(StepScores(greedy=greedy, logits=logits), samplers)
    assert tokens[0] == int(torch.argmax(logits[0]))
    assert isinstance(tokens[1], RuntimeError)
    assert tokens[2] == 7  # plain greedy takes the step's own argmax, not the logits
    assert tokens[3] == int(torch.argmax(hf([RepetitionPenaltyLogitsProcessor(1.1)], logits[3], [0])))


def test_a_sampling_row_without_logits_is_an_error_of_the_step() -> None:
    samplers = [RowSampler(SamplingParams(), [0]), RowSampler(SamplingParams(do_sample=True, seed=0), [0])]
    with pytest.raises(RuntimeError, match="without logits"):
        choose_tokens(StepScores(greedy=torch.tensor([1, 2])), samplers)
    assert choose_tokens(StepScores(greedy=torch.tensor([1, 2])), samplers[:1] * 2) == [1, 2]


def test_top_p_of_one_keeps_a_large_vocabulary_whole() -> None:
    """float32 cumulative sums of 50k probabilities pass 1.0: p = 1 must not filter at all."""
    logits = torch.randn(50_000, generator=torch.Generator().manual_seed(0)) * 3
    assert torch.equal(filter_top_p(logits, 1.0), logits)


def test_top_p_exactly_reached_by_the_first_tokens_keeps_only_them() -> None:
    logits = torch.tensor([0.5, 0.25, 0.25]).log()  # softmax gives these exactly
    expected = hf([TopPLogitsWarper(0.5)], logits)
    assert (
        filter_top_p(logits, 0.5).isfinite().tolist() == expected.isfinite().tolist() == [True, False, False]
    )
    assert filter_top_p(logits, 0.75).isfinite().tolist() == [True, True, False]


def test_the_missing_logits_error_says_so() -> None:
    with pytest.raises(RuntimeError) as error:
        choose_tokens(StepScores(greedy=torch.tensor([1])), [RowSampler(SamplingParams(do_sample=True), [0])])
    assert str(error.value) == "a sampling row got a step without logits"


def first_bin_past(probs: list[float], uniform: float) -> int:
    """The documented rule: the first index whose cumulative probability exceeds uniform x total."""
    total = sum(probs)
    cumulative = 0.0
    for index, p in enumerate(probs):
        cumulative += p
        if cumulative > uniform * total:
            return index
    raise AssertionError("no bin")


def test_a_device_draw_is_the_first_bin_past_a_seeded_uniform() -> None:
    """Unnormalized on purpose (the draw scales by the total); zero-probability tokens never come up;
    three draws from one generator follow its sequence of single uniforms."""
    probs = [1.0, 0.0, 2.0, 3.0, 0.0, 4.0]
    for seed in range(50):
        generator = torch.Generator().manual_seed(seed)
        twin = torch.Generator().manual_seed(seed)
        for _ in range(3):
            uniform = float(torch.rand((1,), generator=twin, dtype=torch.float64))
            drawn = draw_on_device(torch.tensor(probs), generator)
            assert drawn == first_bin_past(probs, uniform) and probs[drawn] > 0
