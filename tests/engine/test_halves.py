"""Batches split in two halves computed at once (halves): the same answers as the oracle and
as the whole batch, BLAS's thread count held and given back, safe under concurrent callers."""

from __future__ import annotations

import multiprocessing
import threading
from concurrent.futures import ThreadPoolExecutor

import numpy as np
import pytest
from threadpoolctl import ThreadpoolController

from convengine import (
    ConvGeometry,
    conv,
    conv_backward,
    conv_transpose,
    conv_transpose_backward,
)
from convengine._kernels import Pass, Path, halves, select

from .oracle import naive_conv, naive_conv_transpose
from .test_fast_paths import check_any_rank_against_oracle, check_work_bound
from .test_ranks_and_transposed import CONV, TRANSPOSED

LAYERS = {
    "3x3-p1": ((3, 4, 9, 8), (5, 4, 3, 3), dict(padding=1)),
    "strided-floor": ((4, 3, 11, 10), (4, 3, 3, 3), dict(stride=2, padding=1, rounding="floor")),
    "pointwise": ((2, 6, 5, 5), (3, 6, 1, 1), dict()),
    "depthwise": ((5, 4, 7, 7), (4, 1, 3, 3), dict(groups=4, padding=1)),
    "reflect-grouped": (
        (2, 4, 6, 6),
        (6, 2, 3, 3),
        dict(groups=2, padding=2, padding_mode="reflect"),
    ),
    **{f"rank-{name}": case for name, case in CONV.items()},
}


@pytest.fixture
def always_split(monkeypatch):
    """Every batch of two or more is split (on this machine's two cores)."""
    monkeypatch.setattr(halves, "MIN_SPLIT_FLOPS", 0)
    assert halves.CORES >= 2 and halves._one_blas_thread.threads() >= 2, "a machine that splits"


def _split(geometry) -> bool:
    """Whether every pass of ``geometry`` is selected to run on two halves of its batch."""
    selected = {select(geometry, pass_).path is Path.HALVES for pass_ in Pass}
    assert len(selected) == 1, "all passes or none"
    return selected.pop()


def _blas_threads() -> list[int]:
    return [lib["num_threads"] for lib in ThreadpoolController().select(user_api="blas").info()]


@pytest.mark.parametrize("name", LAYERS)
def test_split_batches_match_oracle(name, rng, always_split):
    x_shape, w_shape, hyper = LAYERS[name]
    assert _split(ConvGeometry.build(x_shape, w_shape, **hyper)) == (x_shape[0] > 1)
    check_any_rank_against_oracle(rng, *LAYERS[name])


@pytest.mark.parametrize("name", TRANSPOSED)
def test_split_transposed_match_oracle(name, rng, always_split):
    x_shape, w_shape, hyper = TRANSPOSED[name]
    assert _split(ConvGeometry.transposed(x_shape, w_shape, **hyper).conv) == (x_shape[0] > 1)
    x, w = rng.standard_normal(x_shape), rng.standard_normal(w_shape)
    out = conv_transpose(x, w, **hyper)
    np.testing.assert_allclose(out, naive_conv_transpose(x, w, **hyper), rtol=1e-12, atol=1e-12)
    conv_transpose_backward(rng.standard_normal(out.shape), x, w, **hyper)


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_halves_give_each_sample_the_bits_of_the_whole_batch(dtype, rng, monkeypatch):
    """Per-sample outputs do not depend on the split; sums differ by rounding only, and the
    split itself is a function of the batch size: the same call twice is bitwise the same."""
    x = rng.standard_normal((7, 8, 20, 20)).astype(dtype)
    w = rng.standard_normal((16, 8, 3, 3)).astype(dtype)
    dout = rng.standard_normal((7, 16, 20, 20)).astype(dtype)
    monkeypatch.setattr(halves, "MIN_SPLIT_FLOPS", 1 << 62)
    whole = (conv(x, w, padding=1), *conv_backward(dout, x, w, padding=1))
    monkeypatch.setattr(halves, "MIN_SPLIT_FLOPS", 0)
    split = (conv(x, w, padding=1), *conv_backward(dout, x, w, padding=1))
    again = (conv(x, w, padding=1), *conv_backward(dout, x, w, padding=1))
    np.testing.assert_array_equal(split[0], whole[0])  # out
    np.testing.assert_array_equal(split[1], whole[1])  # dx
    tolerance = 1e-5 if dtype == np.float32 else 1e-12
    for s, w_ in zip(split[2:], whole[2:]):
        np.testing.assert_allclose(s, w_, rtol=tolerance, atol=tolerance * np.abs(w_).max())
    for a, b in zip(split, again):
        np.testing.assert_array_equal(a, b)


def test_blas_runs_one_thread_per_half_and_gets_its_threads_back(always_split):
    before = _blas_threads()
    seen = []

    def work(index, batch):
        seen.append(_blas_threads())

    halves.run(work, (slice(0, 1), slice(1, 2)))
    assert seen == [[1] * len(before)] * 2
    assert _blas_threads() == before


def test_splits_from_any_thread_hold_blas_to_one(always_split):
    """threadpoolctl lets only the first thread that sets OpenBLAS's thread count change it,
    while that thread lives: splits started from two different live threads must both run
    on one BLAS thread (as the service's computation threads do), and give the count back."""
    before = _blas_threads()
    with ThreadPoolExecutor(1) as first, ThreadPoolExecutor(1) as second:
        for caller in (first, second):
            seen: list[list[int]] = []
            caller.submit(halves.run, _recorder(seen), (slice(0, 1), slice(1, 2))).result()
            assert seen == [[1] * len(before)] * 2
            assert _blas_threads() == before


def _recorder(seen):
    """A half's work that records the BLAS thread counts it runs with."""

    def record(index, batch):
        seen.append(_blas_threads())

    return record


def test_a_callers_own_limits_still_work_after_splits(always_split, rng):
    """The engine hands threadpoolctl's role back after each change: a caller's
    threadpool_limits, in any thread, still sets BLAS's thread count."""
    from threadpoolctl import threadpool_limits

    conv(rng.standard_normal((2, 3, 16, 16)), rng.standard_normal((4, 3, 3, 3)))  # a split
    before = _blas_threads()
    with ThreadPoolExecutor(1) as caller:

        def limited() -> list[int]:
            with threadpool_limits(1):
                return _blas_threads()

        assert caller.submit(limited).result() == [1] * len(before)
    assert _blas_threads() == before


def test_an_error_in_a_half_still_gives_the_threads_back():
    before = _blas_threads()

    def work(index, batch):
        if index == 1:
            raise MemoryError("the second half")

    with pytest.raises(MemoryError, match="second half"):
        halves.run(work, (slice(0, 1), slice(1, 2)))
    assert _blas_threads() == before


def test_a_callers_errstate_holds_in_both_halves(rng, always_split):
    """NumPy keeps ``errstate`` in the thread's context: the second half runs in a copy of the
    caller's, so inf - inf in that half warns (an error here) only where the caller asks."""
    x, w = rng.standard_normal((2, 3, 9, 9)), rng.standard_normal((4, 3, 3, 3))
    x[1, :2, 4, 4] = np.inf
    w[0, 1, 0, 0] = -w[0, 0, 0, 0]  # one window adds the two channels' inf with opposite signs
    assert _split(ConvGeometry.build(x.shape, w.shape, padding=1))
    with np.errstate(invalid="ignore"):
        out = conv(x, w, padding=1)
    assert np.isnan(out[1]).any() and np.isfinite(out[0]).all()
    with pytest.raises(RuntimeWarning, match="invalid value"):
        conv(x, w, padding=1)


def test_concurrent_callers_split_and_not_all_get_right_answers(rng, monkeypatch):
    """Callers in several threads, some splitting and some not, each get their own answer,
    and BLAS has its threads back once they are all done."""
    monkeypatch.setattr(halves, "MIN_SPLIT_FLOPS", 20_000)
    before = _blas_threads()
    cases = []
    for n in (1, 2, 3, 6):
        x, w = rng.standard_normal((n, 3, 12, 12)), rng.standard_normal((4, 3, 3, 3))
        cases.append((x, w, naive_conv(x, w, padding=1)))
    failures = []

    def caller(index):
        x, w, want = cases[index % len(cases)]
        for _ in range(15):
            got = conv(x, w, padding=1)
            if not np.allclose(got, want, rtol=1e-12, atol=1e-12):
                failures.append(index)

    threads = [threading.Thread(target=caller, args=(i,)) for i in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=120)
    assert not failures and not any(t.is_alive() for t in threads)
    assert _blas_threads() == before


def _split_in_child(queue):
    x, w = np.ones((2, 2, 6, 6)), np.ones((2, 2, 3, 3))
    queue.put(float(conv(x, w, padding=1).sum()))


def test_a_forked_child_splits_without_the_parents_worker(always_split, rng):
    conv(rng.standard_normal((2, 2, 6, 6)), rng.standard_normal((2, 2, 3, 3)))  # worker started
    context = multiprocessing.get_context("fork")
    queue = context.Queue()
    child = context.Process(target=_split_in_child, args=(queue,))
    child.start()
    child.join(timeout=60)
    alive = child.is_alive()
    if alive:
        child.kill()
    assert not alive and child.exitcode == 0
    assert queue.get(timeout=5) == float(
        naive_conv(np.ones((2, 2, 6, 6)), np.ones((2, 2, 3, 3)), padding=1).sum()
    )


@pytest.mark.parametrize(
    "x_shape, w_shape, hyper",
    [
        ((6, 8, 30, 30), (16, 8, 3, 3), dict(padding=1)),
        ((5, 3, 31, 31), (4, 3, 7, 7), dict(stride=2, padding=3)),
        ((4, 8, 20, 20), (8, 1, 3, 3), dict(groups=8, padding=1)),
        ((3, 4, 6, 10, 10), (8, 4, 3, 3, 3), dict(padding=1)),
        ((4, 16, 300), (8, 16, 5), dict(padding=2)),
    ],
    ids=["3x3", "7x7-s2", "depthwise", "volume", "line"],
)
def test_work_elements_bounds_split_passes(x_shape, w_shape, hyper, rng, always_split):
    assert _split(ConvGeometry.build(x_shape, w_shape, **hyper))
    check_work_bound(rng, x_shape, w_shape, hyper)
