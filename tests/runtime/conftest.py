"""Fixtures for runtime tests: the plain-transformers reference output on the tiny checkpoint."""

from __future__ import annotations

from pathlib import Path

import pytest
from runtime_reference import Reference


@pytest.fixture(scope="session")
def hf_greedy(tiny_checkpoint: Path) -> Reference:
    """Token ids plain transformers ``generate`` produces greedily (eos not stopping), memoised."""
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(tiny_checkpoint)
    model = AutoModelForCausalLM.from_pretrained(tiny_checkpoint).eval()
    cache: dict[tuple[str, int], list[int]] = {}

    def generate(prompt: str, new_tokens: int) -> list[int]:
        if (prompt, new_tokens) not in cache:
            ids = tokenizer(prompt, return_tensors="pt")
            with torch.inference_mode():
                out = model.generate(
                    **ids,
                    max_new_tokens=new_tokens,
                    min_new_tokens=new_tokens,
                    do_sample=False,
                    eos_token_id=None,
                    pad_token_id=tokenizer.pad_token_id,
                )
            cache[(prompt, new_tokens)] = out[0, ids.input_ids.shape[1] :].tolist()
        return cache[(prompt, new_tokens)]

    return generate
