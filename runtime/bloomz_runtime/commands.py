"""What rank 0 tells the other ranks, and the channel it travels on.

All ranks run the same forward passes in the same order (tensor parallelism needs every rank in
every collective). Rank 0 decides; each decision is one small picklable command broadcast over
a gloo group before any rank acts on it.
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


class ControlChannel:
    def __init__(self, ctx: DistContext) -> None:
        self.ctx = ctx

    def send(self, command: Command) -> None:
        """Rank 0: publish a command to every other rank (no-op with a single rank)."""
        if self.ctx.world_size == 1:
            return
        self._broadcast(command)

    def receive(self) -> Command:
        """Other ranks: block until rank 0 sends the next command."""
        command = self._broadcast(None)
        if not isinstance(command, Step | Heartbeat | Shutdown):
            raise RuntimeError(f"unexpected control message {command!r}")
        return command

    def _broadcast(self, command: Any) -> Any:
        import torch.distributed as dist

        box = [command]
        dist.broadcast_object_list(box, src=0, group=self.ctx.control_group)
        return box[0]
