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
import os
import threading
from collections import deque
from collections.abc import Callable

import anyio

from app import metrics
from app.errors import Overloaded, PayloadTooLarge, ServiceError

__all__ = ["MemoryBudget", "Reservation", "give_back", "keep_heap_small"]

MiB = 1 << 20
logger = logging.getLogger("app.limits.memory")

TRIM_AFTER_BYTES = 64 * MiB  # releasing this much or more asks glibc to give memory back


class _Waiter:
    def __init__(self, nbytes: int) -> None:
        self.nbytes, self.granted, self.event = nbytes, False, anyio.Event()


class MemoryBudget:
    """``total`` bytes to reserve; ``waiting`` new requests may wait in line for room.

    A request that already holds a reservation and needs more (its work, once validated) goes
    to the front of the line, and waits only while requests that are computing or sending
    (settled: they will only give back) hold enough to let it in; otherwise it is refused at
    once, giving back what it holds, so that requests holding memory never wait for each
    other. Reservations are made and released on the event loop; :meth:`try_take` may be
    called from a worker thread (a lock guards the counts).
    """

    def __init__(self, total: int, waiting: int, wait_timeout: float) -> None:
        self.total, self.waiting, self.wait_timeout = total, waiting, wait_timeout
        self.used = 0
        self.settled = 0  # held by requests that will only give back
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
            metrics.MEMORY_RESERVED.set(self.used)
            return True

    async def take(self, nbytes: int, holding: int, too_big: Callable[[int], ServiceError]) -> None:
        """Take ``nbytes`` more for a request that holds ``holding``; 503 or wait (see above)."""
        if nbytes + holding > self.total:
            raise too_big(nbytes + holding)
        if (holding or not self._line) and self.try_take(nbytes):
            return
        if holding and self.total - self.used + self.settled < nbytes:
            raise self._overloaded(f"{nbytes // MiB} MiB more cannot be had soon")
        if not holding and self.line_full:
            raise self._overloaded(f"all {self.waiting} places in the line for memory are taken")
        waiter = _Waiter(nbytes)
        if holding:
            self._line.appendleft(waiter)
        else:
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

    def give(self, nbytes: int, settled: bool = False) -> None:
        """Give back ``nbytes`` (event loop) and let waiting reservations in."""
        with self._lock:
            self.used -= nbytes
            metrics.MEMORY_RESERVED.set(self.used)
            if settled:
                self.settled -= nbytes
        self._grant()

    def settle(self, nbytes: int) -> None:
        with self._lock:
            self.settled += nbytes

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
        self.settled = False

    async def resize(self, nbytes: int, too_big: Callable[[int], ServiceError]) -> None:
        """Hold ``nbytes`` from now on: give back the excess, or take (or wait for) the rest."""
        if nbytes > self.held:
            assert not self.settled, "a settled reservation only gives back"
            await self.budget.take(nbytes - self.held, self.held, too_big)
        elif nbytes < self.held:
            self.budget.give(self.held - nbytes, self.settled)
        self.held = nbytes
        self.most = max(self.most, nbytes)

    def settle(self) -> None:
        """From now on this reservation only gives back: others may wait for it."""
        self.settled = True
        self.budget.settle(self.held)

    def take_now(self, nbytes: int, what: str) -> None:
        """``nbytes`` more at once (a worker thread may call this), or 503; 413 if they could
        never fit."""
        if self.held + nbytes > self.budget.total:
            raise PayloadTooLarge(
                f"{what} would decode to {nbytes} bytes, more than this replica's memory "
                f"budget of {self.budget.total // MiB} MiB allows beside the rest of the request",
                loc=("body", what),
            )
        if not self.budget.try_take(nbytes):
            raise self.budget._overloaded(f"{what} needs {nbytes // MiB} MiB more")
        self.held += nbytes
        self.most = max(self.most, self.held)

    def release(self) -> None:
        """Give everything back; after a large request, ask glibc to return free memory."""
        if self.held:
            self.budget.give(self.held, self.settled)
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


# mallopt parameters (malloc.h).
_M_TRIM_THRESHOLD, _M_MMAP_THRESHOLD = -1, -3
MMAP_THRESHOLD = 4 * MiB
TRIM_THRESHOLD = 64 * MiB


def keep_heap_small() -> bool:
    """Fix glibc's mmap threshold at 4 MiB, so that large blocks go back to the system when
    freed; whether it could (glibc only).

    glibc starts at 128 KiB but raises the threshold to the size of each mmapped block freed,
    up to 32 MiB: after one large request, bodies' chunks and arrays up to 32 MiB come from
    the heap, and a burst leaves freed heap resident beyond what the budget counts. Measured
    on tests/load/test_memory.py's burst (budget 1,536 MiB, baseline 68 MiB), and in CPU per
    request, one thread:

    ======================  =========  ===========  ======================  ====================
    mmap threshold          peak       after burst  soak-sized .npz request  mid layer fwd + bwd
    ======================  =========  ===========  ======================  ====================
    glibc's (rising)        1,026 MiB  112 MiB      3.4 ms, 0 faults        75 ms, 28 faults
    128 KiB                 582 MiB    87 MiB       4.3-5.7 ms, 840 faults  80 ms, 1,523 faults
    4 MiB (this)            770 MiB    116 MiB      3.4 ms, 0 faults        77 ms, 1,130 faults
    ======================  =========  ===========  ======================  ====================

    4 MiB keeps small requests free of page faults and large ones out of the heap. Setting
    the threshold also fixes the trim threshold, set here to 64 MiB: :func:`give_back` trims
    after large requests.
    """
    # Worker processes (CONVENGINE_WORKERS > 1) are started afresh: glibc reads these there.
    os.environ.setdefault("MALLOC_MMAP_THRESHOLD_", str(MMAP_THRESHOLD))
    os.environ.setdefault("MALLOC_TRIM_THRESHOLD_", str(TRIM_THRESHOLD))
    libc = _load_libc()
    if libc is None:
        return False
    mallopt = libc.mallopt
    mallopt.argtypes = [ctypes.c_int, ctypes.c_int]
    return bool(
        mallopt(_M_MMAP_THRESHOLD, MMAP_THRESHOLD) and mallopt(_M_TRIM_THRESHOLD, TRIM_THRESHOLD)
    )


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
