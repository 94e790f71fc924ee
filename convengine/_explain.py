"""A shapes-only dry run: what a call would answer and cost, without any array.

``explain("forward", x=(8, 3, 32, 32), w=(16, 3, 3, 3), stride=2, padding=1)`` plans the call
as the call itself would (the same checks, so the same refusals) and answers the shape and
dtype of every output, the arithmetic and the memory the call holds at most. Clients size
shards with it; people porting a model ask it first.
"""

from __future__ import annotations

from collections.abc import Sequence
from numbers import Integral
from typing import Any

import numpy as np
from numpy.typing import DTypeLike

from ._errors import ShapeError
from ._operations import OPERATIONS, Explanation, Operation

__all__ = ["explain"]


def explain(
    operation: str | Operation, /, *, dtype: DTypeLike | None = None, **arguments: Any
) -> Explanation:
    """What ``operation`` (a name of :data:`OPERATIONS`, or one of its records) would answer for
    inputs of these shapes, and what it would cost, from shapes alone.

    Inputs by their names (``x``, ``w``, ``b``, ``dout``): a shape, or anything with a
    ``shape`` (an array, a tensor). The dtype is ``dtype``, else x's own if x has one, else
    float64; every array takes x's, as in the call. The other keyword arguments are the
    operation's hyperparameters. Refused exactly as the call would be: ShapeError,
    DTypeError; TypeError for a missing input or an unknown argument.
    """
    record = _operation(operation)
    unknown = sorted(set(arguments) - set(record.inputs) - record.hyperparameters)
    if unknown:
        known = ", ".join([*record.inputs, *sorted(record.hyperparameters)])
        raise TypeError(f"{record.name} takes no argument {unknown[0]!r}: it takes {known}")
    missing = [name for name in record.required if arguments.get(name) is None]
    if missing:
        raise TypeError(f"{record.name} needs {', '.join(missing)}: give each its shape")
    inputs = {name: arguments[name] for name in record.inputs if arguments.get(name) is not None}
    hyper = {name: value for name, value in arguments.items() if name in record.hyperparameters}
    shapes = {name: _shape(value, name) for name, value in inputs.items()}
    geometry = record.plan(shapes, hyper)
    chosen = _dtype_of(inputs["x"]) if dtype is None else dtype
    return record.explain(geometry, chosen)


def _operation(operation: str | Operation) -> Operation:
    if isinstance(operation, Operation):
        return operation
    record = OPERATIONS.get(operation) if isinstance(operation, str) else None
    if record is None:
        raise TypeError(f"unknown operation {operation!r}: one of {', '.join(OPERATIONS)}")
    return record


def _shape(value: object, name: str) -> tuple[int, ...]:
    """A shape given as such, or an array's (anything with ``shape``), as non-negative ints."""
    shape = getattr(value, "shape", value)
    if isinstance(shape, str | bytes) or not isinstance(shape, Sequence):
        raise ShapeError(
            f"{name} must be a shape (a sequence of ints), got {value!r:.60}", field=name
        )
    dims = [d for d in shape if isinstance(d, Integral) and not isinstance(d, bool)]
    if len(dims) != len(shape) or any(int(d) < 0 for d in dims):
        raise ShapeError(
            f"{name} must be a shape of non-negative ints, got {tuple(shape)!r:.80}", field=name
        )
    return tuple(int(d) for d in dims)


def _dtype_of(value: object) -> DTypeLike:
    """An array's dtype, a tensor's by its name (``torch.float32``); float64 without one."""
    dtype: object = getattr(value, "dtype", None)
    if dtype is None:
        return np.float64
    try:
        return np.dtype(str(dtype))  # a NumPy dtype, or its name
    except TypeError:
        return str(dtype).rsplit(".", 1)[-1]
