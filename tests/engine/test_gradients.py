"""Gradients checked without the oracle: central differences and the adjoint identity."""

from __future__ import annotations

import numpy as np
import pytest

from convengine import conv2d, conv2d_backward

CASES = {
    "3x3-p1": ((2, 2, 5, 5), (3, 2, 3, 3), dict(padding=1)),
    "strided-dilated-rect": (
        (1, 2, 7, 8),
        (2, 2, 2, 3),
        dict(stride=(2, 3), dilation=(2, 1), padding=(1, 2)),
    ),
    "grouped": ((2, 4, 5, 5), (4, 2, 3, 3), dict(groups=2, padding="same")),
    "depthwise": ((2, 3, 7, 7), (6, 1, 3, 3), dict(groups=3, stride=2, padding=(1, 1))),
    "reflect": ((1, 2, 5, 6), (2, 2, 3, 3), dict(padding=((2, 1), (1, 2)), padding_mode="reflect")),
    "replicate-strided-floor": (
        (1, 2, 6, 6),
        (2, 2, 3, 3),
        dict(padding=2, stride=2, padding_mode="replicate", rounding="floor"),
    ),
    "circular-same-strided": (
        (2, 2, 5, 4),
        (3, 2, 3, 2),
        dict(padding="same", stride=2, padding_mode="circular"),
    ),
    "zeros-floor-per-side": (
        (1, 1, 7, 8),
        (2, 1, 3, 3),
        dict(padding=((1, 0), (0, 2)), stride=3, rounding="floor"),
    ),
}


def _relative_error(a, b):
    return np.max(np.abs(a - b) / np.maximum(1e-8, np.abs(a) + np.abs(b)))


def _numerical_gradient(loss, array, step=1e-5):
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


@pytest.mark.parametrize("name", CASES)
def test_central_differences(name, rng):
    x_shape, w_shape, hyper = CASES[name]
    x, w = rng.standard_normal(x_shape), rng.standard_normal(w_shape)
    b = rng.standard_normal(w_shape[0])
    projection = rng.standard_normal(conv2d(x, w, b, **hyper).shape)

    def loss():
        return float(np.sum(conv2d(x, w, b, **hyper) * projection))

    dx, dw, db = conv2d_backward(projection, x, w, **hyper)
    for analytic, array, label in ((dx, x, "dx"), (dw, w, "dw"), (db, b, "db")):
        numeric = _numerical_gradient(loss, array)
        error = _relative_error(analytic, numeric)
        assert error < 1e-6, f"{label}: relative error {error:.3g}"


@pytest.mark.parametrize(
    "x_shape, w_shape, hyper",
    [
        ((4, 16, 20, 18), (8, 16, 3, 3), dict(padding=1)),
        ((3, 8, 23, 23), (12, 4, 5, 5), dict(stride=2, groups=2, dilation=(1, 2), padding=(2, 4))),
        ((2, 16, 15, 15), (16, 1, 3, 3), dict(groups=16, padding="same")),
    ],
    ids=["resnet-like", "grouped-strided", "depthwise-same"],
)
def test_adjoint_identity(x_shape, w_shape, hyper, rng):
    """conv is linear in x and in w: <v, conv(u, w)> = <dx(v), u> and likewise for w."""
    x, w = rng.standard_normal(x_shape), rng.standard_normal(w_shape)
    v = rng.standard_normal(conv2d(x, w, **hyper).shape)
    dx, dw, _ = conv2d_backward(v, x, w, **hyper)
    u_x, u_w = rng.standard_normal(x_shape), rng.standard_normal(w_shape)
    for lhs, rhs, label in (
        (np.vdot(v, conv2d(u_x, w, **hyper)), np.vdot(dx, u_x), "x"),
        (np.vdot(v, conv2d(x, u_w, **hyper)), np.vdot(dw, u_w), "w"),
    ):
        assert abs(lhs - rhs) <= 1e-10 * max(abs(lhs), 1.0), (
            f"{label}: <v, Ju> = {lhs!r}, <J^T v, u> = {rhs!r}"
        )
