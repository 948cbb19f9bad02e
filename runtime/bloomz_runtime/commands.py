"""What rank 0 tells the other ranks, and the channel it travels on.

All ranks run the same forward passes in the same order (tensor parallelism needs every rank in
every collective). Rank 0 decides; each decision is broadcast over a gloo group before any rank
acts on it. Most steps only decode one token per row: those (and heartbeats, shutdowns) travel as
one fixed-size integer tensor; only steps that drop or admit rows are pickled, after a header
that says one follows. With a single rank nothing is sent.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from bloomz_runtime.dist import DistContext


@dataclass(frozen=True)
class Step:
    """One engine iteration: drop finished rows, decode one token for the rest, prefill new rows."""

    drop: tuple[str, ...] = ()
    # One input token per remaining row, in row order.
    decode: tuple[int, ...] = ()
    # (row id, prompt token ids) of rows joining the batch.
    admit: tuple[tuple[str, tuple[int, ...]], ...] = ()
    # Whether any row needs every logit (it samples or penalizes repetition); else greedy ids do.
    logits: bool = True


@dataclass(frozen=True)
class Heartbeat:
    """Sent when idle so waiting ranks can tell a quiet leader from a dead one."""


@dataclass(frozen=True)
class Shutdown:
    """The leader has drained; every rank exits 0."""


Command = Step | Heartbeat | Shutdown

# The header's first field: what it carries.
PICKLED, DECODE, HEARTBEAT, SHUTDOWN = 0, 1, 2, 3
HEADER_FIELDS = 3  # kind, logits flag, row count; then one token per row


def encode(command: Command, rows: int) -> list[int]:
    """The fixed-size header (``HEADER_FIELDS + rows`` integers) of a command; kind PICKLED when
    the command itself must follow (it drops or admits rows, or decodes more than ``rows``)."""
    header = [PICKLED, 0, 0] + [0] * rows
    if isinstance(command, Heartbeat):
        header[0] = HEARTBEAT
    elif isinstance(command, Shutdown):
        header[0] = SHUTDOWN
    elif not command.drop and not command.admit and len(command.decode) <= rows:
        header[:HEADER_FIELDS] = [DECODE, int(command.logits), len(command.decode)]
        header[HEADER_FIELDS : HEADER_FIELDS + len(command.decode)] = command.decode
    return header


def decode(header: list[int]) -> Command | None:
    """The command a header carries; None when a pickled one follows."""
    kind = header[0]
    if kind == HEARTBEAT:
        return Heartbeat()
    if kind == SHUTDOWN:
        return Shutdown()
    if kind == DECODE:
        count = header[2]
        return Step(decode=tuple(header[HEADER_FIELDS : HEADER_FIELDS + count]), logits=bool(header[1]))
    if kind == PICKLED:
        return None
    raise RuntimeError(f"unexpected control header kind {kind}")


class ControlChannel:
    """``rows``: the most rows a step decodes (the batch limit), so every header has the same size."""

    def __init__(self, ctx: DistContext, rows: int = 64) -> None:
        self.ctx = ctx
        self.rows = rows

    def send(self, command: Command) -> None:
        """Rank 0: publish a command to every other rank (no-op with a single rank)."""
        if self.ctx.world_size == 1:
            return
        if self._header(encode(command, self.rows)) is None:
            self._broadcast_object(command)

    def receive(self) -> Command:
        """Other ranks: block until rank 0 sends the next command."""
        command = self._header([0] * (HEADER_FIELDS + self.rows))
        if command is None:
            command = self._broadcast_object(None)
        if not isinstance(command, Step | Heartbeat | Shutdown):
            raise RuntimeError(f"unexpected control message {command!r}")
        return command

    def _header(self, header: list[int]) -> Command | None:
        import torch
        import torch.distributed as dist

        tensor = torch.tensor(header, dtype=torch.long)
        dist.broadcast(tensor, src=0, group=self.ctx.control_group)
        return decode(tensor.tolist())

    def _broadcast_object(self, command: Any) -> Any:
        import torch.distributed as dist

        box = [command]
        dist.broadcast_object_list(box, src=0, group=self.ctx.control_group)
        return box[0]
