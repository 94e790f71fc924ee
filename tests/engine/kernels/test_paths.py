"""Every path against the nested-loop oracle in float64, each layer asserted to select it, and
every path's memory bound checked against what it really allocates."""

from __future__ import annotations

import numpy as np
import pytest

from convengine import ConvGeometry, conv_transpose, conv_transpose_backward
from convengine._kernels import KERNELS, Pass, Path, halves, run, select, small, winograd

from ..oracle import naive_conv_transpose, naive_conv_transpose_backward
from ..test_fast_paths import check_any_rank_against_oracle, check_work_bound

# Convolutions: (x shape, w shape, hyperparameters, the forward's path, the backward's path)
CONV = {
    "im2col": ((2, 3, 7, 7), (4, 3, 3, 3), dict(padding=1, stride=2), "im2col", "im2col"),
    # im2col's stride-1 layers past the small path's columns
    "im2col-stride-1": ((2, 8, 30, 30), (4, 8, 3, 3), dict(padding=1), "im2col", "im2col"),
    "small": ((2, 3, 7, 7), (4, 3, 3, 3), dict(padding=1), "small", "small"),
    "small-dilated-uneven": (
        (1, 2, 6, 9),
        (3, 2, 2, 3),
        dict(padding=((2, 0), (1, 3)), dilation=(2, 1)),
        "small",
        "small",
    ),
    "small-no-padding": ((3, 2, 5, 4), (2, 2, 5, 2), dict(), "small", "small"),
    "im2col-direct-reads": (
        (1, 8, 41, 50),
        (3, 8, 3, 3),
        dict(padding=1, stride=(2, 1)),
        "im2col",
        "im2col",
    ),
    "pointwise": ((2, 5, 4, 6), (3, 5, 1, 1), dict(), "pointwise", "pointwise"),
    # with the thresholds lowered (see small_winograd): 8x5 outputs, per-side padding
    "winograd": (
        (2, 5, 7, 6),
        (6, 5, 3, 3),
        dict(padding=((1, 2), (0, 1))),
        "winograd",
        "winograd",
    ),
    "depthwise": ((2, 2, 5, 7), (6, 1, 3, 3), dict(groups=2, padding=1), "depthwise", "depthwise"),
    "depthwise-taps": (
        (2, 4, 9, 9),
        (4, 1, 3, 3),
        dict(groups=4, stride=2, padding=1),
        "depthwise-taps",
        "depthwise-taps",
    ),
    "line": ((2, 3, 11), (4, 3, 3), dict(stride=2, padding=1), "im2col", "im2col"),
    "flat": ((2, 3, 5, 6, 7), (4, 3, 3, 3, 3), dict(padding=1), "flat", "flat"),
    "volume": (
        (1, 2, 9, 9, 9),
        (2, 2, 3, 3, 3),
        dict(stride=2, padding=1),
        "volume(im2col)",
        "volume(im2col)",
    ),
    "volume-depthwise": (
        (2, 3, 7, 6, 6),
        (3, 1, 3, 3, 3),
        dict(groups=3, stride=(2, 1, 1), padding=1),
        "volume(depthwise)",
        "volume(depthwise)",
    ),
    "empty": (
        (1, 2, 1, 3),
        (2, 2, 1, 1),
        dict(padding=((5, 0), (0, 0)), stride=(10, 1), rounding="floor"),
        "empty",
        "empty",
    ),
}

# Transposed convolutions: (x shape, w shape, hyperparameters, the input gradient's path,
# which is their forward pass, and the weight gradient's, which their backward needs)
TRANSPOSED = {
    "phases": ((2, 6, 3, 4), (6, 3, 4, 4), dict(stride=4), "phases", "im2col"),
    "phases-padded": (
        (1, 4, 5, 5),
        (4, 5, 2, 2),
        dict(stride=2, padding=1, output_padding=1),
        "phases",
        "im2col",
    ),
    # The padding crops all that one phase's pixels add: that phase reads padding alone.
    "phases-one-reads-padding-alone": (
        (1, 2, 1, 1),
        (2, 3, 1, 2),
        dict(stride=(1, 2), padding=((0, 0), (0, 1)), dilation=(1, 3)),
        "phases",
        "im2col",
    ),
    "im2col": ((2, 4, 4, 4), (4, 3, 3, 3), dict(stride=2, padding=1), "im2col", "im2col"),
    "subpixel": ((2, 4, 4, 4), (4, 3, 4, 4), dict(stride=2, padding=1), "subpixel", "im2col"),
    "pointwise": ((2, 4, 6, 6), (4, 2, 1, 1), dict(), "pointwise", "pointwise"),
    "depthwise": ((2, 4, 6, 6), (4, 1, 3, 3), dict(groups=4, padding=1), "depthwise", "depthwise"),
    "depthwise-taps-strided": (
        (2, 4, 5, 5),
        (4, 1, 3, 3),
        dict(groups=4, stride=2, padding=1),
        "depthwise-taps",
        "depthwise-taps",
    ),
    "flat": ((1, 2, 3, 4, 4), (2, 3, 3, 3, 3), dict(padding=1), "flat", "flat"),
    "volume": (
        (1, 2, 3, 4, 4),
        (2, 3, 3, 3, 3),
        dict(stride=2),
        "volume(im2col)",
        "volume(im2col)",
    ),
    "line-phases": ((2, 3, 9), (3, 2, 2), dict(stride=2), "phases", "im2col"),
}


# The tables' layers are tiny enough to gather: their paths are read with it set aside.
pytestmark = pytest.mark.usefixtures("no_gather")


@pytest.fixture(autouse=True)
def small_winograd(monkeypatch):
    """Winograd's thresholds lowered to layers the nested-loop oracle computes in a moment
    (5 channels and 16 outputs, where the other entries have fewer channels)."""
    monkeypatch.setattr(winograd, "MIN_CHANNELS", 5)
    monkeypatch.setattr(winograd, "MIN_POSITIONS", 16)


@pytest.mark.parametrize("name", CONV)
def test_convolutions_on_their_path_match_the_oracle(name, rng):
    x_shape, w_shape, hyper, forward_path, backward_path = CONV[name]
    geometry = ConvGeometry.build(x_shape, w_shape, **hyper)
    assert select(geometry, Pass.FORWARD, np.float64).name == forward_path
    assert select(geometry, Pass.BACKWARD, np.float64).name == backward_path
    check_any_rank_against_oracle(rng, x_shape, w_shape, hyper)


@pytest.mark.parametrize("name", TRANSPOSED)
def test_transposed_convolutions_on_their_path_match_the_oracle(name, rng):
    x_shape, w_shape, hyper, input_path, weight_path = TRANSPOSED[name]
    conv = ConvGeometry.transposed(x_shape, w_shape, **hyper).conv
    assert select(conv, Pass.INPUT_GRADIENT, np.float64).name == input_path
    assert select(conv, Pass.WEIGHT_GRADIENT, np.float64).name == weight_path
    check_transposed(x_shape, w_shape, hyper, rng)


def check_transposed(x_shape, w_shape, hyper, rng) -> None:
    """A transposed layer's forward and backward against the oracle, float64."""
    x, w = rng.standard_normal(x_shape), rng.standard_normal(w_shape)
    b = rng.standard_normal(w_shape[1] * hyper.get("groups", 1))
    out = conv_transpose(x, w, b, **hyper)
    np.testing.assert_allclose(out, naive_conv_transpose(x, w, b, **hyper), rtol=1e-12, atol=1e-12)
    dout = rng.standard_normal(out.shape)
    got = conv_transpose_backward(dout, x, w, **hyper)
    want = naive_conv_transpose_backward(dout, x, w, **hyper)
    for grad, expected, label in zip(got, want, ["dx", "dw", "db"]):
        np.testing.assert_allclose(grad, expected, rtol=1e-12, atol=1e-12, err_msg=label)


def test_the_tables_reach_every_path():
    named = [path for *_, forward, backward in CONV.values() for path in (forward, backward)]
    named += [path for *_, inputs, weights in TRANSPOSED.values() for path in (inputs, weights)]
    reached = {part for name in named for part in name.replace(")", "").split("(")}
    # halves: test_halves.py; gather: test_gather.py
    assert reached == {path.value for path in Path} - {"halves", "gather"}


@pytest.mark.parametrize("name", [n for n in CONV if n != "empty"])
def test_work_elements_bounds_each_convolution_path(name, rng):
    check_work_bound(rng, *CONV[name][:3])


@pytest.mark.parametrize("name", TRANSPOSED)
def test_work_elements_bounds_each_transposed_path(name, rng):
    check_work_bound(rng, *TRANSPOSED[name][:3], transposed=True)


@pytest.mark.parametrize("name", ["im2col", "depthwise", "flat", "volume", "winograd"])
def test_work_elements_bounds_each_path_split_in_halves(name, rng, monkeypatch):
    monkeypatch.setattr(halves, "MIN_SPLIT_FLOPS", 0)
    x_shape, w_shape, hyper, forward_path, _ = CONV[name]
    geometry = ConvGeometry.build(x_shape, w_shape, **hyper)
    if x_shape[0] < 2:
        x_shape = (2, *x_shape[1:])
        geometry = ConvGeometry.build(x_shape, w_shape, **hyper)
    assert select(geometry, Pass.FORWARD).name == f"halves({forward_path})"
    check_work_bound(rng, x_shape, w_shape, hyper)


@pytest.mark.parametrize("name", [n for n in CONV if n != "empty"])
def test_the_run_computes_what_the_selector_names(name, rng, ran_paths):
    """Each piece the run computes is on the path of the selection (a volume's slices on its
    inner path), so asserting a selection asserts what runs."""
    seen = ran_paths
    x_shape, w_shape, hyper, forward_path, _ = CONV[name]
    check_any_rank_against_oracle(rng, x_shape, w_shape, hyper)
    inner = forward_path.removeprefix("volume(").removesuffix(")")
    assert seen[0] == forward_path
    if forward_path.startswith("volume("):
        assert set(seen[1:]) <= {forward_path, inner} and inner in seen


@pytest.mark.parametrize("name", ["im2col", "im2col-direct-reads", "winograd", "line"])
@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_split_forwards_write_each_half_into_the_whole_output(name, dtype, rng, monkeypatch):
    """On a path of ``run.WRITES_OUT``, each half of a split forward is computed into its
    part of the output the caller gets (no output of its own, copied over), and the whole
    matches the oracle; bias and no bias, and an inf in the second half."""
    from convengine import conv

    from ..oracle import naive_conv

    monkeypatch.setattr(halves, "MIN_SPLIT_FLOPS", 0)
    x_shape, w_shape, hyper, forward_path, _ = CONV[name]
    x_shape = (3, *x_shape[1:])  # odd: the halves differ in size
    assert Path(forward_path) in run.WRITES_OUT
    given: list[np.ndarray | None] = []
    for module in {KERNELS[path] for path in run.WRITES_OUT}:

        def record(*args, out=None, original=module.forward):
            given.append(out)
            return original(*args, out=out)

        monkeypatch.setattr(module, "forward", record)
    x, w = rng.standard_normal(x_shape).astype(dtype), rng.standard_normal(w_shape).astype(dtype)
    infinite = x.copy()
    infinite[-1, 0, ..., -1] = np.inf
    for data, b in (
        (x, rng.standard_normal(w_shape[0]).astype(dtype)),
        (x, None),
        (infinite, None),
    ):
        given.clear()
        with np.errstate(invalid="ignore"):  # inf - inf: NaN, as the oracle has it
            out = conv(data, w, b, **hyper)
            want = naive_conv(data.astype(np.float64), w.astype(np.float64), b, **hyper)
        # Winograd's half with the inf leaves it for a path that copies its output over.
        in_place = 1 if data is infinite and name == "winograd" else 2
        assert len(given) == in_place and all(place is not None for place in given)
        assert all(np.shares_memory(place, out) for place in given)
        tolerance = 1e-12 if dtype == np.float64 else 1e-4
        np.testing.assert_allclose(out, want, rtol=tolerance, atol=tolerance)


# im2col's forward a block of output rows at a time (an image's columns over CHUNK_BYTES):
# (x shape, w shape, hyperparameters, bias), with blocks of 2 output rows.
ROW_BLOCKS = {
    "stem-like-7x7-s2": ((2, 3, 15, 13), (4, 3, 7, 7), dict(stride=2, padding=3), True),
    "grouped-with-bias": ((1, 4, 9, 7), (6, 2, 3, 3), dict(groups=2, padding=1), True),
    "no-bias-last-block-short": ((2, 2, 8, 6), (3, 2, 3, 3), dict(padding=(1, 0)), False),
}


@pytest.mark.parametrize("name", ROW_BLOCKS)
def test_im2col_forward_in_row_blocks_matches_the_oracle(name, rng, monkeypatch):
    from convengine import conv
    from convengine._kernels import im2col

    from ..oracle import naive_conv

    x_shape, w_shape, hyper, with_bias = ROW_BLOCKS[name]
    monkeypatch.setattr(small, "MAX_IMAGE_COLUMN_ELEMENTS", 0)  # im2col's own forward
    geometry = ConvGeometry.build(x_shape, w_shape, **hyper)
    assert select(geometry, Pass.FORWARD).name == "im2col"
    assert not im2col._reads_input_directly(geometry)  # the canvas's fields are copied
    rows_bytes = (geometry.col_rows + with_bias) * geometry.groups * geometry.w_out * 8
    monkeypatch.setattr(im2col, "CHUNK_BYTES", 2 * rows_bytes)
    blocks: list[int] = []
    original = im2col._forward_in_row_blocks
    monkeypatch.setattr(
        im2col,
        "_forward_in_row_blocks",
        lambda *args: blocks.append(1) or original(*args),
    )
    x, w = rng.standard_normal(x_shape), rng.standard_normal(w_shape)
    b = rng.standard_normal(w_shape[0]) if with_bias else None
    out = conv(x, w, b, **hyper)
    assert blocks == [1]
    np.testing.assert_allclose(out, naive_conv(x, w, b, **hyper), rtol=1e-12, atol=1e-12)
