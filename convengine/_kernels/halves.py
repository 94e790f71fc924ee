"""Two halves of a batch computed at once, each on one core: the engine's own parallelism.

BLAS spreads a GEMM over the cores, but everything around it (im2col copies, col2im adds,
padding, cropping) is NumPy on one core. Splitting the batch in two and computing the halves
in two threads, with BLAS held to one thread per call meanwhile, puts both cores on all of it.
Minimum times on this machine's kind (2 cores), float32, whole batch with two BLAS threads
against halves with one each: mid 3x3 forward 12.7 against 11.2 ms and backward 32.2 against
23.2; strided 3x3 s2 5.5 against 4.8 and 16.0 against 11.2; stem 7x7 s2 7.2 against 6.0 and
20.7 against 14.6. A layer too small to be worth two threads is not split.

The halves are fixed by the batch size alone, so a result never depends on timing: dw and db
are the first half's sum plus the second's, always in that order.

BLAS's thread count is one setting for the whole process. It is held at one while any split
computation runs (a count of them, under a lock) and given back when the last one ends; a
computation that is not split meanwhile runs on one BLAS thread too, correct but slower.
"""

from __future__ import annotations

import contextvars
import os
import threading
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import replace
from math import prod
from typing import Any

import numpy as np
from threadpoolctl import ThreadpoolController

from .._geometry import ConvGeometry

__all__ = [
    "Places",
    "Result",
    "compute",
    "halves_of",
    "part",
    "run",
    "split",
    "supports",
    "work_elements",
]

Result = np.ndarray | tuple[np.ndarray, ...]
# Where a half's outputs go: its part of each whole output, or None for an output summed.
Places = tuple[np.ndarray | None, ...]

# Multiply-adds (counted as two operations) below which a pass is not split. A split costs
# about 80 us (the other thread, and BLAS's thread count changed and given back, each a hand-off
# to another thread), which a layer of a millisecond or less does not win back: 8x64x56x56
# depthwise (29 MFLOP) took 3.1 ms whole and 4.1 split, 4x16x32x32 3x3 (19 MFLOP) 0.49 and 0.66.
MIN_SPLIT_FLOPS = 1 << 27


def _cores() -> int:
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:  # not on Linux
        return os.cpu_count() or 1


CORES = _cores()


def supports(geometry: ConvGeometry) -> bool:
    """Whether a pass of ``geometry`` runs on two halves of its batch at once (:func:`split`)."""
    return split(geometry) is not None


def split(geometry: ConvGeometry) -> tuple[slice, slice] | None:
    """The two halves of the batch, or None where one thread does better.

    Only where BLAS itself may use two threads or more: a process told to keep to one
    (``OPENBLAS_NUM_THREADS=1``, as the service sets with several workers per machine) is not
    split either.
    """
    g = geometry
    if g.n < 2 or g.flops() < MIN_SPLIT_FLOPS or CORES < 2 or _one_blas_thread.threads() < 2:
        return None
    return halves_of(g.n)


def halves_of(n: int) -> tuple[slice, slice]:
    """The two halves of a batch of ``n``: fixed by ``n`` alone, so no result hangs on timing."""
    middle = n // 2
    return slice(0, middle), slice(middle, n)


def work_elements(geometry: ConvGeometry, whole: Callable[[ConvGeometry], int]) -> int:
    """An upper bound on the array elements a pass allocates, split or not.

    The larger of ``whole(geometry)``, the pass on the whole batch, and the pass on two
    halves of it at once: both halves' work, and the whole results the halves are copied
    into. Whether a pass splits depends on the machine (its cores, BLAS's threads): the bound
    does not, so a request is refused or not alike everywhere.
    """
    g = geometry
    batch = whole(g)
    if g.n < 2:
        return batch
    larger_half = replace(g, n=g.n - g.n // 2)
    results = g.n * (g.f * prod(g.out) + g.c * prod(g.size))
    return max(batch, 2 * whole(larger_half) + results)


def compute(
    pass_: Callable[[tuple[np.ndarray | None, ...], ConvGeometry, Places], Result],
    geometry: ConvGeometry,
    batched: tuple[np.ndarray, ...],
    shared: tuple[np.ndarray | None, ...],
    layout: tuple[tuple[int, ...] | None, ...],
) -> Result:
    """``pass_((*batched, *shared), geometry, places)`` on the two halves of the batch at once.

    layout: per output of ``pass_``, its shape for the whole batch where the halves' outputs
    are its two halves (each half writes its own, in its own thread), or None where they are
    added (dw, db: the first half's plus the second's). ``places`` are the half's own parts of
    the whole outputs (C-contiguous; None where added): an output the pass returns *is* its
    place where the pass wrote it there, and is not copied again.
    """
    whole = [None if shape is None else np.empty(shape, batched[0].dtype) for shape in layout]
    addends: list[list[np.ndarray]] = [[], []]

    def half(index: int, batch: slice) -> None:
        places = tuple(None if target is None else target[batch] for target in whole)
        result = pass_((*(a[batch] for a in batched), *shared), part(geometry, batch), places)
        outputs = result if isinstance(result, tuple) else (result,)
        for place, output in zip(places, outputs, strict=True):
            if place is None:
                addends[index].append(output)
            elif output is not place:
                place[...] = output

    run(half, halves_of(geometry.n))
    sums = iter([first + second for first, second in zip(*addends, strict=True)])
    results = tuple(next(sums) if target is None else target for target in whole)
    return results if len(results) > 1 else results[0]


def part(geometry: ConvGeometry, half: slice) -> ConvGeometry:
    """The geometry of one half of the batch."""
    return replace(geometry, n=half.stop - half.start)


def run(work: Callable[[int, slice], None], halves: tuple[slice, slice]) -> None:
    """``work(0, first half)`` in this thread and ``work(1, second half)`` in the other, in
    a copy of this thread's context: NumPy's ``errstate`` lives there, so a caller's
    ``np.errstate(invalid="ignore")`` holds for both halves."""
    with _one_blas_thread:
        other = _pool().submit(contextvars.copy_context().run, work, 1, halves[1])
        try:
            work(0, halves[0])
        finally:
            other.result()


_executor: ThreadPoolExecutor | None = None
_executor_lock = threading.Lock()


def _pool() -> ThreadPoolExecutor:
    # One thread, shared by every caller: its work buffers (kept per thread) exist once.
    global _executor
    with _executor_lock:
        if _executor is None:
            _executor = ThreadPoolExecutor(max_workers=1, thread_name_prefix="convengine-half")
        return _executor


class _OneBlasThread:
    """Holds BLAS to one thread while any split computation runs.

    threadpoolctl lets only one thread change OpenBLAS's process-wide thread count: the first
    that sets it, for as long as it lives; from any other thread the change silently does
    nothing (its ``OpenBLASController``, pthreads builds). The computing threads all split, so
    the changes are made by one thread of their own, which takes the role for each change and
    hands it back. A caller's own ``threadpool_limits`` holds the role while it lasts, and the
    halves then run with what it set. The count to give back is read once, before the first split.
    """

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._running = 0
        self._libraries: list[Any] | None = None
        self._threads: list[int] = []
        self._setter: ThreadPoolExecutor | None = None

    def threads(self) -> int:
        """The BLAS thread count the process runs with outside split computations."""
        with self._lock:
            return max(self._found(), default=1)

    def __enter__(self) -> None:
        with self._lock:
            if self._running == 0:
                self._set([1] * len(self._found()))
            self._running += 1

    def __exit__(self, *exc: object) -> None:
        with self._lock:
            self._running -= 1
            if self._running == 0:
                self._set(self._threads)

    def _set(self, counts: list[int]) -> None:
        if self._setter is None:
            self._setter = ThreadPoolExecutor(max_workers=1, thread_name_prefix="convengine-blas")
        libraries = self._libraries or []

        def set_counts() -> None:
            for library, count in zip(libraries, counts, strict=True):
                library.set_num_threads(count)
                # Hand the role back, so that a caller's own threadpool_limits still works.
                release = getattr(type(library), "clear_controlling_thread", None)
                if release is not None:
                    release()

        self._setter.submit(set_counts).result()

    def _found(self) -> list[int]:
        # Found on first use, when the BLAS libraries a process uses are loaded.
        if self._libraries is None:
            controller = ThreadpoolController().select(user_api="blas")
            self._libraries = list(controller.lib_controllers)
            self._threads = [library.num_threads for library in self._libraries]
        return self._threads


_one_blas_thread = _OneBlasThread()


def _forget_threads() -> None:
    """In a forked child: the parent's worker thread and running count did not come along."""
    global _executor, _executor_lock, _one_blas_thread
    _executor, _executor_lock, _one_blas_thread = None, threading.Lock(), _OneBlasThread()


if hasattr(os, "register_at_fork"):
    os.register_at_fork(after_in_child=_forget_threads)
