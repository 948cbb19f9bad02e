"""Run model work that comes before serving in a thread that ends with it.

libgomp (torch's OpenMP) keeps a pool of worker threads for every thread that ran a parallel
region, for as long as that thread lives. Once the pools' threads outnumber the cores, every team
spins only briefly at its barriers before sleeping on a futex, so each op of a decode step pays
for wake-ups. Loading in asyncio's executor (whose threads stay) left such a pool beside the
engine thread's: a 560m float32 decode step on 2 cores took 1.25x as long as with one pool.
"""

from __future__ import annotations

import asyncio
import threading
from collections.abc import Callable
from typing import TypeVar

T = TypeVar("T")


async def in_passing_thread(fn: Callable[..., T], *args: object, name: str = "passing") -> T:
    """``fn(*args)`` in a new thread, awaited; the thread (and its OpenMP pool) ends when it returns."""
    loop = asyncio.get_running_loop()
    done: asyncio.Future[T] = loop.create_future()

    def settle(result: T | None, error: BaseException | None) -> None:
        if done.cancelled():
            return
        if error is not None:
            done.set_exception(error)
        else:
            done.set_result(result)  # type: ignore[arg-type]

    def run() -> None:
        try:
            result = fn(*args)
        except BaseException as error:  # handed to the awaiting coroutine
            loop.call_soon_threadsafe(settle, None, error)
        else:
            loop.call_soon_threadsafe(settle, result, None)

    # A daemon: a process told to stop while loading exits without waiting for the load.
    threading.Thread(target=run, name=name, daemon=True).start()
    return await done
