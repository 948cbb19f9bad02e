"""Pure rules of the scale subresource: the label selector string in `status.selector`, and whether a spec
change keeps the measured latency (a change of `replicas` alone does: the pods that serve are the same)."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from .groups import current_template_hash
from .settings import Settings
from .spec import InferenceSpec


def selector_string(labels: Mapping[str, str]) -> str:
    """`a=1,b=2`: the form `status.selector` takes (labelSelectorPath), sorted so it never flaps."""
    return ",".join(f"{key}={value}" for key, value in sorted(labels.items()))


def _measured_the_same_way(old: InferenceSpec, new: InferenceSpec) -> bool:
    # The interval says when to measure again, not what is measured.
    a, b = old.benchmark, new.benchmark
    return (a.enabled, a.prompt, a.max_new_tokens, a.warmup, a.iterations) == (
        b.enabled,
        b.prompt,
        b.max_new_tokens,
        b.warmup,
        b.iterations,
    )


def keeps_latency(
    latency: Mapping[str, Any] | None, old: InferenceSpec, new: InferenceSpec, settings: Settings
) -> bool:
    """Whether `status.latency` still describes the resource after the spec went from `old` to `new`: it
    was measured on pods of the new template hash, with the same benchmark request."""
    if not latency:
        return False
    return latency.get("templateHash") == current_template_hash(new, settings) and _measured_the_same_way(
        old, new
    )
