"""The engine thread's events reach the event loop in order, with one wake-up per batch of them."""

from __future__ import annotations

import asyncio
import threading
from typing import Any

from bloomz_runtime.requests import Event, FinishedEvent, TokenEvent
from bloomz_runtime.server import EventRelay


def test_events_posted_before_the_loop_runs_share_one_wake_up() -> None:
    async def main() -> tuple[int, int, list[list[Event]]]:
        loop = asyncio.get_running_loop()
        wake_ups: list[Any] = []
        schedule = loop.call_soon_threadsafe

        def counting(callback: Any, *args: Any) -> Any:
            wake_ups.append(callback)
            return schedule(callback, *args)

        loop.call_soon_threadsafe = counting  # type: ignore[method-assign,assignment]
        relay = EventRelay(loop)
        queues: list[asyncio.Queue[Event]] = [asyncio.Queue() for _ in range(3)]

        def engine_steps() -> None:  # three steps of three rows, then the rows finish
            for step in range(3):
                for row, queue in enumerate(queues):
                    relay.post(queue, TokenEvent(f"s{step}", row))
            for queue in queues:
                relay.post(queue, FinishedEvent("length", ""))

        # The loop is blocked while the engine thread posts (as when it is busy elsewhere).
        engine = threading.Thread(target=engine_steps)
        engine.start()
        engine.join()
        first = len(wake_ups)
        received = [[await queue.get() for _ in range(4)] for queue in queues]
        relay.post(queues[0], TokenEvent("later", 0))
        assert await queues[0].get() == TokenEvent("later", 0)
        return first, len(wake_ups), received

    first, total, received = asyncio.run(main())
    assert first == 1 and total == 2
    for row, events in enumerate(received):
        assert events == [*(TokenEvent(f"s{s}", row) for s in range(3)), FinishedEvent("length", "")]
