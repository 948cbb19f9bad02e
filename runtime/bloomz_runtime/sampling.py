"""Choosing the next token of each row: greedy (batched argmax) or sampling per request.

Logits stay where the model computed them: penalty, temperature, top-k and top-p run there, and
off the CPU the draw is an inverse-CDF lookup with a uniform from the request's host generator,
so one token id crosses to the host, not the vocabulary.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch

from bloomz_runtime.backends.base import StepScores
from bloomz_runtime.validation import SamplingParams


class RowSampler:
    """Per-request state: its own random generator (seeded: reproducible) and the ids seen so far."""

    def __init__(self, params: SamplingParams, prompt_ids: Sequence[int]) -> None:
        self.params = params
        self.generator: torch.Generator | None = None
        if params.do_sample:
            self.generator = torch.Generator()
            if params.seed is not None:
                self.generator.manual_seed(params.seed)
            else:
                self.generator.seed()
        self.seen = (
            torch.tensor(list(prompt_ids), dtype=torch.long) if params.repetition_penalty != 1.0 else None
        )

    def observe(self, token: int) -> None:
        if self.seen is not None:
            self.seen = torch.cat([self.seen, torch.tensor([token], dtype=torch.long)])

    def choose(self, logits: torch.Tensor) -> int:
        """``logits``: [vocab] float32 for this row."""
        p = self.params
        scores = logits
        if self.seen is not None:
            scores = apply_repetition_penalty(scores, self.seen.to(scores.device), p.repetition_penalty)
        if not p.do_sample:
            return int(torch.argmax(scores))
        scores = scores / p.temperature
        scores = filter_top_k(scores, p.top_k)
        scores = filter_top_p(scores, p.top_p)
        probs = torch.softmax(scores, dim=-1)
        if probs.device.type == "cpu":
            return int(torch.multinomial(probs, 1, generator=self.generator))
        return draw_on_device(probs, self.generator)


def draw_on_device(probs: torch.Tensor, generator: torch.Generator | None) -> int:
    """A token drawn from ``probs`` [vocab] where they are: the first index whose cumulative
    probability exceeds a uniform from the (host, seeded) ``generator``; one id is copied back."""
    cdf = probs.double().cumsum(dim=-1)
    uniform = torch.rand((1,), generator=generator, dtype=torch.float64).to(probs.device)
    index = torch.searchsorted(cdf, uniform * cdf[-1], right=True)
    # Rounding can put the uniform past the last bin; zero-probability tokens are never chosen.
    index = torch.where(index >= cdf.shape[0], torch.argmax(probs).reshape(1), index)
    return int(index[0])


def apply_repetition_penalty(scores: torch.Tensor, seen: torch.Tensor, penalty: float) -> torch.Tensor:
    """CTRL's penalty as transformers applies it: divide positive logits, multiply negative ones."""
    picked = scores.gather(0, seen)
    picked = torch.where(picked < 0, picked * penalty, picked / penalty)
    return scores.scatter(0, seen, picked)


def filter_top_k(scores: torch.Tensor, k: int) -> torch.Tensor:
    if k <= 0 or k >= scores.shape[-1]:
        return scores
    threshold = torch.topk(scores, k).values[-1]
    return scores.masked_fill(scores < threshold, float("-inf"))


def filter_top_p(scores: torch.Tensor, top_p: float) -> torch.Tensor:
    """Keep the smallest set of tokens whose probability reaches ``top_p`` (at least one)."""
    if top_p >= 1.0:
        return scores
    sorted_scores, order = torch.sort(scores, descending=True)
    cumulative = torch.softmax(sorted_scores, dim=-1).cumsum(dim=-1)
    remove = cumulative - torch.softmax(sorted_scores, dim=-1) >= top_p
    remove[0] = False
    return scores.masked_fill(remove.scatter(0, order, remove), float("-inf"))


def needs_logits(samplers: Sequence[RowSampler]) -> bool:
    """Whether a step must compute every logit (else the greedy ids are all it needs)."""
    return not all(s.params.is_plain_greedy for s in samplers)


def choose_tokens(scores: StepScores, samplers: Sequence[RowSampler]) -> list[int | BaseException]:
    """Next token per row; plain-greedy rows take the step's batched argmax.

    A row whose sampling fails (e.g. logits that are all -inf after filtering) gets the exception
    instead of a token: that request fails, the batch and the other ranks carry on.
    """
    greedy = scores.greedy.tolist()
    tokens: list[int | BaseException] = []
    for i, sampler in enumerate(samplers):
        if sampler.params.is_plain_greedy:
            tokens.append(int(greedy[i]))
            continue
        if scores.logits is None:
            raise RuntimeError("a sampling row got a step without logits")
        try:
            tokens.append(sampler.choose(scores.logits[i]))
        except (RuntimeError, ValueError) as exc:
            tokens.append(exc)
    return tokens
