"""The sub-pixel path: a transposed layer whose kernel is a whole number of strides (the input
gradient of its convolution) as one stride-1 forward pass of all phases, against the
nested-loop oracle."""

from __future__ import annotations

import numpy as np
import pytest
from hypothesis import assume, given, settings
from hypothesis import strategies as st

from convengine import ConvGeometry, conv_transpose
from convengine._kernels import Pass, halves, layout, select, subpixel, winograd

from ..oracle import naive_conv_transpose
from ..test_fast_paths import check_work_bound

# Its layers are tiny enough to gather: the sub-pixel path is read with it set aside.
pytestmark = pytest.mark.usefixtures("no_gather")

# Transposed layers: (x shape, w shape, hyperparameters, the input gradient's path)
LAYERS = {
    "upsample-4x4-s2-p1": ((2, 5, 4, 6), (5, 3, 4, 4), dict(stride=2, padding=1), "subpixel"),
    "batch-1-unpadded": ((1, 3, 3, 3), (3, 2, 4, 4), dict(stride=2), "subpixel"),
    "odd-batch": ((3, 2, 3, 4), (2, 3, 4, 4), dict(stride=2, padding=1), "subpixel"),
    "6x6-s3-output-padding": (
        (1, 3, 3, 2),
        (3, 4, 6, 6),
        dict(stride=3, padding=1, output_padding=2),
        "subpixel",
    ),
    "non-square-6x4-s3x2": (
        (2, 3, 3, 4),
        (3, 5, 6, 4),
        dict(stride=(3, 2), padding=(2, 1), output_padding=(1, 0)),
        "subpixel",
    ),
    # a kernel of three strides; the padding crops more than a stride
    "6x6-s2-padding-3": ((1, 2, 4, 3), (2, 3, 6, 6), dict(stride=2, padding=3), "subpixel"),
    "stride-along-one-axis": (
        (2, 3, 4, 3),
        (3, 2, 4, 3),
        dict(stride=(2, 1), padding=(1, 1)),
        "subpixel",
    ),
    "per-side-padding": (
        (1, 2, 4, 4),
        (2, 3, 4, 4),
        dict(stride=2, padding=((0, 3), (2, 1))),
        "subpixel",
    ),
    "grouped": ((2, 4, 3, 4), (4, 3, 4, 4), dict(stride=2, padding=1, groups=2), "subpixel"),
    "line": ((2, 3, 7), (3, 2, 4), dict(stride=2, padding=1), "subpixel"),
    "volume-slices": (
        (1, 2, 3, 3, 4),
        (2, 3, 2, 4, 4),
        dict(stride=(1, 2, 2), padding=1),
        "volume(subpixel)",
    ),
    # Not its layers: windows that do not overlap, a kernel not a whole number of strides,
    # a dilated kernel, one channel per filter, more filters than channels times SH*SW.
    "no-overlap-2x2-s2": ((1, 2, 3, 3), (2, 3, 2, 2), dict(stride=2), "phases"),
    "3x3-s2": ((1, 2, 3, 3), (2, 3, 3, 3), dict(stride=2, padding=1), "im2col"),
    "dilated-4x4-s2": ((1, 2, 3, 3), (2, 3, 4, 4), dict(stride=2, dilation=2), "im2col"),
    "depthwise-4x4-s2": (
        (1, 3, 4, 4),
        (3, 1, 4, 4),
        dict(stride=2, padding=1, groups=3),
        "depthwise-taps",
    ),
    "13-filters-3-channels": ((1, 13, 3, 3), (13, 3, 4, 4), dict(stride=2, padding=1), "im2col"),
}


def _poison_work_buffers(rng) -> None:
    """Every reused buffer filled with NaN first: a place read before it is written shows up."""
    big, w = rng.standard_normal((2, 8, 12, 12)), rng.standard_normal((8, 8, 4, 4))
    conv_transpose(big, w, stride=2, padding=1)
    for buffer in layout._local.buffers.values():
        buffer.view(np.uint8)[:] = 0xFF


def _calls(monkeypatch) -> list[int]:
    """A record of the sub-pixel path's runs, one entry per call."""
    calls: list[int] = []
    original = subpixel.input_gradient

    def spy(*args):
        calls.append(1)
        return original(*args)

    monkeypatch.setattr(subpixel, "input_gradient", spy)
    return calls


def _check(x_shape, w_shape, hyper, rng, dtype=np.float64) -> np.ndarray:
    """conv_transpose in ``dtype`` against the oracle; its output."""
    x = rng.standard_normal(x_shape).astype(dtype)
    w = rng.standard_normal(w_shape).astype(dtype)
    b = rng.standard_normal(w_shape[1] * hyper.get("groups", 1)).astype(dtype)
    out = conv_transpose(x, w, b, **hyper)
    assert out.dtype == dtype and out.flags.c_contiguous
    want = naive_conv_transpose(x, w, b, **hyper)
    tolerance = 1e-12 if dtype == np.float64 else 2e-5
    np.testing.assert_allclose(out, want, rtol=tolerance, atol=tolerance * np.abs(want).max())
    return out


@pytest.mark.parametrize("dtype", [np.float64, np.float32])
@pytest.mark.parametrize("name", LAYERS)
def test_transposed_layers_take_their_path_and_match_the_oracle(name, dtype, rng, monkeypatch):
    x_shape, w_shape, hyper, path = LAYERS[name]
    conv = ConvGeometry.transposed(x_shape, w_shape, **hyper).conv
    assert select(conv, Pass.INPUT_GRADIENT, dtype, split=False).name == path
    _poison_work_buffers(rng)
    calls = _calls(monkeypatch)
    _check(x_shape, w_shape, hyper, rng, dtype)
    assert bool(calls) is ("subpixel" in path)


@pytest.mark.parametrize("name", [n for n, case in LAYERS.items() if case[0][0] > 1])
def test_split_batches_take_the_path_on_each_half(name, rng, monkeypatch):
    """Both halves (of an odd batch too) on the sub-pixel path, each sample's bits those of
    the whole batch."""
    x_shape, w_shape, hyper, path = LAYERS[name]
    x, w = rng.standard_normal(x_shape), rng.standard_normal(w_shape)
    whole = conv_transpose(x, w, **hyper)
    monkeypatch.setattr(halves, "MIN_SPLIT_FLOPS", 0)
    conv = ConvGeometry.transposed(x_shape, w_shape, **hyper).conv
    if halves.supports(conv):
        assert select(conv, Pass.INPUT_GRADIENT).name == f"halves({path})"
    calls = _calls(monkeypatch)
    np.testing.assert_array_equal(conv_transpose(x, w, **hyper), whole)
    assert len(calls) == (2 if halves.supports(conv) else 1) * ("subpixel" in path)
    check_work_bound(rng, x_shape, w_shape, hyper, transposed=True)


@pytest.mark.parametrize("name", LAYERS)
def test_work_elements_bounds_the_path(name, rng):
    check_work_bound(rng, *LAYERS[name][:3], transposed=True)


def test_the_stacked_pass_is_a_core_stride_1_geometry():
    """Its padded input is read whole, and its output has a place per stride of the padded
    input gradient (the phase canvas's layout)."""
    conv = ConvGeometry.transposed((2, 5, 4, 6), (5, 3, 6, 4), stride=(3, 2), padding=1).conv
    stacked = subpixel.stacked_geometry(conv)
    assert stacked.is_core and stacked.stride == (1, 1) and stacked.kernel == (2, 2)
    assert (stacked.c, stacked.f, stacked.size) == (5, 3 * 3 * 2, (4, 6))
    assert stacked.out == tuple(p // s for p, s in zip(conv.padded_hw, conv.stride, strict=True))


def test_an_inf_in_x_reaches_only_its_window(rng):
    """x is dout of the convolution; its padding is zeros and meets only w, so x may hold
    anything: an inf makes the output non-finite on the pixels it reaches, and nowhere else."""
    x_shape, w_shape, hyper, _ = LAYERS["upsample-4x4-s2-p1"]
    conv = ConvGeometry.transposed(x_shape, w_shape, **hyper).conv
    assert select(conv, Pass.INPUT_GRADIENT, x_finite=False, split=False).name == "subpixel"
    x, w = rng.standard_normal(x_shape), rng.standard_normal(w_shape)
    where = (1, 2, 0, 3)
    one_hot = np.zeros_like(x)
    one_hot[where] = 1.0
    window = naive_conv_transpose(one_hot, np.ones_like(w), **hyper) != 0
    x[where] = 0.0
    want = naive_conv_transpose(x, w, **hyper)
    x[where] = np.inf
    with np.errstate(invalid="ignore"):
        out = conv_transpose(x, w, **hyper)
    assert window.sum() == 3 * 3 * 4  # three filters, 4x4 pixels but the cropped first row
    np.testing.assert_array_equal(~np.isfinite(out), window)
    np.testing.assert_allclose(out[~window], want[~window], rtol=1e-12, atol=1e-12)


@pytest.mark.parametrize("bad", [np.inf, np.nan], ids=["inf", "nan"])
def test_a_non_finite_kernel_leaves_the_path(bad, rng, monkeypatch):
    """dout's padding meets w in the stacked pass (inf * 0 = NaN where the oracle adds
    nothing): with a non-finite w the layer takes im2col, whose output is the oracle's."""
    x_shape, w_shape, hyper, _ = LAYERS["upsample-4x4-s2-p1"]
    conv = ConvGeometry.transposed(x_shape, w_shape, **hyper).conv
    assert select(conv, Pass.INPUT_GRADIENT, w_finite=False, split=False).name == "im2col"
    x, w = rng.standard_normal(x_shape), rng.standard_normal(w_shape)
    w[1, 2, 0, 0] = bad  # the corner tap: cropped on the first row and column
    calls = _calls(monkeypatch)
    with np.errstate(invalid="ignore"):
        out = conv_transpose(x, w, **hyper)
        want = naive_conv_transpose(x, w, **hyper)
    assert not calls
    np.testing.assert_array_equal(np.isfinite(out), np.isfinite(want))
    assert not np.isfinite(want).all() and np.isfinite(want[:, :2]).all()
    finite = np.isfinite(want)
    np.testing.assert_allclose(out[finite], want[finite], rtol=1e-12, atol=1e-12)


@st.composite
def _upsampling_layers(draw):
    """A transposed layer of kernel a whole number of strides, windows overlapping, and at
    least F/(SH*SW) channels out per group (fewer: im2col; one with groups: depthwise)."""
    stride = tuple(draw(st.integers(1, 3)) for _ in range(2))
    kernel = tuple(s * draw(st.integers(1, 3)) for s in stride)
    assume(any(k > s for k, s in zip(kernel, stride, strict=True)) and max(stride) > 1)
    groups, f_per_group = draw(st.integers(1, 2)), draw(st.integers(1, 3))
    fewest = max(groups, -(-f_per_group // (stride[0] * stride[1])))
    c_in, c_out = groups * f_per_group, draw(st.integers(fewest, 3))
    size = tuple(draw(st.integers(1, 5)) for _ in range(2))
    padding = tuple((draw(st.integers(0, k - 1)), draw(st.integers(0, k - 1))) for k in kernel)
    extra = tuple(draw(st.integers(0, s - 1)) for s in stride)
    # the output keeps a pixel along each axis
    span = [
        (n - 1) * s + k + e - sum(p) for n, s, k, e, p in zip(size, stride, kernel, extra, padding)
    ]
    assume(min(span) >= 1)
    hyper = dict(stride=stride, padding=padding, output_padding=extra, groups=groups)
    return (draw(st.integers(1, 3)), c_in, *size), (c_in, c_out, *kernel), hyper


@settings(max_examples=60, deadline=None)
@given(_upsampling_layers(), st.integers(0, 2**32 - 1))
def test_random_upsampling_layers_match_the_oracle(layer, seed):
    x_shape, w_shape, hyper = layer
    conv = ConvGeometry.transposed(x_shape, w_shape, **hyper).conv
    assert select(conv, Pass.INPUT_GRADIENT, split=False).name in ("subpixel", "empty")
    _check(x_shape, w_shape, hyper, np.random.default_rng(seed))


@pytest.mark.parametrize("bad", [None, np.inf], ids=["finite", "inf"])
def test_the_stacked_pass_takes_winograd_for_finite_data_only(bad, rng, monkeypatch, ran_paths):
    """A 6x6 stride-2 kernel stacks into 3x3 stride 1, which Winograd takes (its thresholds
    lowered to a layer the oracle computes in a moment); an inf in x would spread NaN over a
    tile there, so that pass selects again without it."""
    monkeypatch.setattr(winograd, "MIN_CHANNELS", 5)
    monkeypatch.setattr(winograd, "MIN_POSITIONS", 16)
    x_shape, w_shape, hyper = (2, 6, 4, 5), (6, 3, 6, 6), dict(stride=2, padding=2)
    seen = ran_paths
    x, w = rng.standard_normal(x_shape), rng.standard_normal(w_shape)
    want = naive_conv_transpose(x, w, **hyper)
    if bad is None:
        out = conv_transpose(x, w, **hyper)
        np.testing.assert_allclose(out, want, rtol=1e-12, atol=1e-12)
        assert seen == ["subpixel", "winograd"]
        return
    one_hot = np.zeros_like(x)
    one_hot[1, 4, 2, 2] = 1.0
    window = naive_conv_transpose(one_hot, np.ones_like(w), **hyper) != 0
    x[1, 4, 2, 2] = 0.0
    want = naive_conv_transpose(x, w, **hyper)
    x[1, 4, 2, 2] = bad
    with np.errstate(invalid="ignore"):
        out = conv_transpose(x, w, **hyper)
    assert seen == ["subpixel", "small"]  # its forward meets no junk: any data
    np.testing.assert_array_equal(~np.isfinite(out), window)
    np.testing.assert_allclose(out[~window], want[~window], rtol=1e-12, atol=1e-12)
