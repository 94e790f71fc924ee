"""Parsing of a layer's hyperparameters and array shapes into checked tuples, one per axis.

Every message names the field and the numbers and says what to change. Sizes computed from
the checked values live in :mod:`.sizes`.
"""

from __future__ import annotations

import numbers
from collections.abc import Sequence
from typing import Literal, TypeAlias

from .._errors import ShapeError
from .axis import Sides, span

__all__ = [
    "AXES",
    "KERNEL",
    "OUTPUT",
    "SPATIAL",
    "IntOrTuple",
    "Padding",
    "PaddingMode",
    "Rounding",
    "as_int",
    "check_choice",
    "check_groups",
    "check_ranks",
    "check_transposed_channels",
    "explicit_padding",
    "layer_shape",
    "normalize_padding",
    "per_axis",
]

IntOrTuple: TypeAlias = int | Sequence[int]
# An int, one per axis, ((begin, end), ...) per axis, or a word.
Padding: TypeAlias = IntOrTuple | Sequence[Sequence[int]] | Literal["same", "same_lower", "valid"]
PaddingMode: TypeAlias = Literal["zeros", "reflect", "replicate", "circular"]
Rounding: TypeAlias = Literal["exact", "floor"]

AXES = {1: ("length",), 2: ("height", "width"), 3: ("depth", "height", "width")}
SPATIAL = {1: "L", 2: "H, W", 3: "D, H, W"}
KERNEL = {1: "K", 2: "KH, KW", 3: "KD, KH, KW"}
OUTPUT = {1: "L_out", 2: "H_out, W_out", 3: "D_out, H_out, W_out"}
_PLURAL = {1: "an integer", 2: "a pair of integers", 3: "a triple of integers"}
_NAMES = {1: "(length)", 2: "(height, width)", 3: "(depth, height, width)"}


def as_int(value: object, field: str, rank: int) -> int:
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
        values = (as_int(value, field, rank),) * rank
    elif len(value) == rank:  # type: ignore[arg-type]
        values = tuple(as_int(v, field, rank) for v in value)  # type: ignore[attr-defined]
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
    SAME_UPPER do: a total of ``max(span - size, 0)`` (see :func:`.axis.span`), the odd
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
                total = max(span(out, s, d, k) - n, 0)
                small, large = total // 2, total - total // 2
                sides.append((small, large) if padding == "same" else (large, small))
            return tuple(sides)
        raise ShapeError(
            f"padding must be an integer, {_PLURAL[max(rank, 2)]}, a pair of (before, after) "
            f'pairs, "same", "same_lower" or "valid", got {padding!r}',
            field="padding",
        )
    return explicit_padding(padding, rank)


def explicit_padding(padding: object, rank: int) -> tuple[Sides, ...]:
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
            begin, end = (as_int(v, "padding", rank) for v in side)
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


def check_choice(value: object, field: str, choices: tuple[str, ...]) -> str:
    if not isinstance(value, str) or value not in choices:
        raise ShapeError(
            f"{field} must be one of {', '.join(map(repr, choices))}, got {value!r}", field=field
        )
    return value


def layer_shape(
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


def check_ranks(x_shape: tuple[int, ...], w_shape: tuple[int, ...]) -> None:
    """The rank is x's: w must have as many spatial axes."""
    rank = len(x_shape) - 2
    if len(x_shape) != len(w_shape):
        raise ShapeError(
            f"w has shape {w_shape} ({len(w_shape) - 2} spatial axes) but x has shape {x_shape} "
            f"({rank}): a {rank}-D layer takes w of {rank + 2} axes ({KERNEL[rank]} last)",
            field="w",
        )


def check_groups(groups: int, x_shape: tuple[int, ...], f: int, c_per_group: int) -> None:
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


def check_transposed_channels(groups: int, c_in: int, w_in: int, c_out_per_group: int) -> None:
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
