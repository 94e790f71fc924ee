"""Admission: a computation place, and memory reserved from the budget; 503 beyond.

:class:`Gate` only admits; :func:`app.pipeline.serve` uses it in this order, top to bottom:

1. :meth:`Gate.check_places` refuses at once with 503 if every computation and waiting place
   is taken, before the request uploads anything, and :meth:`Gate.check_body` with 413 a
   body whose declared length could never be read within the whole budget;
2. :meth:`Gate.grow` reserves memory as the body arrives: what reading and decoding the
   bytes received so far holds (:func:`app.limits.body.holding`), a step ahead, its first
   bytes waiting in a bounded line for room; a body that has not arrived holds no memory and
   no computation place, so a stalled upload keeps no one else waiting;
3. inside :meth:`Gate.admit` (a place from decoding to the answer), :meth:`Gate.run` decodes
   and validates in a computation thread, :meth:`Gate.hold` resizes the reservation to the
   arrays, work and answer (waiting again if need be; a request that could never fit the
   budget is a 422 naming it), and :meth:`Gate.run` computes and encodes;
4. the answer's bytes stay reserved until the answer has been sent (:class:`Answer`).

Computations run in a pool of ``slots`` threads of their own, so that the engine's per-thread
work buffers exist in at most ``slots`` threads, and in the one thread where the engine
computes the second half of a large batch (``convengine._kernels.halves``), shared by all slots.
"""

from __future__ import annotations

import asyncio
import contextvars
import time
from collections.abc import AsyncIterator, Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from contextlib import asynccontextmanager
from typing import TypeVar

from anyio import CapacityLimiter
from starlette.responses import Response
from starlette.types import Receive, Scope, Send

from app import metrics
from app.encoding import CODED
from app.errors import InvalidInput, Overloaded, PayloadTooLarge

from .memory import MemoryBudget, MiB, Reservation

__all__ = ["Answer", "Gate"]

T = TypeVar("T")
CHUNK = 1 * MiB  # an answer is sent in pieces, so that a client that reads slowly waits on it
READY_ROOM = 1 * MiB  # ready while this much of the memory budget is free


class Answer(Response):
    """A response sent piece by piece (pieces of at most CHUNK bytes); its reservation is
    released once it is sent.

    The transport buffers little beyond one piece, so the answer's bytes stay counted in the
    budget for as long as the client takes to read them.
    """

    def __init__(
        self, pieces: list[bytes], headers: dict[str, str], reservation: Reservation
    ) -> None:
        length = sum(len(piece) for piece in pieces)
        super().__init__(headers={**headers, "content-length": str(length)})
        self.pieces = pieces
        self.reservation = reservation

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        try:
            # Coded (gzip or not) where it was made: the gzip middleware passes it on as it is.
            await send(
                {
                    "type": "http.response.start",
                    "status": 200,
                    "headers": self.raw_headers,
                    CODED: True,
                }
            )
            sent = _cut(self.pieces)
            piece = next(sent, b"")
            for following in sent:
                await send({"type": "http.response.body", "body": piece, "more_body": True})
                piece = following
            await send({"type": "http.response.body", "body": piece, "more_body": False})
        finally:
            self.reservation.release()


def _cut(pieces: list[bytes]) -> Iterator[bytes]:
    """The pieces as messages of at most CHUNK bytes: small ones joined (a small answer is one
    message, one write, as a tiny request's three .npz pieces would otherwise be three), larger
    ones cut (a nested-list JSON answer is one piece)."""
    pending: list[bytes] = []
    size = 0
    for piece in filter(None, pieces):  # an empty piece is no message
        if pending and size + len(piece) > CHUNK:
            yield b"".join(pending)
            pending, size = [], 0
        if len(piece) > CHUNK:
            yield from (piece[start : start + CHUNK] for start in range(0, len(piece), CHUNK))
            continue
        pending.append(piece)
        size += len(piece)
    if pending:
        yield b"".join(pending)


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
        room = self.memory.total - self.memory.used >= READY_ROOM
        return self.admitted < self.capacity and not self.memory.line_full and room

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

    def reservation(self) -> Reservation:
        """A new, empty reservation from this gate's memory budget."""
        return Reservation(self.memory)

    def check_body(self, nbytes: int) -> None:
        """413 for a body that would hold ``nbytes`` while read, more than the whole budget."""
        if nbytes > self.memory.total:
            raise self._body_too_big(nbytes)

    def check_need(self, nbytes: int) -> None:
        """422 for a request that would hold ``nbytes``, more than the whole budget."""
        if nbytes > self.memory.total:
            raise self._work_too_big(nbytes)

    async def grow(self, reservation: Reservation, nbytes: int) -> None:
        """Grow ``reservation`` to ``nbytes`` as a body arrives (waiting in line for its first
        bytes); 413 beyond the whole budget."""
        await reservation.resize(max(nbytes, reservation.held), self._body_too_big)

    async def hold(self, reservation: Reservation, nbytes: int) -> None:
        """Resize ``reservation`` to what a validated request holds; 422 beyond the budget."""
        await reservation.resize(nbytes, self._work_too_big)

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
