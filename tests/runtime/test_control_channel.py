"""The control channel: decode-only steps, heartbeats and shutdowns travel as one fixed-size header;
steps that drop or admit rows are pickled after it. Pure encoding, then two real gloo ranks."""

from __future__ import annotations

import multiprocessing
import os
from typing import Any

import pytest
from bloomz_runtime.commands import (
    DECODE,
    HEADER_FIELDS,
    PICKLED,
    Command,
    ControlChannel,
    Heartbeat,
    Shutdown,
    Step,
    decode,
    encode,
)
from bloomz_runtime.dist import DistContext

from tests.helpers import free_port

ROWS = 4
COMMANDS: list[Command] = [
    Step(decode=(7, 250879, 0), logits=False),
    Step(decode=(1, 2, 3, 4), logits=True),
    Heartbeat(),
    Step(drop=("r1",), decode=(5,)),
    Step(admit=(("r9", (1, 2, 3)),), logits=False),
    Step(decode=(1, 2, 3, 4, 5)),  # more rows than the header holds
    Step(),
    Shutdown(),
]


@pytest.mark.parametrize("command", COMMANDS, ids=repr)
def test_every_command_survives_its_header(command: Command) -> None:
    header = encode(command, ROWS)
    assert len(header) == HEADER_FIELDS + ROWS
    carried = decode(header)
    if carried is None:
        assert header[0] == PICKLED and isinstance(command, Step)
    else:
        assert carried == command


def test_only_plain_decode_steps_skip_pickling() -> None:
    assert encode(Step(decode=(3, 4), logits=False), ROWS)[:HEADER_FIELDS] == [DECODE, 0, 2]
    assert encode(Step(decode=(3,), drop=("a",)), ROWS)[0] == PICKLED
    assert encode(Step(decode=(3,), admit=(("b", (1,)),)), ROWS)[0] == PICKLED
    assert encode(Step(decode=tuple(range(ROWS + 1))), ROWS)[0] == PICKLED


def test_an_unknown_header_kind_is_an_error() -> None:
    with pytest.raises(RuntimeError, match="kind 9"):
        decode([9, 0, 0] + [0] * ROWS)


def _rank(rank: int, port: int, results: Any) -> None:
    import datetime

    import torch.distributed as dist

    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port))
    dist.init_process_group("gloo", rank=rank, world_size=2, timeout=datetime.timedelta(seconds=60))
    try:
        ctx = DistContext(rank, 2, rank, control_group=dist.group.WORLD)
        channel = ControlChannel(ctx, ROWS)
        if rank == 0:
            for command in COMMANDS:
                channel.send(command)
        else:
            results.extend([channel.receive() for _ in COMMANDS])
    finally:
        dist.destroy_process_group()


def test_two_ranks_receive_every_command_in_order() -> None:
    spawn = multiprocessing.get_context("spawn")
    with spawn.Manager() as manager:
        received = manager.list()
        port = free_port()
        ranks = [spawn.Process(target=_rank, args=(r, port, received)) for r in (0, 1)]
        for p in ranks:
            p.start()
        for p in ranks:
            p.join(120)
        codes = [p.exitcode for p in ranks]
        for p in ranks:
            if p.is_alive():
                p.kill()
        assert codes == [0, 0]
        assert list(received) == COMMANDS
