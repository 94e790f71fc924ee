"""The engine's special paths against the oracle, each one checked to be the path selected."""

from __future__ import annotations

import tracemalloc

import numpy as np
import pytest
from hypothesis import assume, given
from hypothesis import strategies as st

from convengine import ConvGeometry, conv2d, conv2d_backward
from convengine._kernels import (
    Pass,
    Path,
    depthwise,
    gather,
    halves,
    im2col,
    layout,
    pointwise,
    select,
    work_elements,
)

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
    monkeypatch.setattr(im2col, "DIRECT_IM2COL_MIN_ELEMENTS", 0)
    calls = _spy(monkeypatch, layout.FieldRuns, "copy_inside")
    x_shape, w_shape, hyper = GRID[name]
    conv2d(rng.standard_normal((2, 8, 30, 30)), rng.standard_normal((8, 8, 3, 3)))
    for buffer in layout._local.buffers.values():
        buffer.view(np.uint8)[:] = 0xFF  # NaN: a padding zero left unwritten shows up
    calls.clear()
    _check_against_oracle(rng, x_shape, w_shape, hyper)
    # Direct reads are im2col's, for kernels of at most 3x3, whose padding is zeros (the
    # padded copy of the other modes is made first, so the core reads a padded x directly).
    geometry = ConvGeometry.build(x_shape, w_shape, **hyper)
    is_im2col = select(geometry, Pass.FORWARD).path is Path.IM2COL
    assert bool(calls) == (is_im2col and w_shape[2] * w_shape[3] <= 9)


@given(geometries(), st.integers(0, 2**32 - 1))
def test_direct_im2col_on_random_geometries(case, seed):
    original = im2col.DIRECT_IM2COL_MIN_ELEMENTS
    im2col.DIRECT_IM2COL_MIN_ELEMENTS = 0
    try:
        x_shape, w_shape, hyper = case
        rng = np.random.default_rng(seed)
        x, w, b = (rng.standard_normal(s) for s in (x_shape, w_shape, w_shape[0]))
        np.testing.assert_allclose(
            conv2d(x, w, b, **hyper), naive_conv2d(x, w, b, **hyper), rtol=1e-12, atol=1e-12
        )
    finally:
        im2col.DIRECT_IM2COL_MIN_ELEMENTS = original


def test_large_layers_read_x_directly_and_small_ones_pad_first(rng, monkeypatch):
    calls = _spy(monkeypatch, layout.FieldRuns, "copy_inside")
    _check_against_oracle(rng, (1, 8, 41, 50), (3, 8, 3, 3), dict(padding=1, stride=(2, 1)))
    assert calls
    calls.clear()
    _check_against_oracle(rng, (1, 2, 6, 6), (3, 2, 3, 3), dict(padding=1))
    assert not calls


def _selected(x_shape, w_shape, hyper, pass_, **finite):
    return select(ConvGeometry.build(x_shape, w_shape, **hyper), pass_, **finite).name


@pytest.mark.parametrize("name", DEPTHWISE)
def test_flat_depthwise_matches_oracle(name, rng):
    for pass_ in (Pass.FORWARD, Pass.BACKWARD):
        assert _selected(*DEPTHWISE[name], pass_) == "depthwise"
    _check_against_oracle(rng, *DEPTHWISE[name])


@pytest.mark.parametrize("name", ["3x3-p1", "multiplier-3", "dilated-non-square"])
def test_flat_depthwise_in_groups_of_one_plane(name, rng, monkeypatch):
    """Several groups, each one plane: the channel of each plane is found right."""
    monkeypatch.setattr(depthwise, "GROUP_BYTES", 1)
    _check_against_oracle(rng, *DEPTHWISE[name])


def test_flat_depthwise_float32_error(rng):
    x_shape, w_shape, hyper = (2, 8, 20, 20), (8, 1, 3, 3), dict(groups=8, padding=1)
    _check_against_oracle(rng, x_shape, w_shape, hyper, np.float32, tolerance=1e-5)


def test_strided_depthwise_keeps_its_own_path(rng):
    layer = ((1, 2, 7, 7), (2, 1, 3, 3), dict(groups=2, stride=2, padding=1))
    for pass_ in (Pass.FORWARD, Pass.BACKWARD):
        assert _selected(*layer, pass_) == "depthwise-taps"
    _check_against_oracle(rng, *layer)


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
        ((2, 4, 12, 12), (4, 1, 7, 7), dict(groups=4, padding=3)),
        ((3, 8, 20, 20), (8, 1, 9, 9), dict(groups=8, padding=4)),
    ],
    ids=[
        "many-small-planes",
        "multiplier-2",
        "dilated-wide",
        "many-tiny-images",
        "chunks-of-one-channel",
        "3x3",
        "7x7-s2",
        "depthwise-7x7-one-group",
        "depthwise-9x9",
    ],
)
def test_work_elements_bounds_what_the_engine_allocates(x_shape, w_shape, hyper, rng):
    """The service refuses work by ``work_elements``: every path must stay within it."""
    check_work_bound(rng, x_shape, w_shape, hyper)


def check_work_bound(rng, x_shape, w_shape, hyper, transposed=False):
    """A forward and a backward pass allocate at most ``work_elements`` (64 KiB of slack),
    of a convolution or (``transposed``) of a transposed convolution."""
    from convengine import conv, conv_backward, conv_transpose, conv_transpose_backward

    if transposed:
        geometry = ConvGeometry.transposed(x_shape, w_shape, **hyper)
        passes, channels = (conv_transpose, conv_transpose_backward), geometry.conv.c
    else:
        geometry = ConvGeometry.build(x_shape, w_shape, **hyper)
        passes, channels = (conv, conv_backward), w_shape[0]
    x, w = rng.standard_normal(x_shape), rng.standard_normal(w_shape)
    dout = rng.standard_normal(geometry.out_shape)
    # Every work buffer allocated afresh, in this thread and the one of split batches' halves.
    layout._local.__dict__.get("buffers", {}).clear()
    halves._pool().submit(lambda: layout._local.__dict__.get("buffers", {}).clear()).result()
    tracemalloc.start()
    try:
        passes[0](x, w, rng.standard_normal(channels), **hyper)
        passes[1](dout, x, w, **hyper)
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    bound = work_elements(geometry) * x.itemsize
    assert peak <= bound + (64 << 10), f"peak {peak} bytes, work_elements allows {bound}"


# Stride-1 volumes, which take the flat shifted-runs path (flat) instead of depth slices.
FLAT_VOLUMES = {
    "3x3x3-p1": ((2, 3, 5, 6, 7), (4, 3, 3, 3, 3), dict(padding=1)),
    "grouped-dilated": (
        (1, 4, 6, 7, 6),
        (6, 2, 2, 3, 2),
        dict(groups=2, dilation=(2, 1, 2), padding=2),
    ),
    "per-side-pads": ((2, 2, 4, 5, 6), (3, 2, 2, 2, 3), dict(padding=((1, 0), (0, 1), (2, 1)))),
    "padding-beyond-reach": ((1, 2, 3, 4, 3), (2, 2, 1, 2, 1), dict(padding=(1, 2, 1))),
    "unpadded": ((1, 3, 4, 8, 9), (2, 3, 2, 3, 3), dict()),
}


def check_any_rank_against_oracle(rng, x_shape, w_shape, hyper):
    from convengine import conv, conv_backward

    from .oracle import naive_conv, naive_conv_backward

    x, w, b = (rng.standard_normal(s) for s in (x_shape, w_shape, w_shape[0]))
    out = conv(x, w, b, **hyper)
    np.testing.assert_allclose(out, naive_conv(x, w, b, **hyper), rtol=1e-12, atol=1e-12)
    dout = rng.standard_normal(out.shape)
    got, want = conv_backward(dout, x, w, **hyper), naive_conv_backward(dout, x, w, **hyper)
    for g, expected, label in zip(got, want, ["dx", "dw", "db"]):
        np.testing.assert_allclose(g, expected, rtol=1e-12, atol=1e-12, err_msg=label)


@pytest.mark.parametrize("name", FLAT_VOLUMES)
def test_flat_volumes_match_oracle(name, rng):
    from convengine import conv, conv_backward

    for pass_ in Pass:
        assert _selected(*FLAT_VOLUMES[name], pass_) == "flat"
    big = rng.standard_normal((2, 4, 6, 9, 9))
    conv_backward(
        conv(big, rng.standard_normal((4, 4, 3, 3, 3))), big, rng.standard_normal((4, 4, 3, 3, 3))
    )
    for buffer in layout._local.buffers.values():
        buffer.view(np.uint8)[:] = 0xFF  # NaN: a zero left unwritten or a stale run shows up
    check_any_rank_against_oracle(rng, *FLAT_VOLUMES[name])


def test_flat_volume_in_blocks_of_one_depth(rng, monkeypatch):
    from convengine._kernels import flat

    monkeypatch.setattr(flat, "BLOCK_BYTES", 1)
    check_any_rank_against_oracle(rng, *FLAT_VOLUMES["grouped-dilated"])


def test_non_finite_volume_leaves_the_flat_backward(rng):
    """Junk positions meet zeros in dout: an inf there would be NaN in dw, so the depth-slice
    path takes the backward pass, and the inf poisons what the oracle says it does."""
    from convengine import conv_backward

    from .oracle import naive_conv_backward

    layer = FLAT_VOLUMES["3x3x3-p1"]
    # Its depth slices are tiny: they gather (no junk there, any data).
    assert _selected(*layer, Pass.BACKWARD, x_finite=False) == "volume(gather)"
    x_shape, w_shape, hyper = layer
    x, w = rng.standard_normal(x_shape), rng.standard_normal(w_shape)
    x[0, 1, 2, 0, 6] = np.inf
    dout = rng.standard_normal((2, 4, 5, 6, 7))
    with np.errstate(invalid="ignore"):
        got, want = conv_backward(dout, x, w, **hyper), naive_conv_backward(dout, x, w, **hyper)
    for g, expected in zip(got, want):
        np.testing.assert_allclose(g, expected, rtol=1e-12, atol=1e-12)


@pytest.mark.parametrize(
    "x_shape, w_shape, hyper",
    [
        ((2, 4, 6, 10, 10), (8, 4, 3, 3, 3), dict(padding=1)),
        ((1, 3, 5, 12, 12), (4, 3, 2, 3, 3), dict(dilation=(1, 2, 2), padding=(1, 2, 2))),
        ((3, 2, 4, 6, 6), (2, 2, 1, 1, 1), dict(padding=1)),
        ((1, 2, 9, 9, 9), (2, 2, 3, 3, 3), dict(stride=2, padding=1)),
    ],
    ids=["3x3x3", "dilated", "padding-beyond-reach", "strided"],
)
def test_work_elements_bounds_what_volumes_allocate(x_shape, w_shape, hyper, rng):
    check_work_bound(rng, x_shape, w_shape, hyper)


# Transposed layers whose windows never overlap (kernel at most the stride): their forward
# pass, the input gradient of a convolution, is gathered phase by phase (phases).
UNPATCHIFY = {
    "4x4-s4": ((2, 6, 3, 4), (6, 3, 4, 4), dict(stride=4)),
    "2x2-s2-padded": ((1, 4, 5, 5), (4, 5, 2, 2), dict(stride=2, padding=1, output_padding=1)),
    "grouped-non-square": ((2, 4, 3, 2), (4, 3, 2, 3), dict(stride=(3, 3), groups=2)),
    "dilated-between-strides": ((1, 2, 3, 3), (2, 2, 2, 2), dict(stride=4, dilation=3)),
    "stride-on-one-axis": ((1, 3, 4, 5), (3, 2, 1, 2), dict(stride=(1, 2))),
}


def _transposed_input_gradient(x_shape, w_shape, hyper):
    return select(ConvGeometry.transposed(x_shape, w_shape, **hyper).conv, Pass.INPUT_GRADIENT)


@pytest.mark.parametrize("name", UNPATCHIFY)
def test_unpatchify_gathers_by_phases(name, rng):
    from convengine import conv_transpose, conv_transpose_backward

    from .oracle import naive_conv_transpose, naive_conv_transpose_backward

    assert _transposed_input_gradient(*UNPATCHIFY[name]).name == "phases"
    x_shape, w_shape, hyper = UNPATCHIFY[name]
    x, w = rng.standard_normal(x_shape), rng.standard_normal(w_shape)
    b = rng.standard_normal(w_shape[1] * hyper.get("groups", 1))
    out = conv_transpose(x, w, b, **hyper)
    np.testing.assert_allclose(out, naive_conv_transpose(x, w, b, **hyper), rtol=1e-12, atol=1e-12)
    dout = rng.standard_normal(out.shape)
    got = conv_transpose_backward(dout, x, w, **hyper)
    for g, want in zip(got, naive_conv_transpose_backward(dout, x, w, **hyper)):
        np.testing.assert_allclose(g, want, rtol=1e-12, atol=1e-12)


def test_overlapping_windows_keep_col2im_unless_the_kernel_is_whole_strides(monkeypatch):
    monkeypatch.setattr(gather, "MAX_IMAGE_COLUMN_ELEMENTS", 0)  # tiny: it would gather
    assert _transposed_input_gradient((1, 2, 4, 4), (2, 3, 3, 3), dict(stride=2)).name == "im2col"
    # a kernel of two strides: all phases in one stride-1 pass
    assert _transposed_input_gradient((1, 2, 4, 4), (2, 3, 4, 4), dict(stride=2)).name == "subpixel"


@given(geometries(), st.integers(0, 2**32 - 1))
def test_phases_give_the_input_gradient_of_any_geometry(case, seed):
    """The phase decomposition itself holds with overlap too (where col2im or the sub-pixel
    path is kept for speed)."""
    from convengine import forward
    from convengine._kernels import phases

    from .oracle import naive_conv2d_backward

    x_shape, w_shape, hyper = case
    rng = np.random.default_rng(seed)
    x, w = rng.standard_normal(x_shape), rng.standard_normal(w_shape)
    geometry = ConvGeometry.build(x_shape, w_shape, **hyper)
    dout = rng.standard_normal(geometry.out_shape)
    np.testing.assert_allclose(
        phases.input_gradient(dout, w, geometry, forward),
        naive_conv2d_backward(dout, x, w, **hyper)[0],
        rtol=1e-12,
        atol=1e-12,
    )


def _small_layer(case) -> bool:
    hyper = case[2]
    return hyper["stride"] in (1, (1, 1)) and hyper["groups"] == 1


@given(geometries().filter(_small_layer), st.integers(0, 2**32 - 1))
def test_the_small_path_matches_the_oracle_on_random_stride_1_layers(case, seed):
    """Every pass of the small path (the gather path, which would take these tiny layers,
    set aside), its work buffers full of NaN beforehand (a zero of the padding or of dout's
    junk columns left unwritten shows up)."""
    original = gather.MAX_IMAGE_COLUMN_ELEMENTS
    gather.MAX_IMAGE_COLUMN_ELEMENTS = 0
    try:
        _check_small_path(case, seed)
    finally:
        gather.MAX_IMAGE_COLUMN_ELEMENTS = original


def _check_small_path(case, seed):
    from convengine._kernels import small

    x_shape, w_shape, hyper = case
    geometry = ConvGeometry.build(x_shape, w_shape, **hyper)
    core = geometry if geometry.is_core else geometry.core()[0]
    assume(0 not in core.size and not pointwise.supports(core))  # empty, pointwise: theirs
    assert select(geometry, Pass.FORWARD).name == "small"
    assert select(geometry, Pass.BACKWARD).name == "small"
    rng = np.random.default_rng(seed)
    x, w, b = (rng.standard_normal(s) for s in (x_shape, w_shape, w_shape[0]))
    dout = rng.standard_normal(geometry.out_shape)
    for buffer in layout._local.__dict__.get("buffers", {}).values():
        buffer.view(np.uint8)[:] = 0xFF
    np.testing.assert_allclose(
        conv2d(x, w, b, **hyper), naive_conv2d(x, w, b, **hyper), rtol=1e-12, atol=1e-12
    )
    want = naive_conv2d_backward(dout, x, w, **hyper)
    if core is geometry:  # the path's own passes, on the layer's own geometry
        parts = (
            small.input_gradient(dout, w, geometry, True),
            small.weight_gradient(dout, x, w, geometry, True),
        )
        for got, expected in zip(parts, want[:2]):
            np.testing.assert_allclose(got, expected, rtol=1e-12, atol=1e-12)
    for got, expected in zip(conv2d_backward(dout, x, w, **hyper), want):
        np.testing.assert_allclose(got, expected, rtol=1e-12, atol=1e-12)


def test_the_small_path_leaves_non_finite_gradients_to_im2col(rng, monkeypatch):
    """An inf in x or w: the forward stays small (its junk meets no real output), the backward
    passes go to im2col, and every value is the oracle's."""
    from convengine._kernels import small

    monkeypatch.setattr(gather, "MAX_IMAGE_COLUMN_ELEMENTS", 0)  # tiny: it would gather
    x_shape, w_shape, hyper = (2, 3, 6, 7), (4, 3, 3, 2), dict(padding=1)
    geometry = ConvGeometry.build(x_shape, w_shape, **hyper)
    x, w = rng.standard_normal(x_shape), rng.standard_normal(w_shape)
    x[1, 2, 5, 6] = np.inf
    dout = rng.standard_normal(geometry.out_shape)
    assert select(geometry, Pass.FORWARD, x_finite=False).name == "small"
    assert select(geometry, Pass.BACKWARD, x_finite=False).name == "im2col"
    with np.errstate(invalid="ignore"):
        np.testing.assert_allclose(conv2d(x, w, **hyper), naive_conv2d(x, w, **hyper), rtol=1e-12)
        got = conv2d_backward(dout, x, w, **hyper)
        want = naive_conv2d_backward(dout, x, w, **hyper)
        fallback = small.backward(dout, x, w, geometry, False)
    for g, f, expected in zip(got, fallback, want):
        np.testing.assert_allclose(g, expected, rtol=1e-12, atol=1e-12)
        np.testing.assert_allclose(f, expected, rtol=1e-12, atol=1e-12)


def test_the_small_path_in_float32_stays_close_to_float64(rng):
    x_shape, w_shape, hyper = (2, 3, 40, 37), (5, 3, 3, 2), dict(padding=(2, 1), dilation=(2, 1))
    assert _selected(x_shape, w_shape, hyper, Pass.BACKWARD) == "small"
    _check_against_oracle(rng, x_shape, w_shape, hyper, np.float32, tolerance=1e-5)


def test_the_small_path_runs_a_large_batch_in_chunks_with_each_sample_s_own_bits(rng):
    """Chunks of images (the image, not the batch, chooses the path): the oracle's values,
    and each sample's out and dx bitwise those it has alone (a shard of the batch)."""
    from convengine import conv, conv_backward
    from convengine._kernels import small

    x_shape, w_shape, hyper = (5, 2, 40, 30), (3, 2, 3, 3), dict(padding=1)
    geometry = ConvGeometry.build(x_shape, w_shape, **hyper)
    assert select(geometry, Pass.BACKWARD, split=False).name == "small"
    chunks = small._chunks(geometry)
    original = small.CHUNK_ELEMENTS
    small.CHUNK_ELEMENTS = 2 * small._image_columns(geometry)  # chunks of 2, 2 and 1 images
    try:
        assert [c.stop - c.start for c, _ in small._chunks(geometry)] == [2, 2, 1]
        _check_against_oracle(rng, x_shape, w_shape, hyper)
        x, w = rng.standard_normal(x_shape).astype(np.float32), rng.standard_normal(w_shape)
        w = w.astype(np.float32)
        dout = rng.standard_normal(geometry.out_shape).astype(np.float32)
        out, (dx, _, _) = conv(x, w, **hyper), conv_backward(dout, x, w, **hyper)
        for i in (0, 3, 4):
            np.testing.assert_array_equal(conv(x[i : i + 1], w, **hyper), out[i : i + 1])
            alone = conv_backward(dout[i : i + 1], x[i : i + 1], w, **hyper)[0]
            np.testing.assert_array_equal(alone, dx[i : i + 1])
    finally:
        small.CHUNK_ELEMENTS = original
    assert len(chunks) == 1  # by default, this batch is one chunk
