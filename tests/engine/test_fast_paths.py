"""The engine's special paths against the oracle, each one checked to be the path really taken."""

from __future__ import annotations

import tracemalloc

import numpy as np
import pytest
from hypothesis import given
from hypothesis import strategies as st

from convengine import ConvGeometry, _conv, _depthwise, _im2col, conv2d, conv2d_backward

from .oracle import naive_conv2d, naive_conv2d_backward
from .test_against_oracle import GRID, geometries

# (x shape, w shape, hyperparameters): stride-1 depthwise layers, which take the flat-plane path.
DEPTHWISE = {
    "3x3-p1": ((2, 3, 6, 5), (3, 1, 3, 3), dict(groups=3, padding=1)),
    "multiplier-3": ((2, 2, 5, 7), (6, 1, 3, 3), dict(groups=2, padding=1)),
    "dilated-non-square": ((1, 4, 9, 8), (4, 1, 3, 2), dict(groups=4, dilation=(2, 3), padding=2)),
    "same-even-kernel": ((2, 2, 6, 5), (4, 1, 4, 2), dict(groups=2, padding="same")),
    "unpadded-5x5": ((1, 3, 7, 9), (3, 1, 5, 5), dict(groups=3)),
    "kernel-as-wide-as-input": ((1, 2, 4, 3), (2, 1, 2, 5), dict(groups=2, padding=(0, 1))),
}


def _spy(monkeypatch, module, name):
    calls = []
    original = getattr(module, name)

    def spy(*args, **kwargs):
        calls.append(name)
        return original(*args, **kwargs)

    monkeypatch.setattr(module, name, spy)
    return calls


def _check_against_oracle(rng, x_shape, w_shape, hyper, dtype=np.float64, tolerance=1e-12):
    x = rng.standard_normal(x_shape)
    w = rng.standard_normal(w_shape)
    b = rng.standard_normal(w_shape[0])
    expected = naive_conv2d(x, w, b, **hyper)
    out = conv2d(x.astype(dtype), w.astype(dtype), b.astype(dtype), **hyper)
    assert out.dtype == dtype
    np.testing.assert_allclose(out, expected, rtol=tolerance, atol=tolerance)
    dout = rng.standard_normal(expected.shape)
    got = conv2d_backward(dout.astype(dtype), x.astype(dtype), w.astype(dtype), **hyper)
    want = naive_conv2d_backward(dout, x, w, **hyper)
    for g, expected_grad, label in zip(got, want, ["dx", "dw", "db"]):
        assert g.dtype == dtype, label
        np.testing.assert_allclose(g, expected_grad, rtol=tolerance, atol=tolerance, err_msg=label)


@pytest.mark.parametrize("name", GRID)
def test_direct_im2col_matches_oracle(name, rng, monkeypatch):
    """im2col straight from x, forced on every layer of the grid (it takes large ones only)."""
    monkeypatch.setattr(_conv, "DIRECT_IM2COL_MIN_ELEMENTS", 0)
    calls = _spy(monkeypatch, _im2col.FieldRuns, "copy_inside")
    x_shape, w_shape, hyper = GRID[name]
    conv2d(rng.standard_normal((2, 8, 30, 30)), rng.standard_normal((8, 8, 3, 3)))
    for buffer in _im2col._local.buffers.values():
        buffer.view(np.uint8)[:] = 0xFF  # NaN: a padding zero left unwritten shows up
    calls.clear()
    _check_against_oracle(rng, x_shape, w_shape, hyper)
    is_pointwise = w_shape[2:] == (1, 1) and not hyper
    is_grouped_by_channel = w_shape[1] == 1 and hyper.get("groups", 1) > 1
    big_kernel = w_shape[2] * w_shape[3] > 9
    reads_no_input = 0 in ConvGeometry.build(x_shape, w_shape, **hyper).core()[0].size
    skipped = is_pointwise or is_grouped_by_channel or big_kernel or reads_no_input
    assert bool(calls) == (not skipped)


@given(geometries(), st.integers(0, 2**32 - 1))
def test_direct_im2col_on_random_geometries(case, seed):
    original = _conv.DIRECT_IM2COL_MIN_ELEMENTS
    _conv.DIRECT_IM2COL_MIN_ELEMENTS = 0
    try:
        x_shape, w_shape, hyper = case
        rng = np.random.default_rng(seed)
        x, w, b = (rng.standard_normal(s) for s in (x_shape, w_shape, w_shape[0]))
        np.testing.assert_allclose(
            conv2d(x, w, b, **hyper), naive_conv2d(x, w, b, **hyper), rtol=1e-12, atol=1e-12
        )
    finally:
        _conv.DIRECT_IM2COL_MIN_ELEMENTS = original


def test_large_layers_read_x_directly_and_small_ones_pad_first(rng, monkeypatch):
    calls = _spy(monkeypatch, _im2col.FieldRuns, "copy_inside")
    _check_against_oracle(rng, (1, 8, 41, 50), (3, 8, 3, 3), dict(padding=1, stride=(2, 1)))
    assert calls
    calls.clear()
    _check_against_oracle(rng, (1, 2, 6, 6), (3, 2, 3, 3), dict(padding=1))
    assert not calls


@pytest.mark.parametrize("name", DEPTHWISE)
def test_flat_depthwise_matches_oracle(name, rng, monkeypatch):
    forward_calls = _spy(monkeypatch, _depthwise, "forward")
    backward_calls = _spy(monkeypatch, _depthwise, "backward")
    _check_against_oracle(rng, *DEPTHWISE[name])
    assert forward_calls and backward_calls


@pytest.mark.parametrize("name", ["3x3-p1", "multiplier-3", "dilated-non-square"])
def test_flat_depthwise_in_groups_of_one_plane(name, rng, monkeypatch):
    """Several groups, each one plane: the channel of each plane is found right."""
    monkeypatch.setattr(_depthwise, "GROUP_BYTES", 1)
    _check_against_oracle(rng, *DEPTHWISE[name])


def test_flat_depthwise_float32_error(rng):
    x_shape, w_shape, hyper = (2, 8, 20, 20), (8, 1, 3, 3), dict(groups=8, padding=1)
    _check_against_oracle(rng, x_shape, w_shape, hyper, np.float32, tolerance=1e-5)


def test_strided_depthwise_keeps_its_own_path(rng, monkeypatch):
    calls = _spy(monkeypatch, _depthwise, "forward")
    _check_against_oracle(rng, (1, 2, 7, 7), (2, 1, 3, 3), dict(groups=2, stride=2, padding=1))
    assert not calls


@pytest.mark.parametrize(
    "x_shape, w_shape, hyper",
    [
        ((100, 2, 10, 10), (2, 1, 1, 1), dict(groups=2)),
        ((4, 8, 30, 30), (16, 1, 3, 3), dict(groups=8, padding=1)),
        ((2, 3, 9, 40), (3, 1, 5, 3), dict(groups=3, dilation=2, padding=(4, 2))),
        ((300, 1, 5, 5), (1, 1, 1, 1), dict(stride=2)),
        ((5000, 1, 13, 13), (1, 1, 1, 1), dict(stride=2)),
        ((2, 16, 40, 40), (8, 16, 3, 3), dict(padding=1)),
        ((2, 3, 31, 31), (4, 3, 7, 7), dict(stride=2, padding=3)),
    ],
    ids=[
        "many-small-planes",
        "multiplier-2",
        "dilated-wide",
        "many-tiny-images",
        "chunks-of-one-channel",
        "3x3",
        "7x7-s2",
    ],
)
def test_work_elements_bounds_what_the_engine_allocates(x_shape, w_shape, hyper, rng):
    """The service refuses work by ``work_elements()``: every path must stay within it."""
    from convengine import ConvGeometry, _im2col

    geometry = ConvGeometry.build(x_shape, w_shape, **hyper)
    x, w = rng.standard_normal(x_shape), rng.standard_normal(w_shape)
    dout = rng.standard_normal(geometry.out_shape)
    _im2col._local.__dict__.get("buffers", {}).clear()  # every work buffer allocated afresh
    tracemalloc.start()
    try:
        conv2d(x, w, rng.standard_normal(w_shape[0]), **hyper)
        conv2d_backward(dout, x, w, **hyper)
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    bound = geometry.work_elements() * x.itemsize
    assert peak <= bound + (64 << 10), f"peak {peak} bytes, work_elements() allows {bound}"
