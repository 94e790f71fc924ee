"""Every size of a convolution, for 1, 2 or 3 spatial axes, from checked hyperparameters.

Every size is a tuple with one entry per spatial axis, whatever the rank; the output-size
formulas (of the convolution and of the transposed convolution) are written once, per axis,
in :mod:`.axis`. What each computing path allocates is counted beside the path
(``convengine._kernels``), not here.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, replace
from functools import cached_property
from math import prod
from typing import cast, get_args

from .._errors import ShapeError
from .axis import Axis, Sides, check_padding_mode, output_sizes, span
from .parsing import (
    AXES,
    KERNEL,
    OUTPUT,
    SPATIAL,
    PaddingMode,
    Rounding,
    as_int,
    check_choice,
    check_groups,
    check_ranks,
    check_transposed_channels,
    explicit_padding,
    layer_shape,
    normalize_padding,
    per_axis,
)

__all__ = ["ConvGeometry", "TransposedGeometry", "array_shapes"]


def array_shapes(
    x: tuple[int, ...], w: tuple[int, ...], out: tuple[int, ...]
) -> dict[str, tuple[int, ...]]:
    """The shape of every array of a layer of input x, filters w and output out (N, channels,
    ...): the bias has one value per output channel, and each gradient its array's shape."""
    bias = out[1:2]
    return {"x": x, "w": w, "b": bias, "out": out, "dout": out, "dx": x, "dw": w, "db": bias}


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
        x_shape = layer_shape(x_shape, "x", "N, C", SPATIAL)
        rank = len(x_shape) - 2
        w_shape = layer_shape(w_shape, "w", "F, C/groups", KERNEL)
        check_ranks(x_shape, w_shape)
        (n, c, *size), (f, c_g, *kernel) = x_shape, w_shape
        strides = per_axis(stride, "stride", 1, rank)
        dilations = per_axis(dilation, "dilation", 1, rank)
        n_groups = as_int(groups, "groups", 1)
        mode = check_choice(padding_mode, "padding_mode", get_args(PaddingMode))
        rule = check_choice(rounding, "rounding", get_args(Rounding))
        check_groups(n_groups, x_shape, f, c_g)
        pads = normalize_padding(padding, tuple(kernel), dilations, strides, tuple(size))
        axes = tuple(
            Axis(name, *values)
            for name, *values in zip(
                AXES[rank], size, pads, kernel, dilations, strides, strict=True
            )
        )
        out = output_sizes(axes, rule)
        check_padding_mode(mode, axes)
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
        x_shape = layer_shape(x_shape, "x", "N, C_in", SPATIAL)
        rank = len(x_shape) - 2
        w_shape = layer_shape(w_shape, "w", "C_in, C_out/groups", KERNEL)
        check_ranks(x_shape, w_shape)
        (n, c_in, *size), (w_in, c_out_g, *kernel) = x_shape, w_shape
        strides = per_axis(stride, "stride", 1, rank)
        dilations = per_axis(dilation, "dilation", 1, rank)
        extra = per_axis(output_padding, "output_padding", 0, rank)
        n_groups = as_int(groups, "groups", 1)
        check_transposed_channels(n_groups, c_in, w_in, c_out_g)
        if isinstance(padding, str):
            raise ShapeError(
                f"padding of a transposed convolution is numbers (an int, one per axis, or "
                f"(before, after) pairs), got {padding!r}",
                field="padding",
            )
        pads = explicit_padding(padding, rank)
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
            length = span(n_in, s, d, k) - begin - end + op
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

    @cached_property
    def rank(self) -> int:
        return len(self.size)

    @cached_property
    def x_shape(self) -> tuple[int, ...]:
        return self.n, self.c, *self.size

    @cached_property
    def w_shape(self) -> tuple[int, ...]:
        return self.f, self.c_per_group, *self.kernel

    @cached_property
    def out_shape(self) -> tuple[int, ...]:
        """``(N, F, *out)``."""
        return self.n, self.f, *self.out

    def shapes(self) -> dict[str, tuple[int, ...]]:
        """Every array of the layer by name: x, w, b, out, and the gradients dout, dx, dw, db."""
        return dict(self._shapes)

    @cached_property
    def _shapes(self) -> dict[str, tuple[int, ...]]:
        # Made once: every call of the service's operations checks its arrays against it.
        return array_shapes(self.x_shape, self.w_shape, self.out_shape)

    @cached_property
    def padded(self) -> tuple[int, ...]:
        return tuple(n + sum(p) for n, p in zip(self.size, self.pads, strict=True))

    @cached_property
    def is_padded(self) -> bool:
        return any(any(p) for p in self.pads)

    @cached_property
    def c_per_group(self) -> int:
        return self.c // self.groups

    @cached_property
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

    @cached_property
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
            p - span(o, s, d, k)
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

    def planar(self) -> ConvGeometry:
        """The planar convolution the im2col passes compute for this one, at its largest: a
        line is a plane one pixel high, a volume its depth slices stacked along the batch."""
        return self if self.rank == 2 else self._plane

    @cached_property
    def _plane(self) -> ConvGeometry:
        # Made once: the selector and the run both ask a line's pass for its plane.
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
