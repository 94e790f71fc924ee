"""The flat-plane depthwise path (shifted copies, GEMMs and gemvs) against the oracle.

Its shifted copies clip at either end when the padding exceeds the kernel's reach (and the
input gradient's shifts turn negative), and zero the columns a shift wraps: random geometries
and a grid reach those branches; a non-finite pixel, tap or bias shows whether a wrapped or
junk column leaked.
"""

from __future__ import annotations

import numpy as np
import pytest
from hypothesis import given
from hypothesis import strategies as st

from convengine import ConvGeometry, conv2d, conv2d_backward
from convengine._kernels import Pass, depthwise, select

from .oracle import naive_conv2d, naive_conv2d_backward


@st.composite
def depthwise_cases(draw):
    """(x shape, w shape, hyperparameters) of a stride-1 depthwise layer, any padding."""
    groups, multiplier = draw(st.integers(1, 3)), draw(st.integers(1, 3))
    kernel = (draw(st.integers(1, 4)), draw(st.integers(1, 4)))
    dilation = (draw(st.integers(1, 3)), draw(st.integers(1, 3)))
    pads = tuple((draw(st.integers(0, 5)), draw(st.integers(0, 5))) for _ in range(2))
    size = []
    for k, d, (begin, end) in zip(kernel, dilation, pads):
        smallest = max(1, d * (k - 1) + 1 - begin - end)
        size.append(draw(st.integers(smallest, smallest + 6)))
    x_shape = (draw(st.integers(1, 3)), groups, *size)
    w_shape = (groups * multiplier, 1, *kernel)
    return x_shape, w_shape, dict(groups=groups, dilation=dilation, padding=pads)


@given(depthwise_cases(), st.integers(0, 2**32 - 1), st.sampled_from([1, 1 << 20]))
def test_flat_depthwise_matches_oracle_on_random_geometries(case, seed, group_bytes):
    """Forward, dx, dw and db, in groups of one plane and in groups of many."""
    x_shape, w_shape, hyper = case
    rng = np.random.default_rng(seed)
    x, w, b = (rng.standard_normal(s) for s in (x_shape, w_shape, w_shape[0]))
    original = depthwise.GROUP_BYTES
    depthwise.GROUP_BYTES = group_bytes
    try:
        out = conv2d(x, w, b, **hyper)
        np.testing.assert_allclose(out, naive_conv2d(x, w, b, **hyper), rtol=1e-12, atol=1e-12)
        dout = rng.standard_normal(out.shape)
        got = conv2d_backward(dout, x, w, **hyper)
    finally:
        depthwise.GROUP_BYTES = original
    for grad, want, label in zip(got, naive_conv2d_backward(dout, x, w, **hyper), "dx dw db"):
        np.testing.assert_allclose(grad, want, rtol=1e-12, atol=1e-12, err_msg=label)


@pytest.mark.parametrize(
    "pixel", [(0, 0), (0, 6), (3, 0), (3, 6), (6, 6), (2, 3)], ids=lambda p: f"{p[0]}-{p[1]}"
)
@pytest.mark.parametrize("bad", [np.inf, np.nan], ids=["inf", "nan"])
def test_non_finite_pixel_reaches_only_its_windows(pixel, bad, rng):
    """A shift wraps a row's end onto the next row's start: an edge pixel must not leak there.

    The oracle multiplies padding zeros by the taps too, so its non-finite outputs are exactly
    the windows over the pixel, and they must be the only non-finite outputs here.
    """
    hyper = dict(groups=2, padding=1)
    geometry = ConvGeometry.build((2, 2, 7, 7), (2, 1, 3, 3), **hyper)
    assert select(geometry, Pass.FORWARD).name == "depthwise"  # the forward reads no junk
    x = rng.standard_normal((2, 2, 7, 7))
    x[1, 0, pixel[0], pixel[1]] = bad
    w, b = rng.standard_normal((2, 1, 3, 3)), rng.standard_normal(2)
    out = conv2d(x, w, b, **hyper)
    want = naive_conv2d(x, w, b, **hyper)
    np.testing.assert_array_equal(np.isfinite(out), np.isfinite(want))
    assert (~np.isfinite(out)).sum() == (~np.isfinite(want)).sum() > 0
    np.testing.assert_allclose(out, want, rtol=1e-12, atol=1e-12)


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_benchmark_layer_agrees_with_oracle(dtype, rng):
    """The layer the benchmark times, cut to two images: float32 within 1e-5 relative."""
    x = rng.standard_normal((2, 64, 56, 56))
    w, b = rng.standard_normal((64, 1, 3, 3)), rng.standard_normal(64)
    hyper = dict(groups=64, padding=1)
    want = naive_conv2d(x[:, :4], w[:4], b[:4], padding=1, groups=4)
    out = conv2d(x.astype(dtype), w.astype(dtype), b.astype(dtype), **hyper)[:, :4]
    tolerance = 1e-5 if dtype == np.float32 else 1e-12
    scale = np.abs(want).max()
    np.testing.assert_allclose(out, want, rtol=0, atol=tolerance * scale)
    dout = rng.standard_normal(want.shape)
    full_dout = np.zeros((2, 64, 56, 56))
    full_dout[:, :4] = dout
    dx, dw, _ = conv2d_backward(full_dout.astype(dtype), x.astype(dtype), w.astype(dtype), **hyper)
    want_dx, want_dw, _ = naive_conv2d_backward(dout, x[:, :4], w[:4], padding=1, groups=4)
    np.testing.assert_allclose(dx[:, :4], want_dx, rtol=0, atol=tolerance * np.abs(want_dx).max())
    np.testing.assert_allclose(dw[:4], want_dw, rtol=0, atol=tolerance * np.abs(want_dw).max())


# (x shape, w shape, hyperparameters): each reaches a branch of the shifted copies and the
# kernel-row sums: rows cropped and copies clipped (no padding), copies clipped alone (no
# padding on top), rows wider than the input (padding past the kernel's reach), dilation,
# several filters per channel, one image, and two planes in all.
GRID = {
    "odd-5x7": ((2, 3, 5, 7), (3, 1, 3, 3), dict(groups=3, padding=1)),
    "cropped-rows": ((2, 2, 6, 9), (2, 1, 3, 2), dict(groups=2)),
    "clipped-copies": ((2, 2, 5, 6), (2, 1, 3, 3), dict(groups=2, padding=((0, 2), (1, 1)))),
    "wide-rows": ((1, 2, 4, 3), (2, 1, 2, 3), dict(groups=2, padding=((4, 1), (3, 5)))),
    "dilated": ((2, 2, 9, 8), (2, 1, 3, 3), dict(groups=2, padding=2, dilation=(2, 3))),
    "multiplier-3": ((2, 2, 6, 6), (6, 1, 3, 3), dict(groups=2, padding=1)),
    "one-image-two-planes": ((1, 2, 7, 5), (2, 1, 5, 3), dict(groups=2, padding=(2, 1))),
}


@pytest.mark.parametrize("name", GRID)
@pytest.mark.parametrize("bias", [True, False], ids=["bias", "no-bias"])
@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@pytest.mark.parametrize("group_bytes", [1, 1 << 20], ids=["plane-groups", "one-group"])
def test_forward_matches_oracle_on_the_grid(name, bias, dtype, group_bytes, rng, monkeypatch):
    """Forward with the bias in the summing vector or without one, in both dtypes."""
    x_shape, w_shape, hyper = GRID[name]
    x, w, b = (rng.standard_normal(s) for s in (x_shape, w_shape, w_shape[0]))
    b = b if bias else None
    geometry = ConvGeometry.build(x_shape, w_shape, **hyper)
    assert select(geometry, Pass.FORWARD).name == "depthwise"
    monkeypatch.setattr(depthwise, "GROUP_BYTES", group_bytes)
    cast = [None if a is None else a.astype(dtype) for a in (x, w, b)]
    out = conv2d(*cast, **hyper)
    want = naive_conv2d(x, w, b, **hyper)
    assert out.dtype == dtype
    tolerance = 1e-5 if dtype == np.float32 else 1e-12
    np.testing.assert_allclose(out, want, rtol=0, atol=tolerance * np.abs(want).max())


@pytest.mark.parametrize("where", ["tap", "bias"])
@pytest.mark.parametrize("bad", [np.inf, np.nan], ids=["inf", "nan"])
def test_non_finite_tap_or_bias_spreads_as_in_the_oracle(where, bad, rng):
    """A bias multiplies a row of ones and a tap every copy (padding zeros too): the
    non-finite outputs are the oracle's, no more and no fewer."""
    hyper = dict(groups=2, padding=1)
    x = rng.standard_normal((2, 2, 5, 6))
    w, b = rng.standard_normal((4, 1, 3, 3)), rng.standard_normal(4)
    if where == "tap":
        w[2, 0, 1, 2] = bad
    else:
        b[1] = bad
    with np.errstate(invalid="ignore"):  # inf times a padding zero is NaN, as it should be
        out = conv2d(x, w, b, **hyper)
        want = naive_conv2d(x, w, b, **hyper)
    np.testing.assert_array_equal(np.isnan(out), np.isnan(want))
    np.testing.assert_array_equal(np.isinf(out), np.isinf(want))
    assert (~np.isfinite(out)).sum() > 0
    np.testing.assert_allclose(out, want, rtol=1e-12, atol=1e-12)
