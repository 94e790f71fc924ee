"""The engine against the nested-loop oracle: a readable grid, then hypothesis beyond it."""

from __future__ import annotations

import numpy as np
import pytest
from hypothesis import assume, given, settings
from hypothesis import strategies as st

from convengine import conv2d, conv2d_backward

from .oracle import explicit_padding, naive_conv2d, naive_conv2d_backward

# (x shape, w shape, hyperparameters)
GRID = {
    "3x3-s1-p1": ((2, 3, 7, 7), (4, 3, 3, 3), dict(stride=1, padding=1)),
    "1x1-kernel": ((2, 5, 4, 6), (3, 5, 1, 1), dict()),
    "kernel-equals-padded-input": ((1, 2, 3, 4), (3, 2, 5, 6), dict(padding=1)),
    "stride-larger-than-kernel": ((2, 2, 9, 9), (3, 2, 2, 2), dict(stride=3, padding=1)),
    "non-square-everything": (
        (2, 2, 9, 10),
        (3, 2, 3, 2),
        dict(stride=(2, 3), padding=(1, 2), dilation=(2, 1)),
    ),
    "same-odd-kernel": ((1, 2, 5, 6), (2, 2, 3, 3), dict(padding="same")),
    "same-even-kernel-asymmetric": ((2, 1, 5, 4), (2, 1, 4, 2), dict(padding="same")),
    "same-dilated": ((1, 2, 6, 5), (2, 2, 2, 3), dict(padding="same", dilation=(3, 2))),
    "valid": ((1, 3, 6, 6), (2, 3, 3, 3), dict(padding="valid", stride=3)),
    "groups-2": ((2, 4, 6, 6), (6, 2, 3, 3), dict(groups=2, padding=1)),
    "depthwise": ((2, 3, 6, 5), (3, 1, 3, 3), dict(groups=3, padding=1)),
    "depthwise-multiplier-2": ((1, 2, 5, 5), (4, 1, 3, 2), dict(groups=2, stride=(2, 1))),
    "depthwise-strided-dilated": (
        (2, 4, 9, 9),
        (4, 1, 3, 3),
        dict(groups=4, dilation=2, stride=2, padding=2),
    ),
    "N1-C1": ((1, 1, 5, 5), (1, 1, 3, 3), dict()),
    "7x7-s2-p3": ((1, 2, 11, 11), (2, 2, 7, 7), dict(stride=2, padding=3)),
    # Floor rounding: the last partial window dropped, as PyTorch does (the ResNet stem).
    "stem-floor": ((1, 2, 12, 12), (2, 2, 7, 7), dict(stride=2, padding=3, rounding="floor")),
    "floor-crops-input": ((1, 2, 8, 9), (2, 2, 3, 3), dict(stride=(2, 3), rounding="floor")),
    "per-side": ((2, 2, 6, 7), (3, 2, 3, 2), dict(padding=((3, 2), (0, 1)), stride=2)),
    "same-strided": ((1, 2, 9, 8), (2, 2, 3, 3), dict(padding="same", stride=2)),
    "same-lower-strided-dilated": (
        (1, 2, 10, 7),
        (2, 2, 2, 3),
        dict(padding="same_lower", stride=(3, 2), dilation=(2, 1)),
    ),
    "reflect": ((2, 2, 5, 6), (3, 2, 3, 3), dict(padding=2, padding_mode="reflect")),
    # The only window reads the top padding alone: the output is the bias, dx and dw zero.
    "window-on-padding-only": (
        (1, 2, 1, 3),
        (2, 2, 1, 1),
        dict(padding=((5, 0), (0, 0)), stride=(10, 1), rounding="floor"),
    ),
    "replicate-per-side": (
        (1, 3, 5, 5),
        (2, 3, 3, 2),
        dict(padding=((0, 3), (2, 1)), padding_mode="replicate"),
    ),
    "circular-strided-floor": (
        (2, 2, 6, 5),
        (2, 2, 3, 3),
        dict(padding=(5, 2), stride=2, padding_mode="circular", rounding="floor"),
    ),
    "reflect-depthwise-same": (
        (1, 4, 7, 6),
        (8, 1, 3, 3),
        dict(groups=4, padding="same", stride=2, padding_mode="reflect"),
    ),
}


def _case(rng, x_shape, w_shape):
    x = rng.standard_normal(x_shape)
    w = rng.standard_normal(w_shape)
    b = rng.standard_normal(w_shape[0])
    return x, w, b


@pytest.mark.parametrize("name", GRID)
def test_forward_matches_oracle(name, rng):
    x_shape, w_shape, hyper = GRID[name]
    x, w, b = _case(rng, x_shape, w_shape)
    expected = naive_conv2d(x, w, b, **hyper)
    out = conv2d(x, w, b, **hyper)
    assert out.dtype == np.float64
    assert out.shape == expected.shape
    np.testing.assert_allclose(out, expected, rtol=1e-12, atol=1e-12)


@pytest.mark.parametrize("name", GRID)
def test_backward_matches_oracle(name, rng):
    x_shape, w_shape, hyper = GRID[name]
    x, w, _ = _case(rng, x_shape, w_shape)
    dout = rng.standard_normal(naive_conv2d(x, w, **hyper).shape)
    expected = naive_conv2d_backward(dout, x, w, **hyper)
    for got, want, name_ in zip(conv2d_backward(dout, x, w, **hyper), expected, ["dx", "dw", "db"]):
        assert got.shape == want.shape, name_
        assert got.dtype == np.float64, name_
        np.testing.assert_allclose(got, want, rtol=1e-12, atol=1e-12, err_msg=name_)


def test_no_bias_equals_zero_bias(rng):
    x, w, _ = _case(rng, (2, 3, 6, 6), (4, 3, 3, 3))
    np.testing.assert_array_equal(conv2d(x, w), conv2d(x, w, np.zeros(4)))


@st.composite
def geometries(draw):
    """A valid convolution: the output size is whole by construction, never by rejection."""
    groups = draw(st.integers(1, 3))
    c = groups * draw(st.integers(1, 2))
    f = groups * draw(st.integers(1, 2))
    kernel = (draw(st.integers(1, 4)), draw(st.integers(1, 4)))
    dilation = (draw(st.integers(1, 2)), draw(st.integers(1, 2)))
    mode = draw(st.sampled_from(["numbers", "same", "valid"]))
    if mode == "same":
        stride = (1, 1)
        size = (draw(st.integers(1, 6)), draw(st.integers(1, 6)))
        padding: object = "same"
    else:
        stride = (draw(st.integers(1, 3)), draw(st.integers(1, 3)))
        pads = (0, 0) if mode == "valid" else (draw(st.integers(0, 2)), draw(st.integers(0, 2)))
        outs = (draw(st.integers(1, 4)), draw(st.integers(1, 4)))
        size = tuple(
            (o - 1) * s + d * (k - 1) + 1 - 2 * p
            for o, s, d, k, p in zip(outs, stride, dilation, kernel, pads)
        )
        if min(size) < 1:  # padding so large the input would vanish: shrink the padding
            pads = (0, 0)
            size = tuple(
                (o - 1) * s + d * (k - 1) + 1 for o, s, d, k in zip(outs, stride, dilation, kernel)
            )
        padding = (
            "valid"
            if mode == "valid"
            else draw(st.sampled_from([pads, pads[0]]))
            if pads[0] == pads[1]
            else pads
        )
    n = draw(st.integers(1, 2))
    hyper = dict(stride=stride, padding=padding, dilation=dilation, groups=groups)
    return (n, c, *size), (f, c // groups, *kernel), hyper


@given(geometries(), st.integers(0, 2**32 - 1))
def test_random_geometry_matches_oracle(case, seed):
    x_shape, w_shape, hyper = case
    rng = np.random.default_rng(seed)
    x, w, b = _case(rng, x_shape, w_shape)
    out = conv2d(x, w, b, **hyper)
    np.testing.assert_allclose(out, naive_conv2d(x, w, b, **hyper), rtol=1e-12, atol=1e-12)
    dout = rng.standard_normal(out.shape)
    got = conv2d_backward(dout, x, w, **hyper)
    for g, want in zip(got, naive_conv2d_backward(dout, x, w, **hyper)):
        np.testing.assert_allclose(g, want, rtol=1e-12, atol=1e-12)


@pytest.mark.parametrize("name", ["3x3-s1-p1", "depthwise", "same-even-kernel-asymmetric"])
def test_non_finite_values_stay_where_they_belong(name, rng):
    """An inf pixel poisons exactly the outputs and gradients that the oracle says it does."""
    x_shape, w_shape, hyper = GRID[name]
    x, w, _ = _case(rng, x_shape, w_shape)
    x[0, 0, 0, 0] = np.inf
    dout = rng.standard_normal(naive_conv2d(x, w, **hyper).shape)
    with np.errstate(invalid="ignore"):
        np.testing.assert_allclose(conv2d(x, w, **hyper), naive_conv2d(x, w, **hyper), rtol=1e-12)
        got = conv2d_backward(dout, x, w, **hyper)
        want = naive_conv2d_backward(dout, x, w, **hyper)
    for g, expected in zip(got, want):
        np.testing.assert_allclose(g, expected, rtol=1e-12, atol=1e-12)


def test_results_never_share_the_reused_work_buffers(rng):
    x, w, _ = _case(rng, (2, 3, 8, 8), (4, 3, 3, 3))
    out = conv2d(x, w, padding=1)
    grads = conv2d_backward(out, x, w, padding=1)
    kept = [a.copy() for a in (out, *grads)]
    conv2d(2 * x, w, padding=1)
    conv2d_backward(3 * out, 2 * x, w, padding=1)
    for a, b in zip((out, *grads), kept):
        np.testing.assert_array_equal(a, b)
        assert a.flags.owndata or (a.base is not None and a.base.flags.owndata)


@pytest.mark.parametrize("name", GRID)
def test_stale_work_buffers_never_leak_into_results(name, rng):
    """Fill every reused buffer with NaN first: a view that reads past its data shows up."""
    from convengine._kernels import layout

    big = rng.standard_normal((4, 8, 40, 40))
    conv2d_backward(
        conv2d(big, rng.standard_normal((8, 8, 3, 3))), big, rng.standard_normal((8, 8, 3, 3))
    )
    for buffer in layout._local.buffers.values():
        buffer.view(np.uint8)[:] = 0xFF  # all-ones bytes are NaN in float32 and float64
    x_shape, w_shape, hyper = GRID[name]
    x, w, b = _case(rng, x_shape, w_shape)
    np.testing.assert_allclose(
        conv2d(x, w, b, **hyper), naive_conv2d(x, w, b, **hyper), rtol=1e-12, atol=1e-12
    )
    dout = rng.standard_normal(naive_conv2d(x, w, **hyper).shape)
    for buffer in layout._local.buffers.values():
        buffer.view(np.uint8)[:] = 0xFF
    for got, want in zip(
        conv2d_backward(dout, x, w, **hyper), naive_conv2d_backward(dout, x, w, **hyper)
    ):
        np.testing.assert_allclose(got, want, rtol=1e-12, atol=1e-12)


@st.composite
def any_geometry(draw):
    """Every hyperparameter at once: rounding x padding form x padding mode x stride x
    dilation x groups, rectangular everything. Exact rounding where the size is whole."""
    groups = draw(st.integers(1, 2))
    c, f = groups * draw(st.integers(1, 2)), groups * draw(st.integers(1, 2))
    kernel = (draw(st.integers(1, 4)), draw(st.integers(1, 4)))
    dilation = (draw(st.integers(1, 2)), draw(st.integers(1, 2)))
    stride = (draw(st.integers(1, 3)), draw(st.integers(1, 3)))
    size = (draw(st.integers(1, 9)), draw(st.integers(1, 9)))
    mode = draw(st.sampled_from(["zeros", "reflect", "replicate", "circular"]))
    form = draw(st.sampled_from(["int", "pair", "sides", "valid", "same", "same_lower"]))
    limit = {"reflect": min(size) - 1, "circular": min(size)}.get(mode, 3)
    amount = st.integers(0, min(limit, 3))
    padding = {
        "int": draw(amount),
        "pair": (draw(amount), draw(amount)),
        "sides": ((draw(amount), draw(amount)), (draw(amount), draw(amount))),
    }.get(form, form)
    pads = explicit_padding(padding, kernel, dilation, stride, size)
    reach = [d * (k - 1) + 1 for d, k in zip(dilation, kernel)]
    assume(all(n + sum(p) >= r for n, p, r in zip(size, pads, reach)))
    if mode == "reflect":
        assume(all(max(p) < n for n, p in zip(size, pads)))
    if mode == "circular":
        assume(all(max(p) <= n for n, p in zip(size, pads)))
    whole = all((n + sum(p) - r) % s == 0 for n, p, r, s in zip(size, pads, reach, stride))
    rounding = draw(st.sampled_from(["exact", "floor"])) if whole else "floor"
    hyper = dict(
        stride=stride,
        padding=padding,
        dilation=dilation,
        groups=groups,
        padding_mode=mode,
        rounding=rounding,
    )
    return (draw(st.integers(1, 2)), c, *size), (f, c // groups, *kernel), hyper


@settings(max_examples=150)
@given(any_geometry(), st.integers(0, 2**32 - 1))
def test_every_geometry_matches_oracle(case, seed):
    x_shape, w_shape, hyper = case
    rng = np.random.default_rng(seed)
    x, w, b = _case(rng, x_shape, w_shape)
    out = conv2d(x, w, b, **hyper)
    np.testing.assert_allclose(out, naive_conv2d(x, w, b, **hyper), rtol=1e-12, atol=1e-12)
    dout = rng.standard_normal(out.shape)
    got = conv2d_backward(dout, x, w, **hyper)
    for g, want in zip(got, naive_conv2d_backward(dout, x, w, **hyper)):
        np.testing.assert_allclose(g, want, rtol=1e-12, atol=1e-12)


def test_floor_gives_unread_pixels_a_zero_gradient(rng):
    x, w, _ = _case(rng, (1, 1, 8, 8), (1, 1, 3, 3))
    dx, _, _ = conv2d_backward(np.ones((1, 1, 3, 3)), x, w, stride=2, rounding="floor")
    assert not dx[..., 7, :].any() and not dx[..., :, 7].any()
    assert dx[..., 6, 6] != 0
