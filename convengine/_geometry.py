"""The one place where convolution sizes are computed and checked."""

from __future__ import annotations

import numbers
from collections.abc import Sequence
from dataclasses import dataclass
from fractions import Fraction
from typing import Literal, TypeAlias

from ._errors import ShapeError

__all__ = ["ConvGeometry", "IntOrPair", "Padding", "normalize_padding", "pair"]

IntOrPair: TypeAlias = int | Sequence[int]
Padding: TypeAlias = IntOrPair | Literal["same", "valid"]

_AXES = ("height", "width")


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
    padding: object, kernel: tuple[int, int], dilation: tuple[int, int], stride: tuple[int, int]
) -> tuple[tuple[int, int], tuple[int, int]]:
    """Padding as ((top, bottom), (left, right)).

    ``"same"`` pads a total of ``dilation*(K-1)`` per axis, the extra pixel of an odd total
    going to the bottom/right, as PyTorch does.
    """
    if isinstance(padding, str):
        if padding == "valid":
            return (0, 0), (0, 0)
        if padding == "same":
            if stride != (1, 1):
                raise ShapeError(
                    f'padding="same" needs stride 1, got stride {stride}: '
                    "give the padding as numbers instead",
                    field="padding",
                )
            totals = (dilation[0] * (kernel[0] - 1), dilation[1] * (kernel[1] - 1))
            (top, bottom), (left, right) = ((t // 2, t - t // 2) for t in totals)
            return (top, bottom), (left, right)
        raise ShapeError(
            f'padding must be an integer, a pair of integers, "same" or "valid", got {padding!r}',
            field="padding",
        )
    h, w = pair(padding, "padding", 0)
    return (h, h), (w, w)


def _output_size(
    axis: str, size: int, pads: tuple[int, int], kernel: int, dilation: int, stride: int
) -> int:
    numerator = size + pads[0] + pads[1] - dilation * (kernel - 1) - 1
    padded = f"2*{pads[0]}" if pads[0] == pads[1] else f"{pads[0]}+{pads[1]}"
    formula = f"({size} + {padded} - {dilation}*({kernel}-1) - 1)/{stride} + 1"
    exact = Fraction(numerator, stride) + 1
    shown = f"{float(exact):g}" if exact.denominator != 1 else str(exact)
    if numerator < 0:
        raise ShapeError(
            f"output {axis} {formula} = {shown} is not positive: the kernel spans "
            f"{dilation * (kernel - 1) + 1} pixels but the padded input is only "
            f"{size + pads[0] + pads[1]}: use more padding, a smaller kernel or dilation, "
            f"or a larger input",
            field="w",
        )
    if numerator % stride:
        raise ShapeError(
            f"output {axis} {formula} = {shown} is not a whole number: change stride or padding",
            field="stride",
        )
    return numerator // stride + 1


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
    ) -> ConvGeometry:
        """Check ``x (N, C, H, W)`` and ``w (F, C/groups, KH, KW)`` against the hyperparameters."""
        n, c, h, w = _shape(x_shape, "x", "N, C, H, W")
        f, c_g, kh, kw = _shape(w_shape, "w", "F, C/groups, KH, KW")
        stride_hw = pair(stride, "stride", 1)
        dilation_hw = pair(dilation, "dilation", 1)
        n_groups = _as_int(groups, "groups")
        _check_groups(n_groups, c, f, c_g)
        pad_h, pad_w = normalize_padding(padding, (kh, kw), dilation_hw, stride_hw)
        h_out = _output_size("height", h, pad_h, kh, dilation_hw[0], stride_hw[0])
        w_out = _output_size("width", w, pad_w, kw, dilation_hw[1], stride_hw[1])
        return cls(
            n, c, h, w, f, (kh, kw), stride_hw, dilation_hw, pad_h, pad_w, n_groups, h_out, w_out
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

        Padded input and its gradient (with a row of slack each), one chunk of columns in wide
        rows, output and output gradient in wide rows, and the repeated input of a depthwise
        convolution with several filters per channel; for depthwise layers also what the
        flat-plane path adds (see :meth:`_depthwise_elements`). Callers use it to refuse work
        before allocating anything.
        """
        h_pad, w_pad = self.padded_hw
        canvas = self.n * max(self.c, self.f) * (h_pad + 1) * w_pad
        # One chunk of columns: one image's, with a row of ones for the bias, or as many
        # images as fit in 2 MiB of columns (counted as float32 elements, more than float64
        # needs), which the ones row can double (one channel, 1x1) and wide rows grow by 4/3.
        image_cols = (self.c * self.kernel[0] * self.kernel[1] + 1) * self.h_out * w_pad
        chunk_cols = min(self.n * image_cols, max(image_cols, 2 * (2 << 20) // 4))
        outputs = self.n * self.f * self.h_out * w_pad
        total = 2 * canvas + chunk_cols + 2 * outputs
        if self.c_per_group == 1 and self.groups > 1:
            total += self._depthwise_elements()
        return total

    def _depthwise_elements(self) -> int:
        """The flat-plane depthwise path's extras, at most.

        dx summed over the filters of a channel, dw per plane, and five work buffers of at most
        every plane each; the largest plane is the padded dout of the input gradient, padded
        by the kernel's reach beyond the input's own padding.
        """
        h_pad, w_pad = self.padded_hw
        reach_h = self.dilation[0] * (self.kernel[0] - 1)
        reach_w = self.dilation[1] * (self.kernel[1] - 1)
        plane = (h_pad + reach_h + 1) * (w_pad + reach_w)
        taps = self.kernel[0] * self.kernel[1]
        return self.n * self.c * self.height * self.width + self.n * self.f * (taps + 5 * plane)

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


def _check_groups(groups: int, c: int, f: int, c_per_group: int) -> None:
    if groups < 1:
        raise ShapeError(f"groups must be at least 1, got {groups}", field="groups")
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
