"""How one call's shards run at once: as tasks (async client) or threads (blocking client).

The one part of the two clients written twice, on purpose: everything else of
:class:`ConvClient` is generated from :class:`AsyncConvClient` (``scripts/unasync.py``),
which names ``AsyncShards`` and ``asleep`` where the generated code names ``Shards`` and
``sleep``. Both runners send the shards ``width`` at a time, hand each answer to ``done``
in the order they come, and on the first failure stop the others and raise it.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Awaitable, Callable
from concurrent.futures import ThreadPoolExecutor, as_completed
from typing import TypeVar

import anyio

R = TypeVar("R")

sleep = time.sleep


async def asleep(seconds: float) -> None:
    await anyio.sleep(seconds)


class AsyncShards:
    """Shards as tasks of one task group; a failure cancels the group's scope."""

    def __init__(self, width: int) -> None:
        self.width = width

    def check(self) -> None:
        """Nothing to check: a failed call's tasks are cancelled where they wait."""

    async def run(
        self, count: int, send: Callable[[int], Awaitable[R]], done: Callable[[int, R], None]
    ) -> None:
        if count == 1:  # no task to start
            done(0, await send(0))
            return
        limiter = anyio.CapacityLimiter(self.width)
        failures: list[Exception] = []

        async def one(index: int) -> None:
            try:
                async with limiter:
                    answer = await send(index)
            except Exception as exc:
                failures.append(exc)
                tasks.cancel_scope.cancel()  # the other shards stop: this call fails now
                return
            done(index, answer)

        async with anyio.create_task_group() as tasks:
            for index in range(count):
                tasks.start_soon(one, index)
        if failures:
            raise failures[0]


class Shards:
    """Shards on a pool of threads; a failure stops the others at their next try."""

    def __init__(self, width: int) -> None:
        self.width = width
        self.cancelled = threading.Event()

    def check(self) -> None:
        """Raise if the call has failed on another shard (a thread cannot be cancelled)."""
        if self.cancelled.is_set():
            raise RuntimeError("the call failed on another shard")

    def run(self, count: int, send: Callable[[int], R], done: Callable[[int, R], None]) -> None:
        if count == 1:  # no thread to start
            done(0, send(0))
            return
        threads = ThreadPoolExecutor(self.width, "convengine-shard")
        try:
            futures = {threads.submit(send, index): index for index in range(count)}
            for future in as_completed(futures):
                done(futures[future], future.result())
        except BaseException:
            self.cancelled.set()  # shards under way stop at their next try; this call fails now
            raise
        finally:
            threads.shutdown(wait=not self.cancelled.is_set(), cancel_futures=True)
