"""The one place where convolution sizes are computed and checked, for 1, 2 or 3 spatial axes.

Every size is a tuple with one entry per spatial axis, whatever the rank; the output-size
formulas (of the convolution and of the transposed convolution) are written once, per axis.
"""

from __future__ import annotations

import numbers
from collections.abc import Sequence
from dataclasses import dataclass, replace
from fractions import Fraction
from functools import cached_property
from math import prod
from typing import Literal, TypeAlias, cast, get_args

from ._errors import ShapeError

__all__ = [
    "ConvGeometry",
    "IntOrTuple",
    "Padding",
    "PaddingMode",
    "Rounding",
    "TransposedGeometry",
    "array_shapes",
    "normalize_padding",
    "per_axis",
]

IntOrTuple: TypeAlias = int | Sequence[int]
# An int, one per axis, ((begin, end), ...) per axis, or a word.
Padding: TypeAlias = IntOrTuple | Sequence[Sequence[int]] | Literal["same", "same_lower", "valid"]
PaddingMode: TypeAlias = Literal["zeros", "reflect", "replicate", "circular"]
Rounding: TypeAlias = Literal["exact", "floor"]
Sides: TypeAlias = tuple[int, int]

AXES = {1: ("length",), 2: ("height", "width"), 3: ("depth", "height", "width")}
SPATIAL = {1: "L", 2: "H, W", 3: "D, H, W"}
KERNEL = {1: "K", 2: "KH, KW", 3: "KD, KH, KW"}
OUTPUT = {1: "L_out", 2: "H_out, W_out", 3: "D_out, H_out, W_out"}
_PLURAL = {1: "an integer", 2: "a pair of integers", 3: "a triple of integers"}
_NAMES = {1: "(length)", 2: "(height, width)", 3: "(depth, height, width)"}
# Columns of one block of the flat stride-1 volume path (``_flat``), in bytes: small enough for
# the GEMM to read them back from the cache. Here because the work bound counts them.
FLAT_BLOCK_BYTES = 4 << 20


def _as_int(value: object, field: str, rank: int) -> int:
    # bool is an int subclass, but stride=True is a mistake, not a 1.
    if isinstance(value, bool) or not isinstance(value, numbers.Integral):
        raise ShapeError(
            f"{field} must be an integer or {_PLURAL[max(rank, 2)]}, got {value!r}", field=field
        )
    return int(value)


def _is_sequence(value: object) -> bool:
    return isinstance(value, Sequence) and not isinstance(value, str | bytes)


def per_axis(value: object, field: str, minimum: int, rank: int = 2) -> tuple[int, ...]:
    """``value`` (an int, or one per spatial axis) as a checked tuple of ints >= ``minimum``."""
    if not _is_sequence(value):
        values = (_as_int(value, field, rank),) * rank
    elif len(value) == rank:  # type: ignore[arg-type]
        values = tuple(_as_int(v, field, rank) for v in value)  # type: ignore[attr-defined]
    else:
        raise ShapeError(
            f"{field} must be an integer or {_PLURAL[rank]} {_NAMES[rank]}, "
            f"got {len(value)} values: {list(value)!r}",  # type: ignore[arg-type, call-overload]
            field=field,
        )
    for axis, amount in zip(AXES[rank], values, strict=True):
        if amount < minimum:
            raise ShapeError(
                f"{field} must be at least {minimum} along every axis, "
                f"got {amount} along the {axis}",
                field=field,
            )
    return values


def _is_per_side(value: object) -> bool:
    return _is_sequence(value) and all(_is_sequence(v) for v in value)  # type: ignore[attr-defined]


def normalize_padding(
    padding: object,
    kernel: tuple[int, ...],
    dilation: tuple[int, ...],
    stride: tuple[int, ...],
    size: tuple[int, ...],
) -> tuple[Sides, ...]:
    """Padding as one (begin, end) pair per spatial axis.

    ``"same"`` gives an output of ``ceil(size / stride)`` per axis, as TensorFlow and ONNX's
    SAME_UPPER do: a total of ``max((out - 1)*stride + dilation*(K-1) + 1 - size, 0)``, the odd
    pixel at the end (bottom/right; at stride 1 this is PyTorch's "same"). ``"same_lower"``
    puts the odd pixel at the start, as ONNX's SAME_LOWER.
    """
    rank = len(kernel)
    if isinstance(padding, str):
        if padding == "valid":
            return ((0, 0),) * rank
        if padding in ("same", "same_lower"):
            sides = []
            for n, k, d, s in zip(size, kernel, dilation, stride, strict=True):
                out = -(-n // s)
                total = max((out - 1) * s + d * (k - 1) + 1 - n, 0)
                small, large = total // 2, total - total // 2
                sides.append((small, large) if padding == "same" else (large, small))
            return tuple(sides)
        raise ShapeError(
            f"padding must be an integer, {_PLURAL[max(rank, 2)]}, a pair of (before, after) "
            f'pairs, "same", "same_lower" or "valid", got {padding!r}',
            field="padding",
        )
    return _explicit_padding(padding, rank)


def _explicit_padding(padding: object, rank: int) -> tuple[Sides, ...]:
    """An int, one per axis, or one (begin, end) pair per axis, as (begin, end) pairs."""
    if _is_per_side(padding):
        assert isinstance(padding, Sequence)
        if len(padding) != rank:
            raise ShapeError(
                f"padding per side needs one (before, after) pair per spatial axis {_NAMES[rank]}"
                f", got {len(padding)} pairs: {[list(p) for p in padding]!r}",
                field="padding",
            )
        sides = []
        for axis, side in zip(AXES[rank], padding, strict=True):
            if len(side) != 2:
                raise ShapeError(
                    f"padding of the {axis} must be a (before, after) pair, got {list(side)!r}",
                    field="padding",
                )
            begin, end = (_as_int(v, "padding", rank) for v in side)
            if min(begin, end) < 0:
                where = "start" if begin < 0 else "end"
                raise ShapeError(
                    f"padding must be at least 0 on every side, got {min(begin, end)} at the "
                    f"{where} of the {axis}",
                    field="padding",
                )
            sides.append((begin, end))
        return tuple(sides)
    return tuple((p, p) for p in per_axis(padding, "padding", 0, rank))


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


def _output_sizes(axes: tuple[_Axis, ...], rounding: str) -> tuple[int, ...]:
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
    return tuple(axis.floor for axis in axes)


def _ways_out(axes: tuple[_Axis, ...], culprit: _Axis) -> str:
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


def _check_padding_mode(mode: str, axes: tuple[_Axis, ...]) -> None:
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


def _layer_shape(
    shape: Sequence[int], field: str, lead: str, axes: dict[int, str], rank: int | None = None
) -> tuple[int, ...]:
    """A checked array shape: ``lead`` axes then 1 to 3 spatial axes (``rank`` when given)."""
    shape = tuple(int(d) for d in shape)
    ranks = (rank,) if rank is not None else (1, 2, 3)
    if len(shape) - 2 not in ranks:
        wanted = " or ".join(f"{r + 2}-D ({lead}, {axes[r]})" for r in ranks)
        raise ShapeError(f"{field} must be {wanted}, got {len(shape)}-D shape {shape}", field=field)
    names = f"{lead}, {axes[len(shape) - 2]}"
    if 0 in shape:
        raise ShapeError(f"{field} has an empty axis: shape {shape} ({names})", field=field)
    return shape


def _check_ranks(x_shape: tuple[int, ...], w_shape: tuple[int, ...]) -> None:
    """The rank is x's: w must have as many spatial axes."""
    rank = len(x_shape) - 2
    if len(x_shape) != len(w_shape):
        raise ShapeError(
            f"w has shape {w_shape} ({len(w_shape) - 2} spatial axes) but x has shape {x_shape} "
            f"({rank}): a {rank}-D layer takes w of {rank + 2} axes ({KERNEL[rank]} last)",
            field="w",
        )


@dataclass(frozen=True)
class ConvGeometry:
    """Every size of one convolution with 1, 2 or 3 spatial axes, checked on construction.

    Build it with :meth:`build`. Spatial fields are tuples, one entry per axis; ``height``,
    ``width``, ``pad_h``, ``pad_w``, ``h_out`` and ``w_out`` name the last two axes. The sizes
    derived from the fields are cached: a small layer's passes read them dozens of times, and
    recomputing them was a fifth of a 50 us forward pass.
    """

    n: int
    c: int
    f: int
    size: tuple[int, ...]
    kernel: tuple[int, ...]
    stride: tuple[int, ...]
    dilation: tuple[int, ...]
    pads: tuple[Sides, ...]
    groups: int
    out: tuple[int, ...]
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
        """Check ``x (N, C, *spatial)`` and ``w (F, C/groups, *kernel)`` against each other
        and the hyperparameters; the rank is taken from x."""
        x_shape = _layer_shape(x_shape, "x", "N, C", SPATIAL)
        rank = len(x_shape) - 2
        w_shape = _layer_shape(w_shape, "w", "F, C/groups", KERNEL)
        _check_ranks(x_shape, w_shape)
        (n, c, *size), (f, c_g, *kernel) = x_shape, w_shape
        strides = per_axis(stride, "stride", 1, rank)
        dilations = per_axis(dilation, "dilation", 1, rank)
        n_groups = _as_int(groups, "groups", 1)
        mode = _check_choice(padding_mode, "padding_mode", get_args(PaddingMode))
        rule = _check_choice(rounding, "rounding", get_args(Rounding))
        _check_groups(n_groups, x_shape, f, c_g)
        pads = normalize_padding(padding, tuple(kernel), dilations, strides, tuple(size))
        axes = tuple(
            _Axis(name, *values)
            for name, *values in zip(
                AXES[rank], size, pads, kernel, dilations, strides, strict=True
            )
        )
        out = _output_sizes(axes, rule)
        _check_padding_mode(mode, axes)
        return cls(
            n,
            c,
            f,
            tuple(size),
            tuple(kernel),
            strides,
            dilations,
            pads,
            n_groups,
            out,
            cast(PaddingMode, mode),
            cast(Rounding, rule),
        )

    @classmethod
    def transposed(
        cls,
        x_shape: Sequence[int],
        w_shape: Sequence[int],
        *,
        stride: object = 1,
        padding: object = 0,
        output_padding: object = 0,
        dilation: object = 1,
        groups: object = 1,
    ) -> TransposedGeometry:
        """The geometry of a transposed convolution (PyTorch's ``conv_transpose{1,2,3}d``).

        x (N, C_in, *spatial), w (C_in, C_out/groups, *kernel). Per axis, the output is
        ``(size - 1)*stride - pad_begin - pad_end + dilation*(K-1) + output_padding + 1``.
        """
        x_shape = _layer_shape(x_shape, "x", "N, C_in", SPATIAL)
        rank = len(x_shape) - 2
        w_shape = _layer_shape(w_shape, "w", "C_in, C_out/groups", KERNEL)
        _check_ranks(x_shape, w_shape)
        (n, c_in, *size), (w_in, c_out_g, *kernel) = x_shape, w_shape
        strides = per_axis(stride, "stride", 1, rank)
        dilations = per_axis(dilation, "dilation", 1, rank)
        extra = per_axis(output_padding, "output_padding", 0, rank)
        n_groups = _as_int(groups, "groups", 1)
        _check_transposed_channels(n_groups, c_in, w_in, c_out_g)
        if isinstance(padding, str):
            raise ShapeError(
                f"padding of a transposed convolution is numbers (an int, one per axis, or "
                f"(before, after) pairs), got {padding!r}",
                field="padding",
            )
        pads = _explicit_padding(padding, rank)
        out = []
        for name, n_in, (begin, end), k, d, s, op in zip(
            AXES[rank], size, pads, kernel, dilations, strides, extra, strict=True
        ):
            if op >= s and op >= d:
                raise ShapeError(
                    f"output_padding {op} along the {name} must be smaller than the stride {s} "
                    f"or the dilation {d}",
                    field="output_padding",
                )
            length = (n_in - 1) * s - begin - end + d * (k - 1) + op + 1
            if length < 1:
                raise ShapeError(
                    f"output {name} ({n_in}-1)*{s} - {begin} - {end} + {d}*({k}-1) + {op} + 1 = "
                    f"{length} is not positive: use less padding, or a larger input or kernel",
                    field="padding",
                )
            out.append(length)
        # The convolution whose input gradient this is: its input is our output.
        conv = cls(
            n,
            c_out_g * n_groups,
            c_in,
            tuple(out),
            tuple(kernel),
            strides,
            dilations,
            pads,
            n_groups,
            tuple(size),
            "zeros",
            "floor",  # output_padding leaves trailing pixels no window reads
        )
        return TransposedGeometry(conv, extra)

    # --- sizes --------------------------------------------------------------------------

    @property
    def rank(self) -> int:
        return len(self.size)

    @property
    def x_shape(self) -> tuple[int, ...]:
        return self.n, self.c, *self.size

    @property
    def w_shape(self) -> tuple[int, ...]:
        return self.f, self.c_per_group, *self.kernel

    @property
    def out_shape(self) -> tuple[int, ...]:
        """``(N, F, *out)``."""
        return self.n, self.f, *self.out

    def shapes(self) -> dict[str, tuple[int, ...]]:
        """Every array of the layer by name: x, w, b, out, and the gradients dout, dx, dw, db."""
        return array_shapes(self.x_shape, self.w_shape, self.out_shape)

    @cached_property
    def padded(self) -> tuple[int, ...]:
        return tuple(n + sum(p) for n, p in zip(self.size, self.pads, strict=True))

    @cached_property
    def is_padded(self) -> bool:
        return any(any(p) for p in self.pads)

    @property
    def c_per_group(self) -> int:
        return self.c // self.groups

    @property
    def f_per_group(self) -> int:
        return self.f // self.groups

    @cached_property
    def positions(self) -> int:
        """Output pixels per image and filter: the product of the output sizes."""
        return prod(self.out)

    @cached_property
    def col_rows(self) -> int:
        """Rows of one group's im2col matrix: ``C/groups * prod(kernel)``."""
        return self.c_per_group * prod(self.kernel)

    @property
    def cols_shape(self) -> tuple[int, int, int]:
        """The im2col tensor of the whole batch: ``(N, C*prod(kernel), prod(out))``."""
        return self.n, self.c * prod(self.kernel), self.positions

    def cols_elements(self) -> int:
        n, k, p = self.cols_shape
        return n * k * p

    # --- the last two axes by name, for the 2-D im2col passes ---------------------------

    @property
    def height(self) -> int:
        return self.size[-2]

    @property
    def width(self) -> int:
        return self.size[-1]

    @property
    def pad_h(self) -> Sides:
        return self.pads[-2]

    @property
    def pad_w(self) -> Sides:
        return self.pads[-1]

    @property
    def h_out(self) -> int:
        return self.out[-2]

    @property
    def w_out(self) -> int:
        return self.out[-1]

    @cached_property
    def padded_hw(self) -> tuple[int, int]:
        return self.padded[-2], self.padded[-1]

    # --- what the im2col passes compute -------------------------------------------------

    @cached_property
    def unread(self) -> tuple[int, ...]:
        """Trailing pixels of the padded input, per axis, that no window reaches (floor)."""
        return tuple(
            p - ((o - 1) * s + d * (k - 1) + 1)
            for p, o, s, d, k in zip(
                self.padded, self.out, self.stride, self.dilation, self.kernel, strict=True
            )
        )

    @cached_property
    def is_core(self) -> bool:
        """Zero padding and every padded pixel read: what the im2col passes compute directly."""
        return self.padding_mode == "zeros" and not any(self.unread)

    def core(self) -> tuple[ConvGeometry, tuple[int, ...]]:
        """The geometry the im2col passes compute, and the trailing input pixels it leaves out.

        With zero padding, the unread trailing pixels come off the end padding first, then
        off the input (returned per axis, their gradient is zero), then off the start padding:
        windows may reach no input pixel at all (a transposed convolution whose padding crops
        everything an input pixel adds), and the core's size along that axis is then 0. Any
        other padding mode is applied to the input first, so the core sees the padded input,
        cropped, with no padding.
        """
        unread = self.unread
        if self.padding_mode != "zeros":
            size = tuple(p - u for p, u in zip(self.padded, unread, strict=True))
            core = replace(
                self,
                size=size,
                pads=((0, 0),) * self.rank,
                padding_mode="zeros",
                rounding="exact",
            )
            return core, unread
        sizes, sides = [], []
        for n, (begin, end), p, u in zip(self.size, self.pads, self.padded, unread, strict=True):
            reach = p - u  # the padded pixels some window reads: [0, reach)
            sizes.append(max(0, min(n, reach - begin)))
            sides.append((min(begin, reach), max(0, min(end, reach - begin - n))))
        crop = tuple(n - kept for n, kept in zip(self.size, sizes, strict=True))
        core = replace(self, size=tuple(sizes), pads=tuple(sides), rounding="exact")
        return core, crop

    def work_elements(self) -> int:
        """An upper bound on the array elements one forward or backward pass allocates.

        The larger of the pass on the whole batch (:meth:`_batch_elements`) and the pass on
        two halves of it at once (see ``_halves``): both halves' work, and the whole results
        the halves are copied into. Callers use it to refuse work before allocating anything.
        """
        whole = self._batch_elements()
        if self.n < 2:
            return whole
        larger_half = replace(self, n=self.n - self.n // 2)
        results = self.n * (self.f * prod(self.out) + self.c * prod(self.size))
        return max(whole, 2 * larger_half._batch_elements() + results)

    def _batch_elements(self) -> int:
        """An upper bound on the array elements one pass on the whole batch allocates.

        Padded input and its gradient (with a row of slack each), one chunk of columns in wide
        rows, output and output gradient in wide rows, and the repeated input of a depthwise
        convolution with several filters per channel, and for depthwise layers what the
        flat-plane path adds (see :meth:`_depthwise_elements`): all of the planar convolution
        the passes compute (:meth:`planar`). Besides: for a padding mode or floor rounding, the
        prepared input and its gradient; for a volume, its depth slices and their gradient.
        """
        g = self.planar()
        h_pad, w_pad = g.padded_hw
        canvas = g.n * max(g.c, g.f) * (h_pad + 1) * w_pad
        # One chunk of columns: one image's, with a row of ones for the bias, or as many
        # images as fit in 2 MiB of columns (counted as float32 elements, more than float64
        # needs), which the ones row can double (one channel, 1x1) and wide rows grow by 4/3.
        image_cols = (g.c * g.kernel[0] * g.kernel[1] + 1) * g.h_out * w_pad
        chunk_cols = min(g.n * image_cols, max(image_cols, 2 * (2 << 20) // 4))
        outputs = g.n * g.f * g.h_out * w_pad
        total = 2 * canvas + chunk_cols + 2 * outputs
        if g.c_per_group == 1 and g.groups > 1:
            total += g._depthwise_elements()
        prepared = 0 if self.is_core else 2 * self.n * self.c * prod(self.padded)
        slices = 0 if self.rank < 3 else 2 * self.n * self.c * self.out[0] * prod(self.padded[1:])
        flat = 0 if self.rank < 3 else self._flat_elements()
        return max(total + slices, flat) + prepared

    def _flat_elements(self) -> int:
        """The flat stride-1 path's work, at most, forward and backward (see ``_flat``).

        Padded x and padded dout (the input gradient is gathered from it), one block of
        columns with its wide output and wide dout, both results and dw's work. Sizes are
        taken at the larger of the layer and its input-gradient convolution, per axis.
        """
        reach = [d * (k - 1) for d, k in zip(self.dilation, self.kernel, strict=True)]
        grid = [max(p, o + 2 * r) for p, o, r in zip(self.padded, self.out, reach, strict=True)]
        depths, per_depth = max(self.out[0], self.size[0]), prod(grid[1:])
        channels, taps = max(self.c, self.f), prod(self.kernel)
        # Counted in float32 elements, more of them per block than float64 fits.
        block = min(depths, max(1, FLAT_BLOCK_BYTES // (4 * channels * taps * per_depth)))
        slack = sum(r * prod(grid[axis + 1 :]) for axis, r in enumerate(reach) if axis > 0)
        canvases = self.n * (self.c + self.f) * prod(grid) + 2 * slack
        blocks = (channels * taps + 2 * channels) * block * per_depth
        results = self.n * (self.f * prod(self.out) + 2 * self.c * prod(self.size))
        return canvases + blocks + results + 4 * self.f * self.c_per_group * taps

    def planar(self) -> ConvGeometry:
        """The planar convolution the im2col passes compute for this one, at its largest: a
        line is a plane one pixel high, a volume its depth slices stacked along the batch."""
        if self.rank == 2:
            return self
        if self.rank == 1:
            return replace(
                self,
                size=(1, *self.size),
                kernel=(1, *self.kernel),
                stride=(1, *self.stride),
                dilation=(1, *self.dilation),
                pads=((0, 0), *self.pads),
                out=(1, *self.out),
            )
        return replace(
            self,
            n=self.n * self.out[0],
            size=self.size[1:],
            kernel=self.kernel[1:],
            stride=self.stride[1:],
            dilation=self.dilation[1:],
            pads=self.pads[1:],
            out=self.out[1:],
        )

    def _depthwise_elements(self) -> int:
        """The depthwise path's extras, at most.

        dx summed over the filters of a channel, dw per plane, and its work buffers (KW
        shifted copies and KH kernel-row sums of each plane of a group of at most 1 MiB),
        counted as five planes per plane of the batch, of the largest plane: the padded dout of
        the input gradient, padded by the kernel's reach beyond the input's own padding. The
        work-bound tests check it with the rest of the bound, kernels up to 9x9 included.
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

    # --- checks of the other arrays -----------------------------------------------------

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
                f"dout must have the forward output's shape (N, F, {OUTPUT[self.rank]}) = "
                f"{self.out_shape}, got {tuple(shape)}",
                field="dout",
            )


@dataclass(frozen=True)
class TransposedGeometry:
    """A transposed convolution, as the convolution ``conv`` whose input gradient it is.

    Its input x is that convolution's output gradient, its output that convolution's input.
    """

    conv: ConvGeometry
    output_padding: tuple[int, ...]

    @property
    def rank(self) -> int:
        return self.conv.rank

    @property
    def x_shape(self) -> tuple[int, ...]:
        """``(N, C_in, *spatial)``."""
        return self.conv.out_shape

    @property
    def w_shape(self) -> tuple[int, ...]:
        """``(C_in, C_out/groups, *kernel)``."""
        return self.conv.w_shape

    @property
    def out_shape(self) -> tuple[int, ...]:
        """``(N, C_out, *out)``."""
        return self.conv.x_shape

    def shapes(self) -> dict[str, tuple[int, ...]]:
        """Every array of the layer by name, as :meth:`ConvGeometry.shapes`."""
        return array_shapes(self.x_shape, self.w_shape, self.out_shape)

    def work_elements(self) -> int:
        return self.conv.work_elements()

    def flops(self) -> int:
        return self.conv.flops()

    def check_bias(self, shape: Sequence[int]) -> None:
        if tuple(shape) != (self.conv.c,):
            raise ShapeError(
                f"b must have shape ({self.conv.c},), one value per output channel, "
                f"got {tuple(shape)}",
                field="b",
            )

    def check_dout(self, shape: Sequence[int]) -> None:
        if tuple(shape) != self.out_shape:
            raise ShapeError(
                f"dout must have the forward output's shape (N, C_out, {OUTPUT[self.rank]}) = "
                f"{self.out_shape}, got {tuple(shape)}",
                field="dout",
            )


def array_shapes(
    x: tuple[int, ...], w: tuple[int, ...], out: tuple[int, ...]
) -> dict[str, tuple[int, ...]]:
    """The shape of every array of a layer of input x, filters w and output out (N, channels,
    ...): the bias has one value per output channel, and each gradient its array's shape."""
    bias = out[1:2]
    return {"x": x, "w": w, "b": bias, "out": out, "dout": out, "dx": x, "dw": w, "db": bias}


def _check_groups(groups: int, x_shape: tuple[int, ...], f: int, c_per_group: int) -> None:
    c = x_shape[1]
    if groups < 1:
        raise ShapeError(f"groups must be at least 1, got {groups}", field="groups")
    if c_per_group * groups != c and x_shape[-1] == c_per_group * groups:
        layout = SPATIAL[len(x_shape) - 2]
        raise ShapeError(
            f"x has {c} channels on axis 1 but w expects {c_per_group * groups}, which is x's "
            f"last axis: x looks like (N, {layout}, C) {x_shape}; send (N, C, {layout}), e.g. "
            f"x.transpose({', '.join(map(str, _channels_first(len(x_shape))))})",
            field="x",
        )
    if c % groups:
        raise ShapeError(f"groups={groups} must divide the input channels C={c}", field="groups")
    if f % groups:
        raise ShapeError(f"groups={groups} must divide the number of filters F={f}", field="groups")
    if c_per_group != c // groups:
        raise ShapeError(
            f"w must have C/groups = {c}/{groups} = {c // groups} input channels "
            f"(axis 1 of (F, C/groups, {KERNEL[len(x_shape) - 2]})), got {c_per_group}",
            field="w",
        )


def _channels_first(ndim: int) -> tuple[int, ...]:
    """The axes that move a channels-last array's channels to axis 1."""
    return 0, ndim - 1, *range(1, ndim - 1)


def _check_transposed_channels(groups: int, c_in: int, w_in: int, c_out_per_group: int) -> None:
    if groups < 1:
        raise ShapeError(f"groups must be at least 1, got {groups}", field="groups")
    if w_in != c_in:
        raise ShapeError(
            f"w must have C_in = {c_in} rows (axis 0 of (C_in, C_out/groups, *kernel)), one per "
            f"input channel of x, got {w_in}",
            field="w",
        )
    if c_in % groups:
        raise ShapeError(
            f"groups={groups} must divide the input channels C_in={c_in}", field="groups"
        )
