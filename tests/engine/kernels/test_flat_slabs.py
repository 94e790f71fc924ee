"""The flat path's slabs (:func:`.flat._slabs`): one slab of plane columns per input depth,
each output depth's columns KD overlapping slabs. Against the nested-loop oracle, in blocks of
every size, with depth dilation (output depths by residue), groups and non-finite inputs."""

from __future__ import annotations

import numpy as np
import pytest
from hypothesis import assume, given, settings
from hypothesis import strategies as st

from convengine import ConvGeometry, conv, conv_backward
from convengine._kernels import Pass, flat, layout, select

from ..oracle import naive_conv, naive_conv_backward
from ..test_fast_paths import check_any_rank_against_oracle, check_work_bound

# Stride-1 volumes on the flat path: (x shape, w shape, hyperparameters)
VOLUMES = {
    "depth-dilated-grouped": (
        (1, 4, 9, 5, 6),
        (6, 2, 3, 2, 3),
        dict(groups=2, dilation=(2, 1, 1), padding=(2, 1, 1)),
    ),
    "depth-dilation-3-odd": (
        (2, 2, 11, 6, 5),
        (3, 2, 2, 3, 2),
        dict(dilation=(3, 2, 1), padding=(0, 2, 1)),
    ),
    "kernel-one-deep": ((1, 3, 5, 6, 7), (2, 3, 1, 3, 3), dict(padding=(0, 1, 1))),
    "kernel-as-deep-as-input": ((2, 2, 3, 5, 4), (2, 2, 3, 3, 3), dict(padding=(0, 1, 1))),
    "one-output-depth-per-residue": (
        (1, 2, 5, 4, 4),
        (3, 2, 2, 2, 2),
        dict(dilation=(3, 1, 1), padding=(0, 1, 1)),
    ),
}


def _slab_bytes(x_shape, w_shape, hyper) -> int:
    """The bytes of one input depth's slab, in float64."""
    g = ConvGeometry.build(x_shape, w_shape, **hyper)
    return g.c * g.kernel[1] * g.kernel[2] * flat._row(g) * 8


@pytest.mark.parametrize("slabs_per_block", [1, 4, 5, 1000])
@pytest.mark.parametrize("name", VOLUMES)
def test_flat_volumes_in_blocks_match_the_oracle(name, slabs_per_block, rng, monkeypatch):
    """Blocks of one output depth (the budget below KD slabs), of a few (the last one short),
    and of every depth; the work buffers full of NaN first, so a slab read before it is
    written, or past its block, shows up."""
    x_shape, w_shape, hyper = VOLUMES[name]
    geometry = ConvGeometry.build(x_shape, w_shape, **hyper)
    for pass_ in Pass:
        assert select(geometry, pass_, np.float64).name == "flat", pass_
    monkeypatch.setattr(flat, "BLOCK_BYTES", slabs_per_block * _slab_bytes(*VOLUMES[name]))
    big = rng.standard_normal((1, 4, 7, 8, 8))
    w = rng.standard_normal((4, 4, 3, 3, 3))
    conv_backward(conv(big, w, padding=1), big, w, padding=1)
    for buffer in layout._local.buffers.values():
        buffer.view(np.uint8)[:] = 0xFF
    check_any_rank_against_oracle(rng, x_shape, w_shape, hyper)


@pytest.mark.parametrize("name", VOLUMES)
def test_flat_volumes_stay_within_the_work_bound(name, rng, monkeypatch):
    monkeypatch.setattr(flat, "BLOCK_BYTES", 3 * _slab_bytes(*VOLUMES[name]))
    check_work_bound(rng, *VOLUMES[name])


def test_the_slabs_of_an_output_depth_are_its_columns(rng):
    """Each output depth's view holds, row by row, the padded pixels its kernel offsets read
    (kernel depth outermost): the columns, built by hand here from the padded volume."""
    x_shape, w_shape, hyper = VOLUMES["depth-dilated-grouped"]
    g = ConvGeometry.build(x_shape, w_shape, **hyper)
    x = rng.standard_normal(x_shape)
    padded = np.pad(x, ((0, 0), (0, 0), *g.pads))
    (kd, kh, kw), (dd, dh, dw) = g.kernel, g.dilation
    seen = 0
    for n, depths, slabs in flat._slabs(x, g):
        for depth, columns in zip(range(g.out[0])[depths], slabs, strict=True):
            seen += 1
            for group in range(g.groups):
                channels = range(group * g.c_per_group, (group + 1) * g.c_per_group)
                want = [
                    padded[n, c, depth + a * dd, i * dh : i * dh + g.out[1], j * dw :][
                        :, : g.out[2]
                    ]
                    for a in range(kd)
                    for c in channels
                    for i in range(kh)
                    for j in range(kw)
                ]
                got = columns[group].reshape(-1, g.out[1], g.padded[2])[:, :, : g.out[2]]
                np.testing.assert_array_equal(got, np.stack(want))
    assert seen == g.n * g.out[0]


@pytest.mark.parametrize("bad", [np.inf, np.nan], ids=["inf", "nan"])
def test_a_non_finite_pixel_reaches_only_its_windows_in_the_forward_pass(bad, rng):
    """The flat forward takes any data (junk positions are cropped): an inf or NaN pixel
    poisons the outputs the oracle says it does, and no others."""
    x_shape, w_shape, hyper = VOLUMES["depth-dilation-3-odd"]
    geometry = ConvGeometry.build(x_shape, w_shape, **hyper)
    assert select(geometry, Pass.FORWARD, x_finite=False).name == "flat"
    x, w = rng.standard_normal(x_shape), rng.standard_normal(w_shape)
    x[1, 0, 4, 2, 0] = bad
    with np.errstate(invalid="ignore"):
        out, want = conv(x, w, **hyper), naive_conv(x, w, **hyper)
    np.testing.assert_array_equal(np.isfinite(out), np.isfinite(want))
    assert not np.isfinite(out).all()
    np.testing.assert_allclose(out, want, rtol=1e-12, atol=1e-12)


def test_flat_gradients_match_the_oracle_in_float32(rng):
    """float32 end to end, to float32's precision."""
    x_shape, w_shape, hyper = VOLUMES["depth-dilated-grouped"]
    x, w = rng.standard_normal(x_shape), rng.standard_normal(w_shape)
    dout = rng.standard_normal(naive_conv(x, w, **hyper).shape)
    got = conv_backward(*(a.astype(np.float32) for a in (dout, x, w)), **hyper)
    for grad, expected in zip(got, naive_conv_backward(dout, x, w, **hyper)):
        assert grad.dtype == np.float32
        np.testing.assert_allclose(grad, expected, rtol=1e-4, atol=1e-4)


@st.composite
def _flat_volumes(draw):
    """Stride-1 volumes the flat path takes: kernel, dilation and padding per axis, groups."""
    groups = draw(st.sampled_from([1, 2]))
    c, f = groups * draw(st.integers(1, 3)), groups * draw(st.integers(1, 3))
    kernel = tuple(draw(st.integers(1, 3)) for _ in range(3))
    dilation = tuple(draw(st.integers(1, 2)) for _ in range(3))
    pads = tuple(draw(st.integers(0, 2)) for _ in range(3))
    size = tuple(
        draw(st.integers(max(1, d * (k - 1) + 1 - 2 * p), 7))
        for k, d, p in zip(kernel, dilation, pads, strict=True)
    )
    hyper = dict(dilation=dilation, padding=pads, groups=groups)
    x_shape, w_shape = (draw(st.integers(1, 2)), c, *size), (f, c // groups, *kernel)
    assume(flat.supports(ConvGeometry.build(x_shape, w_shape, **hyper)))
    return x_shape, w_shape, hyper


@settings(max_examples=25, deadline=None)
@given(_flat_volumes(), st.integers(1, 1 << 16), st.integers(0, 2**32 - 1))
def test_any_flat_volume_in_any_blocks_matches_the_oracle_within_its_bound(case, block, seed):
    """Any kernel, dilation, padding and groups, blocks of any budget (down to one output
    depth): the oracle's results, and no more memory than ``work_elements`` allows."""
    x_shape, w_shape, hyper = case
    rng = np.random.default_rng(seed)
    original = flat.BLOCK_BYTES
    flat.BLOCK_BYTES = block  # not monkeypatch: hypothesis runs many examples per test
    try:
        check_any_rank_against_oracle(rng, x_shape, w_shape, hyper)
        check_work_bound(rng, x_shape, w_shape, hyper)
    finally:
        flat.BLOCK_BYTES = original
