"""im2col's col2im onto a canvas split by stride phase (:class:`.im2col.PhaseCanvas`): the same
sums as the plain canvas, and strided layers' input gradients against the nested-loop oracle."""

from __future__ import annotations

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from convengine import ConvGeometry, conv, conv_backward, conv_transpose
from convengine._kernels import Pass, im2col, layout, select

from ..oracle import naive_conv, naive_conv_backward, naive_conv_transpose
from ..test_fast_paths import check_work_bound

# Its layers are tiny enough to gather: the strided im2col paths are read with it set aside.
pytestmark = pytest.mark.usefixtures("no_gather")

# Strided planar layers on the im2col path: (x shape, w shape, hyperparameters), output sizes
# floored as the oracle floors them
STRIDED = {
    "stem-like-7x7-s2-odd": (
        (2, 3, 15, 13),
        (4, 3, 7, 7),
        dict(stride=2, padding=3, rounding="floor"),
    ),
    # (too few columns out for wide rows: those take the plain canvas)
    "stride-rows-only": (
        (1, 3, 9, 6),
        (2, 3, 3, 5),
        dict(stride=(2, 1), padding=(1, 0), rounding="floor"),
    ),
    "stride-3-by-2-dilated": (
        (2, 2, 13, 11),
        (3, 2, 3, 2),
        dict(stride=(3, 2), dilation=2, rounding="floor"),
    ),
    "dilation-a-multiple-of-stride": (
        (1, 2, 11, 12),
        (2, 2, 3, 3),
        dict(stride=2, dilation=2, rounding="floor"),
    ),
    "per-side-pads": (
        (1, 3, 8, 9),
        (4, 3, 4, 3),
        dict(stride=2, padding=((2, 1), (0, 3)), rounding="floor"),
    ),
    "grouped": ((2, 4, 9, 9), (6, 2, 3, 3), dict(stride=2, padding=1, groups=2, rounding="floor")),
    "image-smaller-than-stride": (
        (1, 2, 2, 3),
        (3, 2, 2, 2),
        dict(stride=4, padding=1, rounding="floor"),
    ),
    "line": ((2, 3, 17), (4, 3, 5), dict(stride=3, padding=2, rounding="floor")),
}


def _spy_phase_canvas(monkeypatch) -> list[int]:
    made: list[int] = []
    original = im2col.PhaseCanvas.blank

    def blank(geometry, dtype, slot):
        made.append(1)
        return original(geometry, dtype, slot)

    monkeypatch.setattr(im2col.PhaseCanvas, "blank", staticmethod(blank))
    return made


def _poison_work_buffers(rng) -> None:
    """Every reused buffer filled with NaN first: a place read before it is written shows up."""
    big = rng.standard_normal((2, 8, 31, 31))
    w = rng.standard_normal((8, 8, 3, 3))
    conv_backward(conv(big, w, stride=2), big, w, stride=2)
    for buffer in layout._local.buffers.values():
        buffer.view(np.uint8)[:] = 0xFF


@pytest.mark.parametrize("name", STRIDED)
def test_strided_backward_on_phases_matches_the_oracle(name, rng, monkeypatch):
    x_shape, w_shape, hyper = STRIDED[name]
    geometry = ConvGeometry.build(x_shape, w_shape, **hyper)
    assert select(geometry, Pass.BACKWARD, np.float64).name == "im2col"
    _poison_work_buffers(rng)
    made = _spy_phase_canvas(monkeypatch)
    x, w, dout = (rng.standard_normal(s) for s in (x_shape, w_shape, geometry.out_shape))
    got, want = conv_backward(dout, x, w, **hyper), naive_conv_backward(dout, x, w, **hyper)
    assert made, "the input gradient was not gathered from a phase canvas"
    for grad, expected, label in zip(got, want, ["dx", "dw", "db"]):
        np.testing.assert_allclose(grad, expected, rtol=1e-12, atol=1e-12, err_msg=label)


# Transposed layers whose forward pass is im2col's input gradient on phases (their windows
# overlap, so the phases path of non-overlapping windows does not take them, and their
# kernels are no whole number of strides, nor the sub-pixel path).
TRANSPOSED = {
    "5x5-s2-p2": ((2, 4, 5, 6), (4, 3, 5, 5), dict(stride=2, padding=2)),
    "output-padding-odd": ((1, 3, 4, 3), (3, 2, 3, 3), dict(stride=2, output_padding=1)),
    "stride-3-dilated": ((1, 2, 3, 4), (2, 3, 2, 3), dict(stride=(3, 2), dilation=(2, 1))),
}


@pytest.mark.parametrize("name", TRANSPOSED)
def test_transposed_forward_on_phases_matches_the_oracle(name, rng, monkeypatch):
    x_shape, w_shape, hyper = TRANSPOSED[name]
    conv_geometry = ConvGeometry.transposed(x_shape, w_shape, **hyper).conv
    assert select(conv_geometry, Pass.INPUT_GRADIENT, np.float64).name == "im2col"
    _poison_work_buffers(rng)
    made = _spy_phase_canvas(monkeypatch)
    x, w, b = (rng.standard_normal(s) for s in (x_shape, w_shape, conv_geometry.c))
    out = conv_transpose(x, w, b, **hyper)
    assert made
    want = naive_conv_transpose(x, w, b, **hyper)
    np.testing.assert_allclose(out, want, rtol=1e-12, atol=1e-12)


@pytest.mark.parametrize("bad", [np.inf, np.nan], ids=["inf", "nan"])
def test_a_non_finite_gradient_reaches_only_its_window(bad, rng):
    """No junk is added on the phase canvas: an inf or NaN in dout makes dx non-finite on the
    pixels of its window and nowhere else, where dx is the oracle's without it. (The oracle's
    own dx multiplies every pixel by an identity matrix: its inf would be NaN everywhere.)"""
    x_shape, w_shape, hyper = STRIDED["stride-3-by-2-dilated"]
    geometry = ConvGeometry.build(x_shape, w_shape, **hyper)
    x, w, dout = (rng.standard_normal(s) for s in (x_shape, w_shape, geometry.out_shape))
    where = (1, 2, 1, 2)
    one_hot = np.zeros_like(dout)
    one_hot[where] = 1.0
    window = naive_conv_backward(one_hot, x, np.ones_like(w), **hyper)[0] != 0
    dout[where] = 0.0
    want = naive_conv_backward(dout, x, w, **hyper)[0]
    dout[where] = bad
    with np.errstate(invalid="ignore"):
        dx = conv_backward(dout, x, w, **hyper)[0]
    assert window.sum() == 2 * 3 * 2  # C/groups channels times the kernel's offsets
    np.testing.assert_array_equal(~np.isfinite(dx), window)
    np.testing.assert_allclose(dx[~window], want[~window], rtol=1e-12, atol=1e-12)


@st.composite
def _strided_geometries(draw):
    stride = tuple(draw(st.integers(1, 4)) for _ in range(2))
    dilation = tuple(draw(st.integers(1, 3)) for _ in range(2))
    kernel = tuple(draw(st.integers(1, 4)) for _ in range(2))
    pads = tuple((draw(st.integers(0, 3)), draw(st.integers(0, 3))) for _ in range(2))
    size = tuple(
        draw(st.integers(max(1, d * (k - 1) + 1 - sum(p)), 12))
        for d, k, p in zip(dilation, kernel, pads, strict=True)
    )
    n, c = draw(st.integers(1, 2)), draw(st.integers(1, 3))
    hyper = dict(stride=stride, dilation=dilation, padding=pads, rounding="floor")
    return ConvGeometry.build((n, c, *size), (2, c, *kernel), **hyper)


@settings(max_examples=60, deadline=None)
@given(_strided_geometries(), st.integers(0, 2**32 - 1))
def test_the_phase_canvas_sums_what_the_plain_canvas_sums(geometry, seed):
    """Any stride, dilation, kernel and padding: the same sums, bit for bit (one add per
    kernel offset in the same order on both canvases)."""
    g = geometry
    dcols = np.random.default_rng(seed).standard_normal((g.n, g.c, *g.kernel, *g.out))
    plain = layout.Canvas.blank(g, dcols.dtype, "test_plain", g.w_out)
    plain.col2im_add(dcols, slice(None))
    phases = im2col.PhaseCanvas.blank(g, dcols.dtype, "test_phases")
    phases.col2im_add(dcols, slice(None))
    np.testing.assert_array_equal(phases.interior(), plain.interior())
    assert phases.phases.size <= im2col.PhaseCanvas.elements(g, g.c)


@pytest.mark.parametrize("name", STRIDED)
def test_strided_forward_in_row_blocks_copies_fields_from_phases(name, rng, monkeypatch):
    """With blocks of a row or two, every strided layer's forward copies its columns out of x
    split by phase, block by block, bias included or not."""
    x_shape, w_shape, hyper = STRIDED[name]
    monkeypatch.setattr(im2col, "CHUNK_BYTES", 1)  # one output row per block
    monkeypatch.setattr(im2col, "PHASE_FIELD_COPIES", 0)  # every strided layer
    _poison_work_buffers(rng)
    made = _spy_phase_canvas(monkeypatch)
    x, w, b = rng.standard_normal(x_shape), rng.standard_normal(w_shape), None
    for b in (None, rng.standard_normal(w_shape[0])):
        out = conv(x, w, b, **hyper)
        np.testing.assert_allclose(out, naive_conv(x, w, b, **hyper), rtol=1e-12, atol=1e-12)
    assert len(made) == 2


@pytest.mark.parametrize(
    "w_shape, stride, split",
    [((2, 3, 7, 7), 2, True), ((2, 3, 4, 4), 2, False), ((2, 3, 3, 3), 1, False)],
    ids=["7x7-s2-twelve-copies", "4x4-s2-four-copies", "stride-1"],
)
def test_row_blocks_split_x_by_phase_where_fields_copy_each_pixel_often(
    w_shape, stride, split, rng, monkeypatch
):
    monkeypatch.setattr(im2col, "CHUNK_BYTES", 1)
    made = _spy_phase_canvas(monkeypatch)
    x, w = rng.standard_normal((1, 3, 12, 12)), rng.standard_normal(w_shape)
    hyper = dict(stride=stride, padding=3, rounding="floor")
    np.testing.assert_allclose(conv(x, w, **hyper), naive_conv(x, w, **hyper), atol=1e-12)
    assert bool(made) is split


@pytest.mark.parametrize("name", STRIDED)
def test_strided_forward_matches_the_oracle_and_the_work_bound(name, rng):
    """The forward passes of the grid (the 7x7 one in row blocks of phase-split columns), and
    both passes within ``work_elements``, the phase canvas counted."""
    x_shape, w_shape, hyper = STRIDED[name]
    x, w = rng.standard_normal(x_shape), rng.standard_normal(w_shape)
    np.testing.assert_allclose(conv(x, w, **hyper), naive_conv(x, w, **hyper), atol=1e-12)
    check_work_bound(rng, x_shape, w_shape, hyper)
