"""Fixtures shared by the whole suite."""

from __future__ import annotations

import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

# tests/helpers.py is imported as `helpers` (and `tests.helpers`) from any test folder.
sys.path.insert(0, str(Path(__file__).resolve().parent))


@pytest.fixture(scope="session")
def tiny_checkpoint(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The deterministic tiny BLOOM checkpoint (random weights, local tokenizer), built once per session."""
    from bloomz_runtime.tiny import build_checkpoint

    return build_checkpoint(tmp_path_factory.mktemp("tiny-bloom") / "checkpoint", "tiny")


@pytest.fixture(scope="session")
def tokenizer(tiny_checkpoint: Path) -> Any:
    """The tiny checkpoint's tokenizer, loaded as a real checkpoint's is."""
    from transformers import AutoTokenizer

    return AutoTokenizer.from_pretrained(tiny_checkpoint)


@pytest.fixture(scope="session")
def hf_greedy(tiny_checkpoint: Path) -> Callable[[str, int], list[int]]:
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
