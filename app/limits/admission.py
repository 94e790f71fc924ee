"""Admission: memory reserved before a body is read, then a computation place; 503 beyond.

A request goes through :meth:`Gate.serve` in four steps (refused at once with 503 if every
computation and waiting place is taken, before it uploads anything):

1. it reserves what it is expected to hold from the memory budget (its declared length times
   the format's expansion, :func:`app.limits.body.reading_cost`), waiting in a bounded line
   for room;
2. it reads its body, holding those bytes but no computation place, so a stalled upload
   holds memory (bounded by the body timeout) and never a computation;
3. in a computation place (held until step 4 ends) it decodes and validates in a thread,
   then resizes its reservation to its arrays, work and answer (waiting again if need be);
4. it computes and encodes in a thread, and holds its answer's bytes until the answer has
   been sent (:class:`Answer`).

Computations run in a pool of ``slots`` threads of their own, so that the engine's per-thread
work buffers exist in at most ``slots`` threads, and in the one thread where the engine
computes the second half of a large batch (``convengine._halves``), shared by all slots.
"""

from __future__ import annotations

import asyncio
import contextvars
import time
from collections.abc import AsyncIterator, Callable
from concurrent.futures import ThreadPoolExecutor
from contextlib import asynccontextmanager
from functools import partial
from typing import Protocol, TypeVar

from anyio import CapacityLimiter
from starlette.requests import Request
from starlette.responses import Response
from starlette.types import Receive, Scope, Send

from app import metrics
from app.errors import InvalidInput, Overloaded, PayloadTooLarge

from .memory import MemoryBudget, MiB, Reservation

__all__ = ["Answer", "Gate", "Prepared"]

T = TypeVar("T")
CHUNK = 1 * MiB  # an answer is sent in pieces, so that a client that reads slowly waits on it


class Prepared(Protocol):
    """A decoded and validated request, ready to compute."""

    @property
    def need(self) -> int:
        """Bytes it holds from now to its answer: decoded arrays, work and encoded answer."""

    def finish(self) -> tuple[bytes, dict[str, str]]:
        """Compute and encode: the answer's body and headers."""


class Answer(Response):
    """A response sent in pieces of CHUNK bytes; its reservation is released once it is sent.

    The transport buffers little beyond one piece, so the answer's bytes stay counted in the
    budget for as long as the client takes to read them.
    """

    def __init__(self, content: bytes, headers: dict[str, str], reservation: Reservation) -> None:
        super().__init__(content, headers=headers)
        self.reservation = reservation

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        try:
            await send({"type": "http.response.start", "status": 200, "headers": self.raw_headers})
            body = self.body
            for start in range(0, max(len(body), 1), CHUNK):
                more = start + CHUNK < len(body)
                await send(
                    {
                        "type": "http.response.body",
                        "body": body[start : start + CHUNK],
                        "more_body": more,
                    }
                )
        finally:
            self.reservation.release()


class Gate:
    """At most ``slots`` computations at once and ``waiting`` more in line; beyond, 503.

    ``memory``: the budget requests reserve from (none: unbounded, for tests of the places).
    """

    def __init__(self, slots: int, waiting: int, memory: MemoryBudget | None = None) -> None:
        self.limiter = CapacityLimiter(slots)
        self.executor = ThreadPoolExecutor(max_workers=slots, thread_name_prefix="convengine")
        self.capacity = slots + waiting
        self.admitted = 0  # touched only on the event loop: no lock needed
        self.memory = memory or MemoryBudget(1 << 62, waiting, 60.0)

    @property
    def can_admit(self) -> bool:
        """Whether a new request would be let in line (for readiness)."""
        return self.admitted < self.capacity and not self.memory.line_full

    def check_places(self) -> None:
        """503 if every computation and waiting place is taken."""
        if self.admitted >= self.capacity:
            raise Overloaded(
                f"all {self.capacity} computation and waiting places are taken: retry shortly",
                loc=(),
                headers={"Retry-After": "1"},
            )

    @asynccontextmanager
    async def admit(self) -> AsyncIterator[None]:
        self.check_places()
        self.admitted += 1
        metrics.ADMITTED.inc()
        try:
            yield
        finally:
            self.admitted -= 1
            metrics.ADMITTED.dec()

    async def run(self, work: Callable[[], T], waited: list[float] | None = None) -> T:
        """``work()`` in a computation thread, once a computation slot is free; the time it
        waited for the slot is appended to ``waited``."""
        asked = time.perf_counter()
        async with self.limiter:
            if waited is not None:
                waited.append(time.perf_counter() - asked)
            context = contextvars.copy_context()  # the request id reaches the thread's logs
            loop = asyncio.get_running_loop()
            return await loop.run_in_executor(self.executor, context.run, work)

    async def serve(
        self,
        request: Request,
        least: int,
        expected: int,
        prepare: Callable[[bytes, Reservation], Prepared],
    ) -> Response:
        """Reserve, read, prepare, resize, finish: the answer to ``request`` (see the module).

        ``least``: what reading and decoding the body holds for sure; more than the whole
        budget is a 413. ``expected``: what the whole request is expected to hold, reserved up
        front (up to the whole budget) so that it rarely needs more once decoded.
        """
        reservation = Reservation(self.memory)
        try:
            self.check_places()  # no upload, nor memory, for a request that would be refused
            if least > self.memory.total:
                raise self._body_too_big(least)
            await reservation.resize(min(expected, self.memory.total), self._body_too_big)
            body = await request.body()
            # One place from decoding to the answer, so that work decoded is never refused;
            # a thread only while decoding and while computing.
            waited: list[float] = []
            async with self.admit():
                prepared = await self.run(partial(prepare, body, reservation), waited)
                need = len(body) + prepared.need
                await reservation.resize(need, self._work_too_big)
                reservation.settle()  # from here on it only gives back
                content, headers = await self.run(prepared.finish, waited)
            metrics.QUEUE_SECONDS.observe(sum(waited))
            del prepared  # its arrays: only the answer and the body remain
            await reservation.resize(len(body) + len(content), self._work_too_big)  # shrinks
            return Answer(content, headers, reservation)
        except BaseException:
            reservation.release()
            raise

    def _body_too_big(self, nbytes: int) -> PayloadTooLarge:
        # The body alone (and its decoding) would not fit in the whole budget.
        return PayloadTooLarge(
            f"reading and decoding this body would hold about {nbytes / MiB:,.0f} MiB, more "
            f"than this replica's memory budget of {self.memory.total / MiB:,.0f} MiB",
            loc=("header", "content-length"),
        )

    def _work_too_big(self, nbytes: int) -> InvalidInput:
        # The validated request (arrays, work, answer) would not fit in the whole budget.
        return InvalidInput(
            f"this request would hold about {nbytes / MiB:,.0f} MiB (its arrays, working "
            f"memory and answer), more than this replica's memory budget of "
            f"{self.memory.total / MiB:,.0f} MiB: send a smaller batch or image",
            type="memory_budget",
        )
