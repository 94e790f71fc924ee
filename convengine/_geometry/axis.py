"""One spatial axis of a convolution: the span of its windows, written once, and its output size.

``span`` is the extent of ``out`` windows read ``stride`` apart, each reaching
``dilation*(kernel-1) + 1`` pixels: the padding "same" needs, the output a transposed
convolution makes, and the trailing pixels floor rounding leaves unread all follow from it.
"""

from __future__ import annotations

from dataclasses import dataclass
from fractions import Fraction
from typing import TypeAlias

from .._errors import ShapeError

__all__ = ["Axis", "Sides", "check_padding_mode", "output_sizes", "span"]

Sides: TypeAlias = tuple[int, int]


def span(out: int, stride: int, dilation: int, kernel: int) -> int:
    """Pixels from the first window's first pixel to the last window's last: ``(out-1)*stride
    + dilation*(kernel-1) + 1``."""
    return (out - 1) * stride + dilation * (kernel - 1) + 1


@dataclass(frozen=True)
class Axis:
    """One spatial axis of a convolution, for the output-size formula and its messages."""

    name: str
    size: int
    pads: Sides
    kernel: int
    dilation: int
    stride: int

    @property
    def numerator(self) -> int:
        return self.size + sum(self.pads) - span(1, self.stride, self.dilation, self.kernel)

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
        total = span(self.floor, self.stride, self.dilation, self.kernel) - self.size
        if total < 0:
            return None
        before = min(self.pads[0], total)
        return before, total - before


def _shown(value: Fraction) -> str:
    return f"{float(value):g}" if value.denominator != 1 else str(value)


def output_sizes(axes: tuple[Axis, ...], rounding: str) -> tuple[int, ...]:
    """The output size per axis; ShapeError with the numbers and the ways out."""
    for axis in axes:
        if axis.numerator < 0:
            raise ShapeError(
                f"output {axis.name} {axis.formula} = {_shown(axis.exact)} is not positive: "
                f"the kernel spans {span(1, axis.stride, axis.dilation, axis.kernel)} pixels but "
                f"the padded input is only {axis.size + sum(axis.pads)}: use more padding, a "
                "smaller kernel or dilation, or a larger input",
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
    return tuple(axis.floor for axis in axes)


def _ways_out(axes: tuple[Axis, ...], culprit: Axis) -> str:
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


def check_padding_mode(mode: str, axes: tuple[Axis, ...]) -> None:
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
