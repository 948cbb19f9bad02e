"""Prompts and the reference type of the runtime tests (the `hf_greedy` fixture: tests/conftest.py)."""

from __future__ import annotations

from collections.abc import Callable

PROMPTS = [
    "DeepSpeed is a machine learning framework",
    "Hello",
    "The quick brown fox jumps over the lazy dog",
    "Kubernetes runs containers in pods, schedules them on nodes and restarts them",
]

Reference = Callable[[str, int], list[int]]
