"""Admission by memory: one budget of bytes for the process, from which every request reserves
what it will hold before it holds it.

The budget comes from the container's memory limit less what the process holds anyway, or
from ``CONVENGINE_MEMORY_BUDGET_MB`` (:meth:`app.config.Settings.memory_budget`). A request
reserves its body before reading it, grows the reservation to its decoded arrays, work and
answer once they are known, and gives it back when its answer has been sent. A reservation
that does not fit waits in a bounded line, first come first served, for a bounded time;
beyond either bound the request is refused with 503 and Retry-After. What a codec allocates
beyond its reservation mid-request (an archive that inflates more than its body) is taken at
once if there is room, else refused with 503: a request being decoded never waits.

glibc keeps freed memory for reuse rather than giving it back; after a large reservation is
released :func:`give_back` asks it (``malloc_trim``) to return free pages to the system, so
that the resident size falls back near the baseline after a burst.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import logging
import threading
from collections import deque
from collections.abc import Callable

import anyio

from app.errors import Overloaded, ServiceError

__all__ = ["MemoryBudget", "Reservation", "give_back"]

MiB = 1 << 20
logger = logging.getLogger("app.limits.memory")

TRIM_AFTER_BYTES = 64 * MiB  # releasing this much or more asks glibc to give memory back


class _Waiter:
    def __init__(self, nbytes: int) -> None:
        self.nbytes, self.granted, self.event = nbytes, False, anyio.Event()


class MemoryBudget:
    """``total`` bytes to reserve; ``waiting`` reservations may wait in line for room.

    Reservations are made and released on the event loop; :meth:`try_take` may be called from
    a worker thread (a lock guards the count).
    """

    def __init__(self, total: int, waiting: int, wait_timeout: float) -> None:
        self.total, self.waiting, self.wait_timeout = total, waiting, wait_timeout
        self.used = 0
        self.peak = 0
        self._lock = threading.Lock()
        self._line: deque[_Waiter] = deque()

    @property
    def line_full(self) -> bool:
        return len(self._line) >= self.waiting

    def try_take(self, nbytes: int) -> bool:
        """Take ``nbytes`` now if they fit (any thread); never waits."""
        with self._lock:
            if self.used + nbytes > self.total:
                return False
            self.used += nbytes
            self.peak = max(self.peak, self.used)
            return True

    async def take(self, nbytes: int, too_big: Callable[[], ServiceError]) -> None:
        """Take ``nbytes``, waiting in line for room; 503 when the line is full or slow."""
        if nbytes > self.total:
            raise too_big()
        if not self._line and self.try_take(nbytes):
            return
        if self.line_full:
            raise self._overloaded(f"all {self.waiting} places in the line for memory are taken")
        waiter = _Waiter(nbytes)
        self._line.append(waiter)
        try:
            with anyio.fail_after(self.wait_timeout):
                await waiter.event.wait()
        except BaseException as exc:
            if waiter.granted:  # granted, then cancelled before it could be used
                self.give(nbytes)
            else:
                self._line.remove(waiter)
                self._grant()  # the head of the line may have changed
            if isinstance(exc, TimeoutError):
                raise self._overloaded(
                    f"no room in the memory budget within {self.wait_timeout:g} seconds"
                ) from None
            raise

    def give(self, nbytes: int) -> None:
        """Give back ``nbytes`` (event loop) and let waiting reservations in."""
        with self._lock:
            self.used -= nbytes
        self._grant()

    def _grant(self) -> None:
        while self._line and self.try_take(self._line[0].nbytes):
            waiter = self._line.popleft()
            waiter.granted = True
            waiter.event.set()

    def _overloaded(self, why: str) -> Overloaded:
        return Overloaded(
            f"{why} ({self.used // MiB} of {self.total // MiB} MiB reserved): retry shortly",
            loc=(),
            headers={"Retry-After": "1"},
        )


class Reservation:
    """The bytes one request holds in a :class:`MemoryBudget`."""

    def __init__(self, budget: MemoryBudget) -> None:
        self.budget, self.held = budget, 0
        self.most = 0

    async def resize(self, nbytes: int, too_big: Callable[[], ServiceError]) -> None:
        """Hold ``nbytes`` from now on: give back the excess, or wait for the difference."""
        if nbytes > self.held:
            await self.budget.take(nbytes - self.held, too_big)
        elif nbytes < self.held:
            self.budget.give(self.held - nbytes)
        self.held = nbytes
        self.most = max(self.most, nbytes)

    def take_now(self, nbytes: int, what: str) -> None:
        """``nbytes`` more at once (a worker thread may call this), or 503."""
        if not self.budget.try_take(nbytes):
            raise self.budget._overloaded(f"{what} needs {nbytes // MiB} MiB more")
        self.held += nbytes
        self.most = max(self.most, self.held)

    def release(self) -> None:
        """Give everything back; after a large request, ask glibc to return free memory."""
        if self.held:
            self.budget.give(self.held)
            self.held = 0
        if self.most >= TRIM_AFTER_BYTES:
            self.most = 0
            give_back()


_libc: ctypes.CDLL | None = None
_scheduled = threading.Event()  # a trim is due: later releases need not ask again


def _load_libc() -> ctypes.CDLL | None:
    global _libc
    if _libc is None:
        try:
            libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6")
            libc.malloc_trim.argtypes = [ctypes.c_size_t]  # glibc only: musl has none
        except (OSError, AttributeError):
            return None
        _libc = libc
    return _libc


def _trim() -> None:
    _scheduled.clear()
    libc = _load_libc()
    if libc is not None:
        libc.malloc_trim(0)


def give_back(delay: float = 0.2) -> None:
    """Ask glibc to return free memory to the system, once, shortly, off the event loop.

    Releases in a burst share one trim, which runs after the last of them has freed.
    """
    if _scheduled.is_set():
        return
    _scheduled.set()
    timer = threading.Timer(delay, _trim)
    timer.daemon = True
    timer.start()
