"""The fault-injection suite's figures: each test records one row (fault, what happened, requests
accepted / completed / failed by status code, time to recover); at the end of the session the rows
are written as JSON and as a Markdown table to $BLOOMZ_FAULTS_REPORT (default: the session's temporary
folder) and printed, so docs/reliability.md can quote a run."""

from __future__ import annotations

import json
import os
from collections.abc import Iterator
from dataclasses import asdict
from pathlib import Path

import pytest
from fault_figures import FaultReport


@pytest.fixture(scope="session")
def fault_report(tmp_path_factory: pytest.TempPathFactory) -> Iterator[FaultReport]:
    report = FaultReport()
    yield report
    if not report.rows:
        return
    target = Path(os.environ.get("BLOOMZ_FAULTS_REPORT") or tmp_path_factory.mktemp("faults") / "faults.md")
    target.parent.mkdir(parents=True, exist_ok=True)
    target.write_text(report.markdown() + "\n")
    rows = [
        {**asdict(r), "codes": dict(r.codes), "refused": sorted(r.refused), "accepted": r.accepted}
        for r in report.rows
    ]
    target.with_suffix(".json").write_text(json.dumps(rows, indent=1) + "\n")
    print(f"\nfault figures ({target}):\n{report.markdown()}")
