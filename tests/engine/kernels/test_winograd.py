"""Winograd F(4x4, 3x3): its float32 error bounded against float64 direct results, its tiles
against the direct path on any size and padding, and non-finite data kept off it."""

from __future__ import annotations

import numpy as np
import pytest
from hypothesis import given
from hypothesis import strategies as st

from convengine import ConvGeometry, conv, conv_backward
from convengine._kernels import Pass, im2col, select, winograd

# The benchmark's stride-1 3x3 layers (python -m benchmarks.engine), two images each: the
# error depends on the channels and the data, not on the batch.
BENCHMARK_LAYERS = {
    "resnet3x3": ((2, 64, 56, 56), (64, 64, 3, 3)),
    "mid": ((2, 32, 56, 56), (64, 32, 3, 3)),
}
# The bound the path is held to in float32 (issue 24's; 2.8e-6 out and 3.3e-6 dx measured on
# resnet3x3, 5.6e-7 direct), and in float64 (4e-15 measured, 2e-15 direct).
FLOAT32_BOUND = 1e-5
FLOAT64_BOUND = 1e-13


def test_the_transforms_compute_the_correlation_exactly():
    """Aᵀ [(G g) ⊙ (Bᵀ d)] is the correlation of d (6) with g (3), 4 outputs, for every d and g:
    sum over j of Aᵀ[i, j] G[j, k] Bᵀ[j, l] is 1 where l = i + k, else 0."""
    identity = np.einsum("ij,jk,jl->ikl", winograd._AT, winograd._G, winograd._BT)
    want = np.zeros((4, 3, 6))
    for i in range(4):
        for k in range(3):
            want[i, k, i + k] = 1
    np.testing.assert_allclose(identity, want, atol=1e-15)


def _relative_error(got: np.ndarray, want: np.ndarray) -> float:
    """Largest absolute difference over the largest magnitude of ``want``."""
    return float(np.abs(got.astype(np.float64) - want).max() / np.abs(want).max())


@pytest.mark.parametrize("name", BENCHMARK_LAYERS)
@pytest.mark.parametrize(
    ("dtype", "bound"), [(np.float32, FLOAT32_BOUND), (np.float64, FLOAT64_BOUND)]
)
def test_error_against_float64_direct_results_is_bounded(name, dtype, bound, rng):
    x_shape, w_shape = BENCHMARK_LAYERS[name]
    geometry = ConvGeometry.build(x_shape, w_shape, padding=1)
    assert "winograd" in select(geometry, Pass.FORWARD, dtype).name
    x, w = rng.standard_normal(x_shape), rng.standard_normal(w_shape)
    dout = rng.standard_normal(geometry.out_shape)
    out = conv(x.astype(dtype), w.astype(dtype), padding=1)
    dx, dw, _ = conv_backward(dout.astype(dtype), x.astype(dtype), w.astype(dtype), padding=1)
    assert out.dtype == dx.dtype == dtype
    # float64 direct results, of the same (rounded) data
    x64, w64, dout64 = (a.astype(dtype).astype(np.float64) for a in (x, w, dout))
    want_out = im2col.forward(x64, w64, None, geometry)
    want_dx, want_dw, _ = im2col.backward(dout64, x64, w64, geometry, True)
    for label, got, want in [("out", out, want_out), ("dx", dx, want_dx), ("dw", dw, want_dw)]:
        error = _relative_error(got, want)
        assert error <= bound, f"{label}: {error:.2e} of the largest value, bound {bound:.0e}"


@st.composite
def _layers(draw):
    """Any size the tiles may overhang, any padding up to 2 per side, a few channels."""
    pads = [draw(st.integers(0, 2)) for _ in range(4)]
    height = draw(st.integers(max(1, 3 - pads[0] - pads[1]), 13))
    width = draw(st.integers(max(1, 3 - pads[2] - pads[3]), 13))
    n, c, f = draw(st.integers(1, 3)), draw(st.integers(1, 4)), draw(st.integers(1, 4))
    padding = ((pads[0], pads[1]), (pads[2], pads[3]))
    return ConvGeometry.build((n, c, height, width), (f, c, 3, 3), padding=padding)


@given(_layers(), st.integers(0, 2**32 - 1), st.sampled_from([1 << 20, 1 << 12]))
def test_tiles_agree_with_the_direct_path_on_any_size_and_padding(geometry, seed, chunk_bytes):
    """The module's passes against im2col's in float64, called directly (the selector keeps
    layers this small off the path); small chunks put each image in a chunk of its own."""
    rng = np.random.default_rng(seed)
    g = geometry
    x, w = rng.standard_normal(g.x_shape), rng.standard_normal(g.w_shape)
    b, dout = rng.standard_normal(g.f), rng.standard_normal(g.out_shape)
    original = winograd.CHUNK_BYTES
    winograd.CHUNK_BYTES = chunk_bytes
    try:
        out = winograd.forward(x, w, b, g)
        dx, dw, db = winograd.backward(dout, x, w, g, True)
    finally:
        winograd.CHUNK_BYTES = original
    np.testing.assert_allclose(out, im2col.forward(x, w, b, g), rtol=1e-12, atol=1e-12)
    want = im2col.backward(dout, x, w, g, True)
    for got, expected, label in zip((dx, dw, db), want, ("dx", "dw", "db"), strict=True):
        np.testing.assert_allclose(got, expected, rtol=1e-12, atol=1e-12, err_msg=label)


@pytest.mark.parametrize("where", ["x", "w", "dout"])
@pytest.mark.parametrize("value", [np.inf, np.nan])
def test_non_finite_data_gives_the_direct_path_s_answer(where, value, rng):
    """An inf or NaN in any array a pass reads: the run leaves Winograd, whose tiles would
    spread NaN over their neighbours, and the results are the direct path's, NaN for NaN."""
    x_shape, w_shape = (2, 32, 28, 28), (32, 32, 3, 3)
    geometry = ConvGeometry.build(x_shape, w_shape, padding=1)
    assert select(geometry, Pass.BACKWARD, np.float32, split=False).name == "winograd"
    arrays = {
        "x": rng.standard_normal(x_shape).astype(np.float32),
        "w": rng.standard_normal(w_shape).astype(np.float32),
        "dout": rng.standard_normal(geometry.out_shape).astype(np.float32),
    }
    arrays[where][(0, 3, 1, 1) if where == "w" else (0, 3, 5, 7)] = value
    x, w, dout = arrays["x"], arrays["w"], arrays["dout"]
    results = [conv(x, w, padding=1), *conv_backward(dout, x, w, padding=1)]
    direct = [im2col.forward(x, w, None, geometry), *im2col.backward(dout, x, w, geometry, False)]
    for got, want, label in zip(results, direct, ("out", "dx", "dw", "db"), strict=True):
        np.testing.assert_array_equal(np.isnan(got), np.isnan(want), err_msg=label)
        np.testing.assert_allclose(got, want, rtol=1e-4, atol=1e-3, err_msg=label)
