"""The stateful Conv layer agrees with the functional API."""

from __future__ import annotations

import numpy as np
import pytest

import convengine
from convengine import Conv, ShapeError, conv2d, conv2d_backward


def test_layer_matches_functional_api(rng):
    layer = Conv((4, 9, 9), 6, 3, stride=2, padding=1, dilation=1, groups=2, rng=7)
    layer.b[:] = rng.standard_normal(6)
    x = rng.standard_normal((3, 4, 9, 9))
    out = layer.forward(x)
    assert layer.out_dim == (6, 5, 5) == out.shape[1:]
    np.testing.assert_array_equal(out, conv2d(x, layer.W, layer.b, stride=2, padding=1, groups=2))
    dout = rng.standard_normal(out.shape)
    dx, (dw, db) = layer.backward(dout)
    for got, want in zip(
        (dx, dw, db), conv2d_backward(dout, x, layer.W, stride=2, padding=1, groups=2)
    ):
        np.testing.assert_array_equal(got, want)
    assert layer.params[0] is layer.W and layer.params[1] is layer.b


def test_he_initialisation_is_seeded_and_scaled():
    a, b = Conv((32, 8, 8), 64, 3, rng=1), Conv((32, 8, 8), 64, 3, rng=np.random.default_rng(1))
    np.testing.assert_array_equal(a.W, b.W)
    assert a.W.shape == (64, 32, 3, 3)
    assert abs(a.W.std() - np.sqrt(2.0 / (32 * 9))) < 0.01
    assert np.all(a.b == 0)
    depthwise = Conv((32, 8, 8), 32, 3, groups=32, rng=1)
    assert abs(depthwise.W.std() - np.sqrt(2.0 / 9)) < 0.05


def test_layer_refuses_wrong_input_and_bad_geometry():
    layer = Conv((3, 8, 8), 4, 3, padding=1)
    with pytest.raises(
        ShapeError, match=r"X must have shape \(N, 3, 8, 8\) for this layer, got \(2, 3, 9, 8\)"
    ):
        layer.forward(np.zeros((2, 3, 9, 8)))
    with pytest.raises(ShapeError, match="is not a whole number"):
        Conv((3, 8, 8), 4, 3, stride=2)
    with pytest.raises(RuntimeError, match="forward pass first"):
        Conv((3, 8, 8), 4, 3).backward(np.zeros((1, 4, 6, 6)))


def test_float32_layer(rng):
    layer = Conv((2, 6, 6), 3, (3, 2), padding="same", dtype=np.float32, rng=0)
    x = rng.standard_normal((2, 2, 6, 6)).astype(np.float32)
    out = layer.forward(x)
    assert out.dtype == np.float32 and out.shape == (2, 3, 6, 6)
    dx, (dw, db) = layer.backward(np.ones_like(out))
    assert dx.dtype == dw.dtype == db.dtype == np.float32


def test_public_names():
    assert set(convengine.__all__) == {
        "OPERATIONS",
        "Conv",
        "ConvError",
        "ConvGeometry",
        "Cost",
        "DTypeError",
        "Operation",
        "ShapeError",
        "backward",
        "conv2d",
        "conv2d_backward",
        "forward",
    }
    assert not [m for m in ("fastapi", "starlette", "app") if hasattr(convengine, m)]
