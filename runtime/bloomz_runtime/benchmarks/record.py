"""Where benchmark runs are recorded (pure text functions): BENCHMARKS.md opens with a summary table of the
newest run's targets, then that run in full; every earlier run moves to docs/benchmarks-history.md, newest
first."""

from __future__ import annotations

import re
from collections.abc import Mapping, Sequence
from typing import Any

from bloomz_runtime.benchmarks.report import TARGET_SHAPES, TargetCheck, target_checks

COMMAND = "make bench"
HEADER = f"""# Benchmarks

Produced by `python -m bloomz_runtime.benchmarks` (`{COMMAND}`); docs/client.md says what each row measures.
Ratios compare systems measured in the same session on the same checkpoint; absolute numbers depend on the
machine and its load. Earlier runs, newest first: [docs/benchmarks-history.md](docs/benchmarks-history.md).
"""
HISTORY_HEADER = """# Benchmark history

Every earlier run of `python -m bloomz_runtime.benchmarks`, newest first (the newest is in
[BENCHMARKS.md](../BENCHMARKS.md)).
"""
# A run's section starts with its dated heading: "## 2026-11-28 21:22 UTC - <machine>".
_RUN_HEADING = re.compile(r"^## \d{4}-\d{2}-\d{2}", re.MULTILINE)


def runs(text: str | None) -> list[str]:
    """The run sections of a BENCHMARKS.md or history file, in file order (each ends with a newline)."""
    starts = [match.start() for match in _RUN_HEADING.finditer(text or "")]
    if not text or not starts:
        return []
    ends = [*starts[1:], len(text)]
    return [text[start:end].rstrip("\n") + "\n" for start, end in zip(starts, ends, strict=True)]


def summary(checks: Mapping[str, Sequence[TargetCheck]], heading: str) -> str:
    """The summary table: every target of the newest run, where it stands, and where it was measured."""
    when_where = heading.removeprefix("## ").strip()
    lines = [
        "## Summary",
        "",
        f"Newest run: {when_where}; command `{COMMAND}`.",
        "",
        "| shape | target | measured | wanted | |",
        "|---|---|---|---|---|",
    ]
    for shape, shape_checks in checks.items():
        for check in shape_checks:
            status = "met" if check.met else "MISSED"
            lines.append(f"| {shape} | {check.name} | {check.value:.2f} | {check.target} | {status} |")
    if len(lines) == 6:
        lines.append("| - | no target was measured in this run | | | |")
    return "\n".join(lines) + "\n"


def checks_of(results: Mapping[str, Any]) -> dict[str, list[TargetCheck]]:
    """The target checks of the shapes that have targets, from one run's results."""
    shapes = results.get("shapes", {})
    return {name: target_checks(shapes[name], name) for name in TARGET_SHAPES if name in shapes}


def record(
    current: str | None, history: str | None, section: str, checks: Mapping[str, Sequence[TargetCheck]]
) -> tuple[str, str]:
    """(BENCHMARKS.md, history) after a new run: the summary and `section` in the first, the run that was
    there before it on top of the second."""
    (heading, *_) = section.splitlines() or [""]
    benchmarks = "\n".join([HEADER, summary(checks, heading), section.rstrip("\n") + "\n"])
    older = runs(current) + runs(history)
    history_text = "\n".join([HISTORY_HEADER, *older]) if older else HISTORY_HEADER
    return benchmarks, history_text
