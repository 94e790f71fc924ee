"""The geometry package: the names it has always offered, its builders' signatures, and the
one span formula every size is derived from."""

from __future__ import annotations

import inspect

import pytest

import convengine._geometry as geometry
from convengine import ConvGeometry
from convengine._geometry import span


def test_the_names_importable_before_the_split_still_are():
    for name in (
        "ConvGeometry",
        "IntOrTuple",
        "Padding",
        "PaddingMode",
        "Rounding",
        "TransposedGeometry",
        "normalize_padding",
        "per_axis",
    ):
        assert hasattr(geometry, name), name
    assert set(geometry.__all__) <= set(dir(geometry))


def test_the_builders_keep_their_signatures():
    build = inspect.signature(ConvGeometry.build)
    assert list(build.parameters) == [
        "x_shape",
        "w_shape",
        "stride",
        "padding",
        "dilation",
        "groups",
        "padding_mode",
        "rounding",
    ]
    transposed = inspect.signature(ConvGeometry.transposed)
    assert list(transposed.parameters) == [
        "x_shape",
        "w_shape",
        "stride",
        "padding",
        "output_padding",
        "dilation",
        "groups",
    ]


@pytest.mark.parametrize(
    "out, stride, dilation, kernel, pixels",
    [(1, 1, 1, 1, 1), (1, 3, 1, 3, 3), (4, 2, 1, 3, 9), (3, 3, 2, 2, 9), (5, 1, 3, 4, 14)],
)
def test_span_counts_the_pixels_from_the_first_window_to_the_last(
    out, stride, dilation, kernel, pixels
):
    assert span(out, stride, dilation, kernel) == pixels
    # Every window starts `stride` after the last and reaches dilation*(kernel-1) further.
    last_pixel = (out - 1) * stride + dilation * (kernel - 1)
    assert span(out, stride, dilation, kernel) == last_pixel + 1


def test_the_sizes_agree_with_the_span():
    """same padding, floor's unread pixels and the transposed output all follow from it."""
    g = ConvGeometry.build((1, 1, 10, 11), (1, 1, 3, 2), stride=(3, 2), rounding="floor")
    assert g.unread == tuple(
        n - span(o, s, d, k)
        for n, o, s, d, k in zip(g.size, g.out, g.stride, g.dilation, g.kernel, strict=True)
    )
    same = ConvGeometry.build((1, 1, 7, 8), (1, 1, 3, 4), stride=2, dilation=2, padding="same")
    assert same.out == (4, 4)
    t = ConvGeometry.transposed((1, 1, 4, 5), (1, 1, 3, 2), stride=(2, 3), padding=1)
    assert t.out_shape[2:] == (span(4, 2, 1, 3) - 2, span(5, 3, 1, 2) - 2)
