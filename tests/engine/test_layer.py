"""The stateful Conv layer agrees with the functional API."""

from __future__ import annotations

import numpy as np
import pytest

import convengine
from convengine import Conv, ShapeError, conv2d, conv2d_backward


def test_layer_matches_functional_api(rng):
    layer = Conv((4, 9, 9), 6, 3, 3, 2, 1, dilation=1, groups=2, rng=7)
    layer.b[:] = rng.standard_normal((6, 1))
    x = rng.standard_normal((3, 4, 9, 9))
    out = layer.forward(x)
    assert layer.out_dim == (6, 5, 5) == out.shape[1:]
    np.testing.assert_array_equal(
        out, conv2d(x, layer.W, layer.b.ravel(), stride=2, padding=1, groups=2)
    )
    dout = rng.standard_normal(out.shape)
    dx, (dw, db) = layer.backward(dout)
    assert db.shape == (6, 1)
    for got, want in zip(
        (dx, dw, db.ravel()), conv2d_backward(dout, x, layer.W, stride=2, padding=1, groups=2)
    ):
        np.testing.assert_array_equal(got, want)
    assert layer.params[0] is layer.W and layer.params[1] is layer.b


def test_he_initialisation_is_seeded_and_scaled():
    a = Conv((32, 8, 8), 64, 3, 3, rng=1)
    b = Conv((32, 8, 8), 64, 3, 3, rng=np.random.default_rng(1))
    np.testing.assert_array_equal(a.W, b.W)
    assert a.W.shape == (64, 32, 3, 3)
    assert abs(a.W.std() - np.sqrt(2.0 / (32 * 9))) < 0.01
    assert np.all(a.b == 0)
    depthwise = Conv((32, 8, 8), 32, 3, 3, groups=32, rng=1)
    assert abs(depthwise.W.std() - np.sqrt(2.0 / 9)) < 0.05


def test_layer_refuses_wrong_input_and_bad_geometry():
    layer = Conv((3, 8, 8), 4, 3, 3, 1, 1)
    with pytest.raises(
        ShapeError, match=r"X must have shape \(N, 3, 8, 8\) for this layer, got \(2, 3, 9, 8\)"
    ):
        layer.forward(np.zeros((2, 3, 9, 8)))
    with pytest.raises(ShapeError, match="is not a whole number"):
        Conv((3, 8, 8), 4, 3, 3, 2, 0)
    with pytest.raises(RuntimeError, match="forward pass first"):
        Conv((3, 8, 8), 4, 3, 3).backward(np.zeros((1, 4, 6, 6)))


def test_float32_layer(rng):
    layer = Conv((2, 6, 6), 3, 3, 2, padding="same", dtype=np.float32, rng=0)
    x = rng.standard_normal((2, 2, 6, 6)).astype(np.float32)
    out = layer.forward(x)
    assert out.dtype == np.float32 and out.shape == (2, 3, 6, 6)
    dx, (dw, db) = layer.backward(np.ones_like(out))
    assert dx.dtype == dw.dtype == db.dtype == np.float32


def test_public_names():
    assert set(convengine.__all__) == {
        "OPERATIONS",
        "RANKS",
        "ArrayDoc",
        "ArraySpec",
        "Conv",
        "ConvError",
        "ConvGeometry",
        "Cost",
        "DTypeError",
        "Explanation",
        "Geometry",
        "Operation",
        "ShapeError",
        "TransposedGeometry",
        "backward",
        "conv",
        "conv2d",
        "conv2d_backward",
        "conv_backward",
        "conv_transpose",
        "conv_transpose_backward",
        "explain",
        "forward",
        "transposed_backward",
        "transposed_forward",
    }
    assert not [m for m in ("fastapi", "starlette", "app") if hasattr(convengine, m)]


def test_driven_exactly_as_the_tutorial_drives_it(rng):
    """The original's code: build positionally, forward, backward, SGD through params."""
    layer = Conv((3, 10, 10), 10, 3, 3, 1, 1)
    assert layer.W.shape == (10, 3, 3, 3) and layer.b.shape == (10, 1)
    assert layer.out_dim == (10, 10, 10)
    X = rng.standard_normal((5, 3, 10, 10))
    out = layer.forward(X)
    assert out.shape == (5, *layer.out_dim)
    target = rng.standard_normal(out.shape)
    losses = []
    for _ in range(20):
        out = layer.forward(X)
        dout = (out - target) / out.size
        losses.append(0.5 * np.sum((out - target) ** 2) / out.size)
        dX, grads = layer.backward(dout)
        assert dX.shape == X.shape
        for param, grad in zip(layer.params, grads):
            assert param.shape == grad.shape
            param -= 1.0 * grad
    assert layer.params[0] is layer.W and layer.params[1] is layer.b
    assert losses[-1] < 0.5 * losses[0]


def test_rectangular_filters_and_the_new_geometry():
    layer = Conv((2, 9, 8), 4, 3, 2, 2, ((1, 1), (0, 0)), padding_mode="reflect", rng=0)
    assert layer.out_dim == (4, 5, 4)
    x = np.random.default_rng(0).standard_normal((2, 2, 9, 8))
    hyper = dict(stride=2, padding=((1, 1), (0, 0)), padding_mode="reflect")
    np.testing.assert_array_equal(layer.forward(x), conv2d(x, layer.W, layer.b.ravel(), **hyper))
    floor = Conv((3, 224, 224), 8, 7, 7, 2, 3, rounding="floor", rng=0)
    assert floor.out_dim == (8, 112, 112)
