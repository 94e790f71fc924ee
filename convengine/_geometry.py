"""The one place where convolution sizes are computed and checked."""

from __future__ import annotations

import numbers
from collections.abc import Sequence
from dataclasses import dataclass, replace
from fractions import Fraction
from typing import Literal, TypeAlias, cast, get_args

from ._errors import ShapeError

__all__ = [
    "ConvGeometry",
    "IntOrPair",
    "Padding",
    "PaddingMode",
    "Rounding",
    "normalize_padding",
    "pair",
]

IntOrPair: TypeAlias = int | Sequence[int]
# An int, (h, w), ((top, bottom), (left, right)), or a word.
Padding: TypeAlias = IntOrPair | Sequence[Sequence[int]] | Literal["same", "same_lower", "valid"]
PaddingMode: TypeAlias = Literal["zeros", "reflect", "replicate", "circular"]
Rounding: TypeAlias = Literal["exact", "floor"]
Sides: TypeAlias = tuple[int, int]

_AXES = ("height", "width")
_WORDS = ("same", "same_lower", "valid")


def _as_int(value: object, field: str) -> int:
    # bool is an int subclass, but stride=True is a mistake, not a 1.
    if isinstance(value, bool) or not isinstance(value, numbers.Integral):
        raise ShapeError(
            f"{field} must be an integer or a pair of integers, got {value!r}", field=field
        )
    return int(value)


def pair(value: object, field: str, minimum: int) -> tuple[int, int]:
    """``value`` (an int or an (h, w) pair) as a checked (h, w) pair of ints >= ``minimum``."""
    if isinstance(value, str | bytes) or not isinstance(value, Sequence):
        h = w = _as_int(value, field)
    elif len(value) == 2:
        h, w = _as_int(value[0], field), _as_int(value[1], field)
    else:
        raise ShapeError(
            f"{field} must be an integer or a pair of integers (height, width), "
            f"got {len(value)} values: {list(value)!r}",
            field=field,
        )
    for axis, amount in zip(_AXES, (h, w), strict=True):
        if amount < minimum:
            raise ShapeError(
                f"{field} must be at least {minimum} along every axis, "
                f"got {amount} along the {axis}",
                field=field,
            )
    return h, w


def normalize_padding(
    padding: object,
    kernel: tuple[int, int],
    dilation: tuple[int, int],
    stride: tuple[int, int],
    size: tuple[int, int] | None = None,
) -> tuple[Sides, Sides]:
    """Padding as ((top, bottom), (left, right)).

    ``"same"`` gives an output of ``ceil(size / stride)`` per axis, as TensorFlow and ONNX's
    SAME_UPPER do: a total of ``max((out - 1)*stride + dilation*(K-1) + 1 - size, 0)``, the odd
    pixel at the end (bottom/right; at stride 1 this is PyTorch's "same"). ``"same_lower"``
    puts the odd pixel at the start, as ONNX's SAME_LOWER.
    """
    if isinstance(padding, str):
        if padding == "valid":
            return (0, 0), (0, 0)
        if padding in ("same", "same_lower"):
            sizes = size if size is not None else (1, 1)
            if size is None and stride != (1, 1):
                raise ShapeError(f'padding="{padding}" needs the input size', field="padding")
            sides = []
            for n, k, d, s in zip(sizes, kernel, dilation, stride, strict=True):
                out = -(-n // s)
                total = max((out - 1) * s + d * (k - 1) + 1 - n, 0)
                small, large = total // 2, total - total // 2
                sides.append((small, large) if padding == "same" else (large, small))
            return sides[0], sides[1]
        raise ShapeError(
            "padding must be an integer, a pair of integers, a pair of (before, after) pairs, "
            f'"same", "same_lower" or "valid", got {padding!r}',
            field="padding",
        )
    if _is_pair_of_pairs(padding):
        assert isinstance(padding, Sequence)
        top, bottom = pair(padding[0], "padding", 0)
        left, right = pair(padding[1], "padding", 0)
        return (top, bottom), (left, right)
    h, w = pair(padding, "padding", 0)
    return (h, h), (w, w)


def _is_pair_of_pairs(value: object) -> bool:
    return (
        isinstance(value, Sequence)
        and not isinstance(value, str | bytes)
        and len(value) == 2
        and all(isinstance(v, Sequence) and not isinstance(v, str | bytes) for v in value)
    )


@dataclass(frozen=True)
class _Axis:
    """One spatial axis of a convolution, for the output-size formula and its messages."""

    name: str
    size: int
    pads: Sides
    kernel: int
    dilation: int
    stride: int

    @property
    def numerator(self) -> int:
        return self.size + sum(self.pads) - self.dilation * (self.kernel - 1) - 1

    @property
    def formula(self) -> str:
        before, after = self.pads
        padded = f"2*{before}" if before == after else f"{before}+{after}"
        return f"({self.size} + {padded} - {self.dilation}*({self.kernel}-1) - 1)/{self.stride} + 1"

    @property
    def exact(self) -> Fraction:
        return Fraction(self.numerator, self.stride) + 1

    @property
    def floor(self) -> int:
        return self.numerator // self.stride + 1

    def padding_for_floor(self) -> Sides | None:
        """Per-side padding whose output is exactly :attr:`floor`, keeping the start's, if any."""
        total = (self.floor - 1) * self.stride + self.dilation * (self.kernel - 1) + 1 - self.size
        if total < 0:
            return None
        before = min(self.pads[0], total)
        return before, total - before


def _shown(value: Fraction) -> str:
    return f"{float(value):g}" if value.denominator != 1 else str(value)


def _output_sizes(axes: tuple[_Axis, _Axis], rounding: str) -> tuple[int, int]:
    """The output size per axis; ShapeError with the numbers and the ways out."""
    for axis in axes:
        if axis.numerator < 0:
            raise ShapeError(
                f"output {axis.name} {axis.formula} = {_shown(axis.exact)} is not positive: "
                f"the kernel spans {axis.dilation * (axis.kernel - 1) + 1} pixels but the padded "
                f"input is only {axis.size + sum(axis.pads)}: use more padding, a smaller kernel "
                "or dilation, or a larger input",
                field="w",
            )
    if rounding == "exact":
        for axis in axes:
            if axis.numerator % axis.stride:
                raise ShapeError(
                    f"output {axis.name} {axis.formula} = {_shown(axis.exact)} is not a whole "
                    f"number: {_ways_out(axes, axis)}",
                    field="stride",
                )
    return axes[0].floor, axes[1].floor


def _ways_out(axes: tuple[_Axis, _Axis], culprit: _Axis) -> str:
    fixes = [a.padding_for_floor() if a.numerator % a.stride else a.pads for a in axes]
    floor = f'send rounding "floor" for an output {culprit.name} of {culprit.floor}'
    if any(fix is None for fix in fixes):
        return f"change stride or padding, or {floor}"
    # With symmetric padding, floor rounding is what PyTorch computes; say so.
    who = " (what PyTorch computes)" if culprit.pads[0] == culprit.pads[1] else ""
    padding = [list(fix) for fix in fixes if fix is not None]
    return (
        f"pad {padding} for an output {culprit.name} of {culprit.floor}{who}, "
        'or send rounding "floor"'
    )


def _check_choice(value: object, field: str, choices: tuple[str, ...]) -> str:
    if not isinstance(value, str) or value not in choices:
        raise ShapeError(
            f"{field} must be one of {', '.join(map(repr, choices))}, got {value!r}", field=field
        )
    return value


def _check_padding_mode(mode: str, axes: tuple[_Axis, _Axis]) -> None:
    """PyTorch's limits: reflect pads less than the input, circular at most the input."""
    if mode not in ("reflect", "circular"):
        return
    for axis in axes:
        for side, amount in zip(("start", "end"), axis.pads, strict=True):
            too_much = amount >= axis.size if mode == "reflect" else amount > axis.size
            if too_much:
                rule = "smaller than" if mode == "reflect" else "at most"
                raise ShapeError(
                    f'padding_mode "{mode}" needs each padding {rule} the input: padding '
                    f"{amount} at the {side} of the {axis.name}, but the input {axis.name} is "
                    f"{axis.size}",
                    field="padding",
                )


def _shape(shape: Sequence[int], field: str, names: str) -> tuple[int, ...]:
    shape = tuple(int(d) for d in shape)
    want = len(names.split(", "))
    if len(shape) != want:
        raise ShapeError(
            f"{field} must be {want}-D ({names}), got {len(shape)}-D shape {shape}", field=field
        )
    if 0 in shape:
        raise ShapeError(f"{field} has an empty axis: shape {shape} ({names})", field=field)
    return shape


@dataclass(frozen=True)
class ConvGeometry:
    """Every size of one 2-D convolution, checked on construction.

    Build it with :meth:`build`; the fields are per axis ``(h, w)`` pairs.
    """

    n: int
    c: int
    height: int
    width: int
    f: int
    kernel: tuple[int, int]
    stride: tuple[int, int]
    dilation: tuple[int, int]
    pad_h: tuple[int, int]
    pad_w: tuple[int, int]
    groups: int
    h_out: int
    w_out: int
    padding_mode: PaddingMode = "zeros"
    rounding: Rounding = "exact"

    @classmethod
    def build(
        cls,
        x_shape: Sequence[int],
        w_shape: Sequence[int],
        *,
        stride: object = 1,
        padding: object = 0,
        dilation: object = 1,
        groups: object = 1,
        padding_mode: object = "zeros",
        rounding: object = "exact",
    ) -> ConvGeometry:
        """Check ``x (N, C, H, W)`` and ``w (F, C/groups, KH, KW)`` against the hyperparameters."""
        n, c, h, w = _shape(x_shape, "x", "N, C, H, W")
        f, c_g, kh, kw = _shape(w_shape, "w", "F, C/groups, KH, KW")
        stride_hw = pair(stride, "stride", 1)
        dilation_hw = pair(dilation, "dilation", 1)
        n_groups = _as_int(groups, "groups")
        mode = _check_choice(padding_mode, "padding_mode", get_args(PaddingMode))
        rule = _check_choice(rounding, "rounding", get_args(Rounding))
        _check_groups(n_groups, tuple(x_shape), f, c_g)
        pad_h, pad_w = normalize_padding(padding, (kh, kw), dilation_hw, stride_hw, (h, w))
        axes = (
            _Axis("height", h, pad_h, kh, dilation_hw[0], stride_hw[0]),
            _Axis("width", w, pad_w, kw, dilation_hw[1], stride_hw[1]),
        )
        h_out, w_out = _output_sizes(axes, rule)
        _check_padding_mode(mode, axes)
        return cls(
            n,
            c,
            h,
            w,
            f,
            (kh, kw),
            stride_hw,
            dilation_hw,
            pad_h,
            pad_w,
            n_groups,
            h_out,
            w_out,
            cast(PaddingMode, mode),
            cast(Rounding, rule),
        )

    @property
    def x_shape(self) -> tuple[int, int, int, int]:
        return self.n, self.c, self.height, self.width

    @property
    def w_shape(self) -> tuple[int, int, int, int]:
        return self.f, self.c_per_group, *self.kernel

    @property
    def out_shape(self) -> tuple[int, int, int, int]:
        """``(N, F, H_out, W_out)``."""
        return self.n, self.f, self.h_out, self.w_out

    @property
    def padded_hw(self) -> tuple[int, int]:
        return self.height + sum(self.pad_h), self.width + sum(self.pad_w)

    @property
    def is_padded(self) -> bool:
        return any(self.pad_h) or any(self.pad_w)

    @property
    def c_per_group(self) -> int:
        return self.c // self.groups

    @property
    def f_per_group(self) -> int:
        return self.f // self.groups

    @property
    def positions(self) -> int:
        """Output pixels per image and filter: ``H_out * W_out``."""
        return self.h_out * self.w_out

    @property
    def col_rows(self) -> int:
        """Rows of one group's im2col matrix: ``C/groups * KH * KW``."""
        return self.c_per_group * self.kernel[0] * self.kernel[1]

    @property
    def cols_shape(self) -> tuple[int, int, int]:
        """The im2col tensor of the whole batch: ``(N, C*KH*KW, H_out*W_out)``."""
        return self.n, self.c * self.kernel[0] * self.kernel[1], self.positions

    def cols_elements(self) -> int:
        n, k, p = self.cols_shape
        return n * k * p

    def work_elements(self) -> int:
        """An upper bound on the array elements one forward or backward pass allocates.

        Padded input and its gradient (with a row of slack each), one image's columns in wide
        rows, output and output gradient in wide rows, and the repeated input of a depthwise
        convolution with several filters per channel. Callers use it to refuse work before
        allocating anything.
        """
        h_pad, w_pad = self.padded_hw
        canvas = self.n * max(self.c, self.f) * (h_pad + 1) * w_pad
        image_cols = self.c * self.kernel[0] * self.kernel[1] * self.h_out * w_pad
        outputs = self.n * self.f * self.h_out * w_pad
        # A padding mode or floor rounding adds the padded (or cropped) input and its gradient.
        prepared = 0 if self.is_core else 2 * self.n * self.c * h_pad * w_pad
        return 2 * canvas + image_cols + 2 * outputs + prepared

    @property
    def unread(self) -> tuple[int, int]:
        """Trailing rows and columns of the padded input that no window reaches (floor rounding)."""
        h_pad, w_pad = self.padded_hw
        reach_h = (self.h_out - 1) * self.stride[0] + self.dilation[0] * (self.kernel[0] - 1) + 1
        reach_w = (self.w_out - 1) * self.stride[1] + self.dilation[1] * (self.kernel[1] - 1) + 1
        return h_pad - reach_h, w_pad - reach_w

    @property
    def is_core(self) -> bool:
        """Zero padding and every padded pixel read: what the im2col passes compute directly."""
        return self.padding_mode == "zeros" and self.unread == (0, 0)

    def core(self) -> tuple[ConvGeometry, tuple[int, int]]:
        """The geometry the im2col passes compute, and the trailing input pixels it leaves out.

        With zero padding, the unread trailing pixels come off the end padding first, then
        off the input (returned per axis, their gradient is zero). Any other padding mode is
        applied to the input first, so the core sees the padded input, cropped, with no padding.
        """
        unread_h, unread_w = self.unread
        if self.padding_mode != "zeros":
            h_pad, w_pad = self.padded_hw
            core = replace(
                self,
                height=h_pad - unread_h,
                width=w_pad - unread_w,
                pad_h=(0, 0),
                pad_w=(0, 0),
                padding_mode="zeros",
                rounding="exact",
            )
            return core, (unread_h, unread_w)
        (top, bottom), (left, right) = self.pad_h, self.pad_w
        cut_h, cut_w = min(bottom, unread_h), min(right, unread_w)
        crop = (unread_h - cut_h, unread_w - cut_w)
        core = replace(
            self,
            height=self.height - crop[0],
            width=self.width - crop[1],
            pad_h=(top, bottom - cut_h),
            pad_w=(left, right - cut_w),
            rounding="exact",
        )
        return core, crop

    def flops(self) -> int:
        """Multiply-adds of the forward pass, counted as two operations each."""
        return 2 * self.n * self.f * self.positions * self.col_rows

    def check_shape(self, field: str, shape: Sequence[int], expected: tuple[int, ...]) -> None:
        """ShapeError unless ``shape`` is the ``expected`` shape this geometry was built for."""
        if tuple(shape) != expected:
            raise ShapeError(
                f"{field} has shape {tuple(shape)} but this geometry was built for {expected}",
                field=field,
            )

    def check_bias(self, shape: Sequence[int]) -> None:
        if tuple(shape) != (self.f,):
            raise ShapeError(
                f"b must have shape ({self.f},), one value per filter, got {tuple(shape)}",
                field="b",
            )

    def check_dout(self, shape: Sequence[int]) -> None:
        if tuple(shape) != self.out_shape:
            raise ShapeError(
                f"dout must have the forward output's shape (N, F, H_out, W_out) = "
                f"{self.out_shape}, got {tuple(shape)}",
                field="dout",
            )


def _check_groups(groups: int, x_shape: tuple[int, ...], f: int, c_per_group: int) -> None:
    c = x_shape[1]
    if groups < 1:
        raise ShapeError(f"groups must be at least 1, got {groups}", field="groups")
    if c_per_group * groups != c and x_shape[-1] == c_per_group * groups:
        raise ShapeError(
            f"x has {c} channels on axis 1 but w expects {c_per_group * groups}, which is x's "
            f"last axis: x looks like (N, H, W, C) {x_shape}; send (N, C, H, W), e.g. "
            "x.transpose(0, 3, 1, 2)",
            field="x",
        )
    if c % groups:
        raise ShapeError(f"groups={groups} must divide the input channels C={c}", field="groups")
    if f % groups:
        raise ShapeError(f"groups={groups} must divide the number of filters F={f}", field="groups")
    if c_per_group != c // groups:
        raise ShapeError(
            f"w must have C/groups = {c}/{groups} = {c // groups} input channels "
            f"(axis 1 of (F, C/groups, KH, KW)), got {c_per_group}",
            field="w",
        )
