"""Admission: at most so many computations at once, so many more waiting, and 503 beyond."""

from __future__ import annotations

from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from functools import partial
from typing import TypeVar

import anyio.to_thread
from anyio import CapacityLimiter
from starlette.requests import Request

from app import metrics
from app.errors import Overloaded

__all__ = ["Gate"]

T = TypeVar("T")


class Gate:
    """At most ``slots`` computations at once and ``waiting`` more in line; beyond, 503."""

    def __init__(self, slots: int, waiting: int) -> None:
        self.limiter = CapacityLimiter(slots)
        self.capacity = slots + waiting
        self.admitted = 0  # touched only on the event loop: no lock needed

    @asynccontextmanager
    async def admit(self) -> AsyncIterator[None]:
        if self.admitted >= self.capacity:
            raise Overloaded(
                f"all {self.capacity} computation and waiting places are taken: retry shortly",
                loc=(),
                headers={"Retry-After": "1"},
            )
        self.admitted += 1
        metrics.ADMITTED.inc()
        try:
            yield
        finally:
            self.admitted -= 1
            metrics.ADMITTED.dec()

    async def run(self, work: Callable[[], T]) -> T:
        """``work()`` in a worker thread, once a computation slot is free."""
        return await anyio.to_thread.run_sync(work, limiter=self.limiter)

    async def serve(self, request: Request, work: Callable[[bytes], T]) -> T:
        """Admit ``request``, read its body, and run ``work(body)`` in a computation slot.

        The body is read only once admitted, so refused requests hold no memory.
        """
        async with self.admit():
            body = await request.body()
            return await self.run(partial(work, body))
