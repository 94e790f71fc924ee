"""Every way a convolution can be wrong raises ShapeError with a message a person can act on."""

from __future__ import annotations

import re

import numpy as np
import pytest

from convengine import ConvError, ConvGeometry, ShapeError, conv, conv2d, conv2d_backward

X, W = (2, 4, 32, 32), (8, 4, 3, 3)

GEOMETRY_ERRORS = [
    (
        "x-3d",
        (4, 32, 32),
        W,
        {},
        "w",
        "w has shape (8, 4, 3, 3) (2 spatial axes) but x has shape (4, 32, 32) (1): a 1-D layer takes w of 3 axes (K last)",
    ),
    (
        "x-6d",
        (1, 1, 2, 2, 2, 2),
        W,
        {},
        "x",
        "x must be 3-D (N, C, L) or 4-D (N, C, H, W) or 5-D (N, C, D, H, W), got 6-D shape (1, 1, 2, 2, 2, 2)",
    ),
    (
        "w-5d",
        X,
        (8, 4, 3, 3, 1),
        {},
        "w",
        "w has shape (8, 4, 3, 3, 1) (3 spatial axes) but x has shape (2, 4, 32, 32) (2): a 2-D layer takes w of 4 axes (KH, KW last)",
    ),
    (
        "x-empty-axis",
        (0, 4, 32, 32),
        W,
        {},
        "x",
        "x has an empty axis: shape (0, 4, 32, 32) (N, C, H, W)",
    ),
    (
        "w-empty-axis",
        X,
        (8, 4, 0, 3),
        {},
        "w",
        "w has an empty axis: shape (8, 4, 0, 3) (F, C/groups, KH, KW)",
    ),
    (
        "channels",
        X,
        (8, 3, 3, 3),
        {},
        "w",
        "w must have C/groups = 4/1 = 4 input channels (axis 1 of (F, C/groups, KH, KW)), got 3",
    ),
    (
        "groups-channels",
        X,
        (8, 1, 3, 3),
        dict(groups=3),
        "groups",
        "groups=3 must divide the input channels C=4",
    ),
    (
        "groups-filters",
        X,
        (6, 1, 3, 3),
        dict(groups=4),
        "groups",
        "groups=4 must divide the number of filters F=6",
    ),
    ("groups-zero", X, W, dict(groups=0), "groups", "groups must be at least 1, got 0"),
    (
        "stride-zero",
        X,
        W,
        dict(stride=0),
        "stride",
        "stride must be at least 1 along every axis, got 0 along the height",
    ),
    (
        "stride-negative-width",
        X,
        W,
        dict(stride=(1, -2)),
        "stride",
        "stride must be at least 1 along every axis, got -2 along the width",
    ),
    (
        "dilation-zero",
        X,
        W,
        dict(dilation=0),
        "dilation",
        "dilation must be at least 1 along every axis, got 0 along the height",
    ),
    (
        "padding-negative",
        X,
        W,
        dict(padding=-1),
        "padding",
        "padding must be at least 0 along every axis, got -1 along the height",
    ),
    (
        "stride-triple",
        X,
        W,
        dict(stride=(1, 2, 3)),
        "stride",
        "stride must be an integer or a pair of integers (height, width), got 3 values: [1, 2, 3]",
    ),
    (
        "stride-float",
        X,
        W,
        dict(stride=1.5),
        "stride",
        "stride must be an integer or a pair of integers, got 1.5",
    ),
    (
        "stride-bool",
        X,
        W,
        dict(stride=True),
        "stride",
        "stride must be an integer or a pair of integers, got True",
    ),
    (
        "padding-word",
        X,
        W,
        dict(padding="full"),
        "padding",
        'padding must be an integer, a pair of integers, a pair of (before, after) pairs, "same", "same_lower" or "valid", got \'full\'',
    ),
    (
        "reflect-too-much",
        (1, 1, 3, 8),
        (1, 1, 3, 3),
        dict(padding=3, padding_mode="reflect"),
        "padding",
        'padding_mode "reflect" needs each padding smaller than the input: padding 3 at the start of the height, but the input height is 3',
    ),
    (
        "circular-too-much",
        (1, 1, 8, 2),
        (1, 1, 3, 3),
        dict(padding=((0, 0), (1, 3)), padding_mode="circular"),
        "padding",
        'padding_mode "circular" needs each padding at most the input: padding 3 at the end of the width, but the input width is 2',
    ),
    (
        "unknown-mode",
        X,
        W,
        dict(padding_mode="mirror"),
        "padding_mode",
        "padding_mode must be one of 'zeros', 'reflect', 'replicate', 'circular', got 'mirror'",
    ),
    (
        "unknown-rounding",
        X,
        W,
        dict(rounding="ceil"),
        "rounding",
        "rounding must be one of 'exact', 'floor', got 'ceil'",
    ),
    (
        "pair-of-pairs-negative",
        X,
        W,
        dict(padding=((1, -1), (0, 0))),
        "padding",
        "padding must be at least 0 on every side, got -1 at the end of the height",
    ),
    (
        "resnet-stem",
        (1, 3, 224, 224),
        (64, 3, 7, 7),
        dict(stride=2, padding=3),
        "stride",
        'output height (224 + 2*3 - 1*(7-1) - 1)/2 + 1 = 112.5 is not a whole number: pad [[3, 2], [3, 2]] for an output height of 112 (what PyTorch computes), or send rounding "floor"',
    ),
    (
        "not-whole-no-padding-helps",
        (1, 1, 8, 8),
        (1, 1, 3, 3),
        dict(stride=2),
        "stride",
        'output height (8 + 2*0 - 1*(3-1) - 1)/2 + 1 = 3.5 is not a whole number: change stride or padding, or send rounding "floor" for an output height of 3',
    ),
    (
        "channels-last",
        (2, 32, 32, 3),
        (8, 3, 3, 3),
        {},
        "x",
        "x has 32 channels on axis 1 but w expects 3, which is x's last axis: x looks like (N, H, W, C) (2, 32, 32, 3); send (N, C, H, W), e.g. x.transpose(0, 3, 1, 2)",
    ),
    (
        "not-whole",
        (1, 1, 32, 32),
        (1, 1, 3, 3),
        dict(stride=2),
        "stride",
        "output height (32 + 2*0 - 1*(3-1) - 1)/2 + 1 = 15.5 is not a whole number: change stride or padding",
    ),
    (
        "not-whole-width",
        (1, 1, 33, 32),
        (1, 1, 3, 3),
        dict(stride=2, padding=(0, 1)),
        "stride",
        'output width (32 + 2*1 - 1*(3-1) - 1)/2 + 1 = 16.5 is not a whole number: pad [[0, 0], [1, 0]] for an output width of 16 (what PyTorch computes), or send rounding "floor"',
    ),
    (
        "kernel-too-big",
        (1, 1, 4, 4),
        (1, 1, 7, 7),
        {},
        "w",
        "output height (4 + 2*0 - 1*(7-1) - 1)/1 + 1 = -2 is not positive: the kernel spans 7 pixels but the padded input is only 4: use more padding, a smaller kernel or dilation, or a larger input",
    ),
    (
        "dilated-too-big",
        (1, 1, 9, 5),
        (1, 1, 3, 3),
        dict(dilation=(1, 3)),
        "w",
        "output width (5 + 2*0 - 3*(3-1) - 1)/1 + 1 = -1 is not positive: the kernel spans 7 pixels",
    ),
]


# What the functions answer where the kernels' geometry refuses: x one axis short of w's rank
# is one sample, an empty batch is computed, and the rank comes from w (see _tensors).
FUNCTIONAL = {
    "x-3d": None,
    "x-6d": (
        "x",
        "x must be 4-D (N, C, H, W) or 3-D (C, H, W) for one sample, as w of 4 axes "
        "(F, C/groups, KH, KW) makes a 2-D layer; got 6-D shape (1, 1, 2, 2, 2, 2)",
    ),
    "w-5d": (
        "w",
        "w must have C/groups = 2/1 = 2 input channels (axis 1 of (F, C/groups, KD, KH, KW)), "
        "got 4 (x of shape (2, 4, 32, 32) is read as one sample, without the batch axis: w has "
        "5 axes)",
    ),
    "x-empty-axis": None,
}


@pytest.mark.parametrize(
    "name, x_shape, w_shape, hyper, field, message",
    GEOMETRY_ERRORS,
    ids=[case[0] for case in GEOMETRY_ERRORS],
)
def test_geometry_errors(name, x_shape, w_shape, hyper, field, message):
    with pytest.raises(ShapeError, match="^" + re.escape(message)) as info:
        ConvGeometry.build(x_shape, w_shape, **hyper)
    assert info.value.field == field
    # The functional API raises exactly the same error, but where it takes more tensors.
    if name in FUNCTIONAL and FUNCTIONAL[name] is None:
        assert conv(np.zeros(x_shape), np.zeros(w_shape), **hyper).ndim == len(x_shape)
        return
    field, message = FUNCTIONAL.get(name, (field, message))
    with pytest.raises(ShapeError, match="^" + re.escape(message)) as info:
        conv(np.zeros(x_shape), np.zeros(w_shape), **hyper)
    assert info.value.field == field


def test_bias_length():
    with pytest.raises(
        ShapeError, match=re.escape("b must have shape (8,), one value per filter, got (7,)")
    ) as info:
        conv2d(np.zeros(X), np.zeros(W), np.zeros(7), padding=1)
    assert info.value.field == "b"


def test_dout_shape():
    message = "dout must have the forward output's shape (N, F, H_out, W_out) = (2, 8, 32, 32), got (2, 8, 30, 30)"
    with pytest.raises(ShapeError, match=re.escape(message)) as info:
        conv2d_backward(np.zeros((2, 8, 30, 30)), np.zeros(X), np.zeros(W), padding=1)
    assert info.value.field == "dout"


def test_ragged_input_is_a_shape_error():
    with pytest.raises(ShapeError, match="x is not a rectangular array of numbers") as info:
        conv2d([[[[1.0, 2.0], [3.0]]]], np.zeros((1, 1, 1, 1)))
    assert info.value.field == "x"


def test_hierarchy():
    assert issubclass(ShapeError, ConvError)
    assert issubclass(ConvError, ValueError)


def test_geometry_sizes():
    g = ConvGeometry.build((8, 64, 57, 55), (128, 64, 3, 3), stride=2, padding=(1, 2))
    assert g.out_shape == (8, 128, 29, 29)
    assert g.padded_hw == (59, 59)
    assert g.cols_shape == (8, 64 * 9, 29 * 29)
    assert g.flops() == 2 * 8 * 128 * 29 * 29 * 64 * 9
    same = ConvGeometry.build((1, 1, 5, 5), (1, 1, 4, 2), padding="same", dilation=(1, 3))
    assert (same.pad_h, same.pad_w) == ((1, 2), (1, 2))
    assert same.out_shape == (1, 1, 5, 5)
