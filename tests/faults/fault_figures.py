"""One fault's figures and the table they make (the fault-injection suite's report format)."""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass, field


@dataclass
class FaultRow:
    fault: str
    happened: str = ""
    sent: int = 0
    codes: Counter[str] = field(default_factory=Counter)  # OK or a gRPC status code name, per request
    recover_s: float | None = None  # fault -> detected and answered (or serving again)
    # Codes that mean "refused at the door" (never accepted) in this row.
    refused: frozenset[str] = frozenset({"RESOURCE_EXHAUSTED", "INVALID_ARGUMENT"})

    @property
    def accepted(self) -> int:
        """Taken into the queue: ended with a result or a code other than the refusals at the door."""
        return sum(n for code, n in self.codes.items() if code not in self.refused)

    def markdown(self) -> str:
        failed = ", ".join(f"{n} {code}" for code, n in sorted(self.codes.items()) if code != "OK") or "none"
        recover = f"{self.recover_s:.1f} s" if self.recover_s is not None else "-"
        if not self.sent:  # a fault of the control plane: no client requests in this row
            return f"| {self.fault} | {self.happened} | - | - | - | - | {recover} |"
        return (
            f"| {self.fault} | {self.happened} | {self.sent} | {self.accepted} | {self.codes.get('OK', 0)} "
            f"| {failed} | {recover} |"
        )


class FaultReport:
    def __init__(self) -> None:
        self.rows: list[FaultRow] = []

    def row(self, fault: str) -> FaultRow:
        row = FaultRow(fault)
        self.rows.append(row)
        return row

    def markdown(self) -> str:
        head = (
            "| fault | what happened | requests sent | accepted | completed | failed (code) | recovery |\n"
            "|---|---|---|---|---|---|---|"
        )
        return "\n".join([head, *(r.markdown() for r in self.rows)])
