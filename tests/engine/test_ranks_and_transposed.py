"""1-D and 3-D convolutions and transposed convolutions against the nested-loop oracle,
central differences, and the adjoint identity <conv(x), y> = <x, conv_transpose(y)>."""

from __future__ import annotations

import re

import numpy as np
import pytest
from hypothesis import assume, given, settings
from hypothesis import strategies as st

from convengine import (
    ConvGeometry,
    ShapeError,
    conv,
    conv_backward,
    conv_transpose,
    conv_transpose_backward,
)

from .oracle import (
    explicit_padding,
    naive_conv,
    naive_conv_backward,
    naive_conv_transpose,
    naive_conv_transpose_backward,
)

CONV = {
    "1d": ((2, 3, 11), (4, 3, 3), dict(stride=2, padding=1)),
    "1d-reflect-floor": (
        (1, 2, 9),
        (3, 2, 4),
        dict(stride=3, padding=2, padding_mode="reflect", rounding="floor"),
    ),
    "1d-depthwise-same": ((2, 4, 8), (8, 1, 3), dict(groups=4, padding="same", dilation=2)),
    "3d": ((2, 2, 5, 6, 5), (3, 2, 3, 3, 2), dict(padding=1)),
    "3d-strided-dilated": (
        (1, 2, 7, 6, 7),
        (2, 2, 2, 3, 3),
        dict(
            stride=(2, 1, 3), dilation=(2, 1, 1), padding=((1, 0), (1, 1), (0, 2)), rounding="floor"
        ),
    ),
    "3d-grouped-same-circular": (
        (1, 4, 4, 5, 4),
        (4, 2, 3, 3, 3),
        dict(groups=2, padding="same", stride=2, padding_mode="circular"),
    ),
    "3d-depthwise-floor": (
        (2, 3, 6, 5, 5),
        (3, 1, 3, 2, 3),
        dict(groups=3, stride=2, rounding="floor"),
    ),
}

TRANSPOSED = {
    "2d-upsample": ((2, 4, 4, 4), (4, 3, 4, 4), dict(stride=2, padding=1)),
    "2d-output-padding": ((1, 2, 3, 4), (2, 3, 3, 3), dict(stride=2, padding=1, output_padding=1)),
    "2d-per-side-grouped": (
        (1, 4, 3, 3),
        (4, 2, 3, 2),
        dict(stride=(2, 3), padding=((0, 1), (2, 0)), groups=2),
    ),
    "2d-dilated-output-padding": ((1, 2, 3, 3), (2, 2, 3, 3), dict(dilation=2, output_padding=1)),
    "1d": ((2, 3, 5), (3, 2, 4), dict(stride=3, padding=1, output_padding=2)),
    "3d": ((1, 2, 3, 2, 3), (2, 3, 2, 3, 2), dict(stride=2, padding=(0, 1, 1))),
    "depthwise": (
        (1, 3, 4, 4),
        (3, 1, 3, 3),
        dict(groups=3, stride=2, padding=1, output_padding=1),
    ),
    # Found by hypothesis: the start padding crops all that the input pixel adds along the
    # last axis, and output_padding alone makes the output one pixel long.
    "padding-crops-everything": (
        (1, 1, 1, 1, 1),
        (1, 1, 1, 1, 1),
        dict(stride=(1, 1, 3), padding=((0, 0), (0, 0), (2, 0)), output_padding=(0, 0, 2)),
    ),
}


def _random(rng, *shapes):
    return [rng.standard_normal(shape) for shape in shapes]


@pytest.mark.parametrize("name", CONV)
def test_conv_of_every_rank_matches_oracle(name, rng):
    x_shape, w_shape, hyper = CONV[name]
    x, w, b = _random(rng, x_shape, w_shape, w_shape[0])
    out = conv(x, w, b, **hyper)
    np.testing.assert_allclose(out, naive_conv(x, w, b, **hyper), rtol=1e-12, atol=1e-12)
    dout = rng.standard_normal(out.shape)
    for got, want in zip(
        conv_backward(dout, x, w, **hyper), naive_conv_backward(dout, x, w, **hyper)
    ):
        np.testing.assert_allclose(got, want, rtol=1e-12, atol=1e-12)


@pytest.mark.parametrize("name", TRANSPOSED)
def test_transposed_matches_oracle(name, rng):
    x_shape, w_shape, hyper = TRANSPOSED[name]
    groups = hyper.get("groups", 1)
    x, w, b = _random(rng, x_shape, w_shape, w_shape[1] * groups)
    out = conv_transpose(x, w, b, **hyper)
    np.testing.assert_allclose(out, naive_conv_transpose(x, w, b, **hyper), rtol=1e-12, atol=1e-12)
    dout = rng.standard_normal(out.shape)
    got = conv_transpose_backward(dout, x, w, **hyper)
    for g, want in zip(got, naive_conv_transpose_backward(dout, x, w, **hyper)):
        np.testing.assert_allclose(g, want, rtol=1e-12, atol=1e-12)


@st.composite
def layers(draw, transposed=False):
    rank = draw(st.integers(1, 3))
    groups = draw(st.integers(1, 2))
    c, f = groups * draw(st.integers(1, 2)), groups * draw(st.integers(1, 2))
    kernel = tuple(draw(st.integers(1, 3)) for _ in range(rank))
    stride = tuple(draw(st.integers(1, 3)) for _ in range(rank))
    dilation = tuple(draw(st.integers(1, 2)) for _ in range(rank))
    size = tuple(draw(st.integers(1, 5)) for _ in range(rank))
    n = draw(st.integers(1, 2))
    sides = tuple((draw(st.integers(0, 2)), draw(st.integers(0, 2))) for _ in range(rank))
    if transposed:
        extra = tuple(draw(st.integers(0, max(s, d) - 1)) for s, d in zip(stride, dilation))
        out = [
            (m - 1) * s - b - e + d * (k - 1) + op + 1
            for m, s, (b, e), d, k, op in zip(size, stride, sides, dilation, kernel, extra)
        ]
        assume(min(out) >= 1)
        hyper = dict(
            stride=stride, padding=sides, output_padding=extra, dilation=dilation, groups=groups
        )
        return (n, c, *size), (c, f // groups, *kernel), hyper
    mode = draw(st.sampled_from(["zeros", "reflect", "replicate", "circular"]))
    padding = draw(st.sampled_from([sides, "same", "same_lower", "valid"]))
    pads = explicit_padding(padding, kernel, dilation, stride, size)
    assume(all(m + sum(p) >= d * (k - 1) + 1 for m, p, d, k in zip(size, pads, dilation, kernel)))
    assume(mode != "reflect" or all(max(p) < m for m, p in zip(size, pads)))
    assume(mode != "circular" or all(max(p) <= m for m, p in zip(size, pads)))
    hyper = dict(
        stride=stride,
        padding=padding,
        dilation=dilation,
        groups=groups,
        padding_mode=mode,
        rounding="floor",
    )
    return (n, c, *size), (f, c // groups, *kernel), hyper


@settings(max_examples=120)
@given(layers(), st.integers(0, 2**32 - 1))
def test_any_rank_matches_oracle(case, seed):
    x_shape, w_shape, hyper = case
    rng = np.random.default_rng(seed)
    x, w, b = _random(rng, x_shape, w_shape, w_shape[0])
    out = conv(x, w, b, **hyper)
    np.testing.assert_allclose(out, naive_conv(x, w, b, **hyper), rtol=1e-12, atol=1e-12)
    dout = rng.standard_normal(out.shape)
    for got, want in zip(
        conv_backward(dout, x, w, **hyper), naive_conv_backward(dout, x, w, **hyper)
    ):
        np.testing.assert_allclose(got, want, rtol=1e-12, atol=1e-12)


@settings(max_examples=120)
@given(layers(transposed=True), st.integers(0, 2**32 - 1))
def test_any_transposed_matches_oracle(case, seed):
    x_shape, w_shape, hyper = case
    rng = np.random.default_rng(seed)
    x, w, b = _random(rng, x_shape, w_shape, w_shape[1] * hyper["groups"])
    out = conv_transpose(x, w, b, **hyper)
    np.testing.assert_allclose(out, naive_conv_transpose(x, w, b, **hyper), rtol=1e-12, atol=1e-12)
    dout = rng.standard_normal(out.shape)
    got = conv_transpose_backward(dout, x, w, **hyper)
    for g, want in zip(got, naive_conv_transpose_backward(dout, x, w, **hyper)):
        np.testing.assert_allclose(g, want, rtol=1e-12, atol=1e-12)


@pytest.mark.parametrize("name", TRANSPOSED)
def test_adjoint_identity(name, rng):
    """<conv(u, w), v> = <u, conv_transpose(v, w)> for the matching geometry."""
    x_shape, w_shape, hyper = TRANSPOSED[name]
    v, w = _random(rng, x_shape, w_shape)
    out_shape = naive_conv_transpose(v, w, **hyper).shape
    u = rng.standard_normal(out_shape)
    conv_hyper = {k: hyper[k] for k in ("stride", "padding", "dilation", "groups") if k in hyper}
    # output_padding >= stride (allowed below the dilation) gives the convolution of u more
    # outputs than v has: the transposed convolution is the adjoint of its first ones.
    forward = conv(u, w, **conv_hyper, rounding="floor")
    left = np.vdot(forward[tuple(slice(0, s) for s in v.shape)], v)
    right = np.vdot(u, conv_transpose(v, w, **hyper))
    assert abs(left - right) <= 1e-10 * max(1.0, abs(left)), (left, right)


def _numerical_gradient(loss, array, step=1e-6):
    grad = np.zeros_like(array)
    for index in np.ndindex(array.shape):
        saved = array[index]
        array[index] = saved + step
        plus = loss()
        array[index] = saved - step
        minus = loss()
        array[index] = saved
        grad[index] = (plus - minus) / (2 * step)
    return grad


@pytest.mark.parametrize(
    "name", ["1d", "3d-strided-dilated", "3d-grouped-same-circular", "T-2d-output-padding", "T-3d"]
)
def test_central_differences(name, rng):
    transposed = name.startswith("T-")
    x_shape, w_shape, hyper = TRANSPOSED[name[2:]] if transposed else CONV[name]
    groups = hyper.get("groups", 1)
    b_size = w_shape[1] * groups if transposed else w_shape[0]
    x, w, b = _random(rng, x_shape, w_shape, b_size)
    run, grads = (conv_transpose, conv_transpose_backward) if transposed else (conv, conv_backward)
    dout = rng.standard_normal(run(x, w, b, **hyper).shape)
    dx, dw, db = grads(dout, x, w, **hyper)

    def loss():
        return float(np.sum(run(x, w, b, **hyper) * dout))

    for analytic, array in ((dx, x), (dw, w), (db, b)):
        numeric = _numerical_gradient(loss, array)
        np.testing.assert_allclose(analytic, numeric, rtol=1e-6, atol=1e-6)


@pytest.mark.parametrize(
    ("x_shape", "w_shape", "hyper", "field", "message"),
    [
        (
            (1, 2, 5, 5),
            (2, 3, 3, 3),
            dict(stride=2, output_padding=2),
            "output_padding",
            "output_padding 2 along the height must be smaller than the stride 2 or the dilation 1",
        ),
        (
            (1, 2, 2, 2),
            (2, 3, 3, 3),
            dict(padding=3),
            "padding",
            "output height (2-1)*1 - 3 - 3 + 1*(3-1) + 0 + 1 = -2 is not positive",
        ),
        ((1, 2, 4, 4), (3, 3, 3, 3), {}, "w", "w must have C_in = 2 rows"),
        (
            (1, 3, 4, 4),
            (3, 3, 3, 3),
            dict(groups=2),
            "groups",
            "groups=2 must divide the input channels C_in=3",
        ),
        (
            (1, 2, 4, 4),
            (2, 3, 3, 3),
            dict(padding="same"),
            "padding",
            "padding of a transposed convolution is numbers",
        ),
        (
            (1, 2, 4),
            (2, 3, 3, 3),
            {},
            "w",
            "w has shape (2, 3, 3, 3) (2 spatial axes) but x has shape (1, 2, 4) (1)",
        ),
    ],
)
def test_transposed_refusals(x_shape, w_shape, hyper, field, message):
    with pytest.raises(ShapeError, match=re.escape(message)) as info:
        ConvGeometry.transposed(x_shape, w_shape, **hyper)
    assert info.value.field == field


def test_rank_mismatch_names_both_shapes():
    with pytest.raises(
        ShapeError,
        match=re.escape(
            "w has shape (4, 3, 3, 3, 3) (3 spatial axes) but x has shape (2, 3, 8, 8) (2)"
        ),
    ):
        ConvGeometry.build((2, 3, 8, 8), (4, 3, 3, 3, 3))
    # The functions take the rank from w, as PyTorch's modules do: x one axis short is one
    # sample, and the refusal says how x was read.
    with pytest.raises(
        ShapeError,
        match=re.escape(
            "got 3 (x of shape (2, 3, 8, 8) is read as one sample, without the batch axis: "
            "w has 5 axes)"
        ),
    ):
        conv(np.zeros((2, 3, 8, 8)), np.zeros((4, 3, 3, 3, 3)))
