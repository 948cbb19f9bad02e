"""Prompts and the reference type shared by the runtime tests (the fixture is in conftest.py)."""

from __future__ import annotations

from collections.abc import Callable

PROMPTS = [
    "DeepSpeed is a machine learning framework",
    "Hello",
    "The quick brown fox jumps over the lazy dog",
    "Kubernetes runs containers in pods, schedules them on nodes and restarts them",
]

Reference = Callable[[str, int], list[int]]
