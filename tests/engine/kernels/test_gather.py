"""The gather path (tiny layers): its selection, and every pass against the nested-loop oracle
in float64, on any planar geometry and on data with infinities."""

from __future__ import annotations

import numpy as np
import pytest
from hypothesis import given
from hypothesis import strategies as st

from convengine import ConvGeometry, conv, conv_backward
from convengine._kernels import Pass, gather, select

from ..oracle import (
    naive_conv,
    naive_conv_backward,
)
from ..test_against_oracle import geometries
from ..test_fast_paths import check_any_rank_against_oracle, check_work_bound
from .test_paths import check_transposed

# (x shape, w shape, hyperparameters): tiny layers of every kind the planar paths take.
TINY = {
    "service-example-8x8": ((1, 1, 8, 8), (1, 1, 3, 3), dict(padding=1)),
    "strided-uneven-padding": (
        (2, 3, 7, 6),
        (4, 3, 3, 2),
        dict(stride=(2, 3), padding=((2, 0), (1, 1))),
    ),
    "dilated": ((1, 2, 9, 9), (3, 2, 3, 3), dict(dilation=(2, 3), padding=2)),
    "grouped": ((2, 4, 5, 6), (6, 2, 3, 3), dict(groups=2, padding=1)),
    "grouped-strided": ((1, 4, 7, 7), (2, 2, 3, 3), dict(groups=2, stride=2, padding=1)),
    "floor-rounding": ((1, 2, 8, 9), (2, 2, 3, 3), dict(stride=(2, 3), rounding="floor")),
    "reflect": ((2, 2, 5, 6), (3, 2, 3, 3), dict(padding=2, padding_mode="reflect")),
    "circular-same": ((1, 2, 5, 4), (2, 2, 2, 3), dict(padding="same", padding_mode="circular")),
    "line": ((2, 3, 11), (4, 3, 3), dict(stride=2, padding=1)),
    "kernel-as-large-as-the-padded-input": ((1, 2, 3, 4), (3, 2, 5, 6), dict(padding=1)),
}


def _geometry(x_shape, w_shape, hyper) -> ConvGeometry:
    return ConvGeometry.build(x_shape, w_shape, **hyper)


@pytest.mark.parametrize("name", TINY)
def test_tiny_layers_gather_and_match_the_oracle(name, rng):
    x_shape, w_shape, hyper = TINY[name]
    geometry = _geometry(x_shape, w_shape, hyper)
    for pass_ in Pass:
        if pass_ is not Pass.INPUT_GRADIENT or hyper.get("stride", 1) == 1:
            assert select(geometry, pass_).name == "gather", pass_  # (strided dx: phases)
    check_any_rank_against_oracle(rng, x_shape, w_shape, hyper)


def test_the_gather_path_takes_non_finite_data_and_matches_the_oracle(rng):
    """No junk columns: an inf stays on the gather path, and poisons exactly what the oracle
    says it does (the padding's zeros times dout add nothing to dx: their bin is dropped)."""
    x_shape, w_shape, hyper = TINY["strided-uneven-padding"]
    geometry = _geometry(x_shape, w_shape, hyper)
    for pass_ in Pass:
        flags = dict(x_finite=False, w_finite=False)
        assert select(geometry, pass_, **flags).name in ("gather", "phases"), pass_
    x, w = rng.standard_normal(x_shape), rng.standard_normal(w_shape)
    x[1, 2, 0, 0], x[0, 1, 3, 2] = np.inf, -np.inf
    dout = rng.standard_normal(geometry.out_shape)
    with np.errstate(invalid="ignore"):
        np.testing.assert_allclose(conv(x, w, **hyper), naive_conv(x, w, **hyper), rtol=1e-12)
        got, want = conv_backward(dout, x, w, **hyper), naive_conv_backward(dout, x, w, **hyper)
    for grad, expected, label in zip(got, want, ["dx", "dw", "db"]):
        np.testing.assert_allclose(grad, expected, rtol=1e-12, atol=1e-12, err_msg=label)


@pytest.mark.parametrize(
    "x_shape, w_shape, hyper",
    [
        ((2, 6, 3, 4), (6, 3, 2, 2), dict(stride=1, padding=1)),
        ((1, 4, 3, 3), (4, 2, 3, 3), dict(stride=2, padding=1, output_padding=1, groups=2)),
    ],
    ids=["stride-1", "strided-grouped"],
)
def test_transposed_layers_on_the_gather_path_match_the_oracle(x_shape, w_shape, hyper, rng):
    conv_geometry = ConvGeometry.transposed(x_shape, w_shape, **hyper).conv
    assert select(conv_geometry, Pass.WEIGHT_GRADIENT).name == "gather"
    check_transposed(x_shape, w_shape, hyper, rng)


@given(geometries(), st.integers(0, 2**32 - 1))
def test_the_gather_path_matches_the_oracle_on_random_geometries(case, seed):
    x_shape, w_shape, hyper = case
    geometry = _geometry(x_shape, w_shape, hyper)
    core = geometry if geometry.is_core else geometry.core()[0]
    if 0 not in core.size and gather.supports(core) and core.groups < core.c:
        assert select(geometry, Pass.WEIGHT_GRADIENT).name in ("gather", "pointwise")
    check_any_rank_against_oracle(np.random.default_rng(seed), x_shape, w_shape, hyper)


def test_the_image_not_the_batch_chooses_the_gather_path():
    """A sample's bits must not hang on the batch it came in (a shard of a batch is computed
    as the whole batch's samples are): the bound is on one image's columns."""
    at_the_bound = _geometry((1, 3, 15, 16), (8, 3, 3, 3), dict(padding=1, stride=(2, 1)))
    assert at_the_bound.cols_elements() <= gather.MAX_IMAGE_COLUMN_ELEMENTS
    for n in (1, 2, 64):
        batch = _geometry((n, 3, 15, 16), (8, 3, 3, 3), dict(padding=1, stride=(2, 1)))
        assert select(batch, Pass.FORWARD).name == "gather"
    past_it = _geometry((1, 3, 31, 32), (8, 3, 3, 3), dict(padding=1, stride=(2, 1)))
    assert past_it.cols_elements() > gather.MAX_IMAGE_COLUMN_ELEMENTS
    assert select(past_it, Pass.FORWARD).name == "im2col"


def test_a_sample_has_the_same_bits_in_any_batch(rng):
    x_shape, w_shape, hyper = TINY["strided-uneven-padding"]
    x, w = rng.standard_normal((5, *x_shape[1:])), rng.standard_normal(w_shape)
    x32, w32 = x.astype(np.float32), w.astype(np.float32)
    whole = conv(x32, w32, **hyper)
    dout = rng.standard_normal(whole.shape).astype(np.float32)
    dx = conv_backward(dout, x32, w32, **hyper)[0]
    for shard in (slice(0, 1), slice(1, 3), slice(3, 5)):
        np.testing.assert_array_equal(conv(x32[shard], w32, **hyper), whole[shard])
        np.testing.assert_array_equal(
            conv_backward(dout[shard], x32[shard], w32, **hyper)[0], dx[shard]
        )


def test_float32_stays_float32_and_close_to_float64(rng):
    x_shape, w_shape, hyper = TINY["grouped"]
    x, w, b = (rng.standard_normal(s) for s in (x_shape, w_shape, w_shape[0]))
    out = conv(x.astype(np.float32), w.astype(np.float32), b.astype(np.float32), **hyper)
    assert out.dtype == np.float32
    np.testing.assert_allclose(out, naive_conv(x, w, b, **hyper), rtol=1e-5, atol=1e-5)
    dout = rng.standard_normal(out.shape)
    got = conv_backward(*(a.astype(np.float32) for a in (dout, x, w)), **hyper)
    for grad, expected in zip(got, naive_conv_backward(dout, x, w, **hyper)):
        assert grad.dtype == np.float32
        np.testing.assert_allclose(grad, expected, rtol=1e-5, atol=1e-5)


def test_the_index_is_kept_read_only_for_a_bounded_number_of_geometries():
    key = gather._image_key(_geometry(*TINY["dilated"]))
    index = gather._index(key)
    assert gather._index(key) is index
    assert not index.flags.writeable
    assert gather._index.cache_info().maxsize == gather.INDEXES_KEPT


@pytest.mark.parametrize("name", ["service-example-8x8", "grouped", "strided-uneven-padding"])
def test_work_elements_bounds_the_gather_path(name, rng):
    gather._index.cache_clear()  # the index is made (and counted) in the pass
    check_work_bound(rng, *TINY[name])
