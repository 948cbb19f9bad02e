"""Fixtures shared by the whole suite."""

from __future__ import annotations

import sys
from pathlib import Path

import pytest

# tests/helpers.py is imported as `helpers` (and `tests.helpers`) from any test folder.
sys.path.insert(0, str(Path(__file__).resolve().parent))


@pytest.fixture(scope="session")
def tiny_checkpoint(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The deterministic tiny BLOOM checkpoint (random weights, local tokenizer), built once per session."""
    from bloomz_runtime.tiny import build_checkpoint

    return build_checkpoint(tmp_path_factory.mktemp("tiny-bloom") / "checkpoint", "tiny")
