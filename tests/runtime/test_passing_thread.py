"""in_passing_thread: the result or error of the call, from a thread that has ended by then."""

from __future__ import annotations

import asyncio
import threading

import pytest
from bloomz_runtime.passing_thread import in_passing_thread


def test_returns_the_result_from_a_thread_that_has_ended() -> None:
    ran_in: list[threading.Thread] = []

    def work(a: int, b: int) -> int:
        ran_in.append(threading.current_thread())
        return a * b

    result = asyncio.run(in_passing_thread(work, 6, 7, name="load"))
    assert result == 42
    assert ran_in[0] is not threading.main_thread()
    assert ran_in[0].name == "load"
    ran_in[0].join(timeout=5)
    assert not ran_in[0].is_alive()


def test_each_call_gets_a_new_thread() -> None:
    seen: list[threading.Thread] = []

    async def twice() -> None:
        for _ in range(2):
            await in_passing_thread(lambda: seen.append(threading.current_thread()))

    asyncio.run(twice())
    assert seen[0] is not seen[1]


def test_raises_the_error_of_the_call() -> None:
    def fail() -> None:
        raise ValueError("no such checkpoint")

    with pytest.raises(ValueError, match="no such checkpoint"):
        asyncio.run(in_passing_thread(fail))


def test_the_event_loop_runs_meanwhile() -> None:
    release = threading.Event()
    ticks: list[int] = []

    async def main() -> None:
        async def tick() -> None:
            ticks.append(1)
            release.set()

        task = asyncio.ensure_future(in_passing_thread(lambda: release.wait(timeout=10)))
        await tick()
        assert await task is True

    asyncio.run(main())
    assert ticks == [1]
