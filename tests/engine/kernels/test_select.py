"""The selector itself: which path computes each pass, read off a grid of geometries.

No arrays: ``select`` answers from shapes alone, with the finiteness of the data as flags.
"""

from __future__ import annotations

import dataclasses

import numpy as np
import pytest

from convengine import ConvGeometry
from convengine._kernels import ANY_DATA, KERNELS, Pass, Path, Selection, gather, halves, select

F, B, IG, WG = Pass.FORWARD, Pass.BACKWARD, Pass.INPUT_GRADIENT, Pass.WEIGHT_GRADIENT


def _all(name: str) -> dict[Pass, str]:
    return {F: name, B: name, IG: name, WG: name}


# (x shape, w shape, hyperparameters, the path of each pass on finite data, unsplit)
GRID = {
    "3x3": ((2, 3, 8, 8), (4, 3, 3, 3), dict(padding=1), _all("small")),
    "1x1": ((2, 5, 4, 6), (3, 5, 1, 1), dict(), _all("pointwise")),
    "1x1-grouped": ((2, 6, 4, 6), (6, 2, 1, 1), dict(groups=3), _all("pointwise")),
    "1x1-padded": ((2, 5, 4, 6), (3, 5, 1, 1), dict(padding=1), _all("small")),
    "1x1-strided": (
        (2, 5, 9, 9),
        (3, 5, 1, 1),
        dict(stride=2),
        {F: "im2col", B: "im2col", IG: "phases", WG: "im2col"},
    ),
    "patchify-4x4-s4": (
        (1, 3, 8, 8),
        (4, 3, 4, 4),
        dict(stride=4),
        {F: "im2col", B: "im2col", IG: "phases", WG: "im2col"},
    ),
    # The input gradient of a kernel a whole number of strides: one pass of all phases.
    "overlapping-4x4-s2": (
        (1, 3, 8, 8),
        (4, 3, 4, 4),
        dict(stride=2, padding=1),
        {F: "im2col", B: "im2col", IG: "subpixel", WG: "im2col"},
    ),
    # ... where it pays: no more filters than channels times SH*SW, few extra places against
    # the filters (an 8x8 image has 0.27 a pixel, 4x4 0.56)
    "overlapping-4x4-s2-more-filters": (
        (1, 3, 8, 8),
        (16, 3, 4, 4),
        dict(stride=2, padding=1),
        _all("im2col"),
    ),
    "overlapping-4x4-s2-16x16-64-filters": (
        (1, 32, 16, 16),
        (64, 32, 4, 4),
        dict(stride=2, padding=1),
        {F: "im2col", B: "im2col", IG: "subpixel", WG: "im2col"},
    ),
    "overlapping-4x4-s2-8x8-64-filters": (
        (1, 32, 8, 8),
        (64, 32, 4, 4),
        dict(stride=2, padding=1),
        _all("im2col"),
    ),
    "overlapping-3x3-s2": ((1, 3, 9, 9), (4, 3, 3, 3), dict(stride=2, padding=1), _all("im2col")),
    "overlapping-4x4-s2-dilated": (
        (1, 3, 9, 9),
        (4, 3, 4, 4),
        dict(stride=2, dilation=2),
        _all("im2col"),
    ),
    "dilated": ((1, 2, 10, 10), (2, 2, 3, 3), dict(dilation=2, padding=2), _all("small")),
    "depthwise": ((2, 3, 6, 5), (3, 1, 3, 3), dict(groups=3, padding=1), _all("depthwise")),
    "depthwise-multiplier-2": (
        (2, 2, 6, 5),
        (4, 1, 3, 3),
        dict(groups=2, padding=1),
        _all("depthwise"),
    ),
    "depthwise-strided": (
        (2, 4, 9, 9),
        (4, 1, 3, 3),
        dict(groups=4, stride=2, padding=1),
        _all("depthwise-taps"),
    ),
    "depthwise-1x1-s2": (
        (2, 4, 9, 9),
        (4, 1, 1, 1),
        dict(groups=4, stride=2),
        {F: "depthwise-taps", B: "depthwise-taps", IG: "phases", WG: "depthwise-taps"},
    ),
    "one-channel-not-grouped": ((2, 1, 6, 6), (3, 1, 3, 3), dict(padding=1), _all("small")),
    "1d": ((2, 3, 11), (4, 3, 3), dict(padding=1), _all("small")),
    "1d-pointwise": ((2, 3, 11), (4, 3, 1), dict(), _all("pointwise")),
    "1d-strided-k2-s2": (
        (2, 3, 12),
        (4, 3, 2),
        dict(stride=2),
        {F: "im2col", B: "im2col", IG: "phases", WG: "im2col"},
    ),
    "1d-depthwise": ((2, 4, 8), (8, 1, 3), dict(groups=4, padding=1), _all("depthwise")),
    "3d-stride-1": ((2, 3, 5, 6, 7), (4, 3, 3, 3, 3), dict(padding=1), _all("flat")),
    "3d-strided": (
        (1, 2, 9, 9, 9),
        (2, 2, 3, 3, 3),
        dict(stride=2, padding=1),
        _all("volume(im2col)"),
    ),
    # The padded grid would hold 4x the outputs: depth slices instead of flat runs.
    "3d-much-junk": ((1, 2, 4, 8, 8), (2, 2, 1, 5, 5), dict(), _all("volume(small)")),
    "3d-strided-pointwise": (
        (1, 2, 7, 6, 6),
        (3, 2, 1, 1, 1),
        dict(stride=(2, 1, 1)),
        _all("volume(pointwise)"),
    ),
    "3d-depthwise-strided": (
        (2, 4, 7, 8, 8),
        (4, 1, 3, 3, 3),
        dict(groups=4, stride=(2, 1, 1), padding=1),
        _all("volume(depthwise)"),
    ),
    "3d-depthwise-strided-planes": (
        (2, 4, 7, 9, 9),
        (4, 1, 3, 3, 3),
        dict(groups=4, stride=2, padding=1),
        _all("volume(depthwise-taps)"),
    ),
    # Padding modes are applied before the path runs: the path sees the padded input.
    "reflect": (
        (2, 2, 5, 6),
        (3, 2, 3, 3),
        dict(padding=2, padding_mode="reflect"),
        _all("small"),
    ),
    "reflect-1x1": (
        (2, 2, 5, 6),
        (3, 2, 1, 1),
        dict(padding=1, padding_mode="reflect"),
        _all("pointwise"),
    ),
    "circular-depthwise": (
        (2, 3, 6, 6),
        (3, 1, 3, 3),
        dict(groups=3, padding=1, padding_mode="circular"),
        _all("depthwise"),
    ),
    "floor-crop": (
        (1, 2, 8, 9),
        (2, 2, 3, 3),
        dict(stride=(2, 3), rounding="floor"),
        _all("im2col"),
    ),
    # Winograd: stride-1 3x3, 32 channels or more each side, 28x28 outputs or more.
    "winograd": (
        (2, 32, 28, 28),
        (32, 32, 3, 3),
        dict(padding=1),
        {F: "winograd", B: "winograd", IG: "winograd", WG: "im2col"},
    ),
    "winograd-31-channels": ((2, 31, 28, 28), (32, 31, 3, 3), dict(padding=1), _all("im2col")),
    "winograd-31-filters": ((2, 32, 28, 28), (31, 32, 3, 3), dict(padding=1), _all("im2col")),
    "winograd-27-rows": ((2, 32, 27, 28), (32, 32, 3, 3), dict(padding=1), _all("im2col")),
    "winograd-padding-3": ((2, 32, 28, 28), (32, 32, 3, 3), dict(padding=3), _all("im2col")),
    "winograd-dilated": (
        (2, 32, 28, 28),
        (32, 32, 3, 3),
        dict(padding=2, dilation=2),
        _all("im2col"),
    ),
    "winograd-grouped": (
        (2, 64, 28, 28),
        (64, 32, 3, 3),
        dict(padding=1, groups=2),
        _all("im2col"),
    ),
    "window-on-padding-only": (
        (1, 2, 1, 3),
        (2, 2, 1, 1),
        dict(padding=((5, 0), (0, 0)), stride=(10, 1), rounding="floor"),
        _all("empty"),
    ),
}


# The grid' layers are tiny enough to gather: their paths are read with it set aside.
pytestmark = pytest.mark.usefixtures("no_gather")


def _geometry(x_shape, w_shape, hyper) -> ConvGeometry:
    return ConvGeometry.build(x_shape, w_shape, **hyper)


@pytest.mark.parametrize("dtype", [np.float32, np.float64], ids=["float32", "float64"])
@pytest.mark.parametrize("pass_", list(Pass), ids=lambda p: p.value)
@pytest.mark.parametrize("name", GRID)
def test_each_pass_of_the_grid_selects_its_path(name, pass_, dtype):
    x_shape, w_shape, hyper, paths = GRID[name]
    selection = select(_geometry(x_shape, w_shape, hyper), pass_, dtype, split=False)
    assert selection.name == paths[pass_]


def _blas_may_split() -> bool:
    return halves.CORES >= 2 and halves._one_blas_thread.threads() >= 2


@pytest.mark.parametrize(
    "x_shape, w_shape, hyper, inner",
    [
        ((16, 16, 28, 28), (64, 16, 3, 3), dict(padding=1), "im2col"),
        ((64, 64, 64, 64), (64, 1, 3, 3), dict(groups=64, padding=1), "depthwise"),
        ((4, 32, 17, 33, 33), (32, 32, 3, 3, 3), dict(stride=2, padding=1), "volume(im2col)"),
        ((4, 16, 8, 32, 32), (16, 16, 3, 3, 3), dict(padding=1), "flat"),
        ((8, 64, 4096), (64, 64, 9), dict(padding=4), "im2col"),
    ],
    ids=["3x3", "depthwise", "3d-strided", "3d-flat", "line"],
)
def test_large_batches_split_in_halves_and_tiny_ones_do_not(x_shape, w_shape, hyper, inner):
    """Above MIN_SPLIT_FLOPS a batch is split (where the machine has two cores and BLAS two
    threads for it); one image never is, and a half's own selection is the inner path."""
    geometry = _geometry(x_shape, w_shape, hyper)
    assert geometry.flops() >= halves.MIN_SPLIT_FLOPS
    for pass_ in Pass:
        selection = select(geometry, pass_)
        want = f"halves({inner})" if _blas_may_split() else inner
        assert selection.name == want, pass_
        assert select(geometry, pass_, split=False).name == inner
        one_image = _geometry((1, *x_shape[1:]), w_shape, hyper)
        assert select(one_image, pass_).path is not Path.HALVES


def test_a_layer_below_the_split_threshold_is_not_split():
    geometry = _geometry((4, 16, 32, 32), (16, 16, 3, 3), dict(padding=1))
    assert geometry.flops() < halves.MIN_SPLIT_FLOPS
    assert select(geometry, Pass.BACKWARD).name == "im2col"


# Non-finite data: (case, pass, x_finite, w_finite, the path, whether wide rows are allowed)
NON_FINITE = [
    ("3x3", B, True, True, "small", True),
    ("3x3", B, False, True, "im2col", False),
    ("3x3", B, True, False, "im2col", False),
    ("3x3", WG, True, False, "im2col", True),  # dw alone multiplies no junk by w
    ("3x3", WG, False, True, "im2col", False),
    ("3x3", IG, False, True, "small", True),  # the input gradient reads no x
    ("3x3", IG, True, False, "im2col", False),
    ("3x3", F, False, False, "small", False),  # its forward meets no junk: any data
    ("depthwise", F, False, False, "depthwise", False),
    ("depthwise", B, False, True, "depthwise-taps", False),
    ("depthwise", B, True, False, "depthwise-taps", False),
    ("depthwise", WG, True, False, "depthwise-taps", False),
    ("depthwise", IG, False, True, "depthwise", False),
    ("depthwise", IG, True, False, "depthwise-taps", False),
    ("depthwise-strided", F, False, False, "depthwise-taps", True),
    ("depthwise-strided", B, True, True, "depthwise-taps", True),
    ("3d-stride-1", F, False, False, "flat", False),
    ("3d-stride-1", IG, True, False, "flat", False),
    ("3d-stride-1", B, False, True, "volume(im2col)", False),
    ("3d-stride-1", WG, True, False, "volume(im2col)", False),
    ("1x1", B, False, False, "pointwise", False),
    # The sub-pixel pass multiplies dout's padding by w: finite w only.
    ("overlapping-4x4-s2", IG, False, True, "subpixel", False),
    ("overlapping-4x4-s2", IG, True, False, "im2col", False),
    # Winograd spreads an inf over its tile: finite data only, in every pass (for the input
    # gradient, the run passes dout's finiteness as x's when it selects again).
    ("winograd", B, True, True, "winograd", True),
    ("winograd", F, False, True, "im2col", False),
    ("winograd", F, True, False, "im2col", False),
    ("winograd", B, True, False, "im2col", False),
    ("winograd", IG, False, True, "im2col", True),
    ("winograd", IG, True, False, "im2col", False),
]


@pytest.mark.parametrize(
    "name, pass_, x_finite, w_finite, path, wide",
    NON_FINITE,
    ids=[f"{c}-{p.value}-x{int(x)}-w{int(w)}" for c, p, x, w, *_ in NON_FINITE],
)
def test_non_finite_data_leaves_the_paths_that_multiply_junk(
    name, pass_, x_finite, w_finite, path, wide
):
    x_shape, w_shape, hyper, _ = GRID[name]
    geometry = _geometry(x_shape, w_shape, hyper)
    selection = select(geometry, pass_, x_finite=x_finite, w_finite=w_finite, split=False)
    assert selection.name == path
    leaf = selection.inner if selection.inner is not None else selection
    assert leaf.wide_rows == wide


def test_a_selection_is_a_small_frozen_record_with_a_readable_name():
    selection = Selection(Path.HALVES, Selection(Path.VOLUME, Selection(Path.DEPTHWISE_TAPS)))
    assert selection.name == "halves(volume(depthwise-taps))"
    with pytest.raises(dataclasses.FrozenInstanceError):
        selection.path = Path.IM2COL  # type: ignore[misc]
    assert Selection(Path.IM2COL) == Selection(Path.IM2COL)


def test_every_path_but_empty_has_its_module():
    assert set(KERNELS) == set(Path) - {Path.EMPTY}
    for path, module in KERNELS.items():
        assert callable(module.supports) and callable(module.work_elements), path


def test_the_grid_reaches_every_path_but_halves():
    reached = {
        part
        for x_shape, w_shape, hyper, paths in GRID.values()
        for name in paths.values()
        for part in name.replace(")", "").split("(")
    }
    assert reached == {path.value for path in Path} - {"halves", "gather"}


def test_a_transposed_layer_selects_its_convolution_s_input_gradient():
    """conv_transpose's forward is the input gradient of the convolution it inverts."""
    transposed = ConvGeometry.transposed((2, 6, 3, 4), (6, 3, 4, 4), stride=4)
    assert select(transposed.conv, Pass.INPUT_GRADIENT).name == "phases"
    assert select(transposed.conv, Pass.WEIGHT_GRADIENT).name == "im2col"


@pytest.mark.parametrize("gather_bound", [0, gather.MAX_IMAGE_COLUMN_ELEMENTS], ids=["", "gather"])
def test_a_path_taken_whatever_the_data_is_taken_for_any_data(gather_bound, monkeypatch):
    """The run skips the finiteness checks where the finite data's path is one of ANY_DATA:
    the selection must then be the same with an inf in x, in w, or in both."""
    monkeypatch.setattr(gather, "MAX_IMAGE_COLUMN_ELEMENTS", gather_bound)
    checked = set()
    for name, (x_shape, w_shape, hyper, _) in GRID.items():
        geometry = _geometry(x_shape, w_shape, hyper)
        for pass_ in Pass:
            finite = select(geometry, pass_, split=False)
            if finite.path not in ANY_DATA:
                continue
            checked.add(finite.path)
            for x_finite, w_finite in [(False, True), (True, False), (False, False)]:
                flags = dict(x_finite=x_finite, w_finite=w_finite, split=False)
                assert select(geometry, pass_, **flags) == finite, (name, pass_)
    assert checked == (ANY_DATA if gather_bound else ANY_DATA - {Path.GATHER})
