"""The engine's dtype rule, applied to every array that comes in.

The computation, the output and every gradient take x's dtype, float32 or float64; w, b and
dout are converted to it (float to float only). Any other dtype is a DTypeError: the engine
never guesses how an integer image should be scaled.
"""

from __future__ import annotations

import numpy as np
from numpy.typing import ArrayLike, DTypeLike

from ._errors import DTypeError, ShapeError

__all__ = ["as_float_array", "as_float_dtype"]

_FLOAT_DTYPES = (np.dtype(np.float32), np.dtype(np.float64))


def as_float_array(value: ArrayLike, field: str, dtype: np.dtype | None = None) -> np.ndarray:
    """``value`` as a float32 or float64 array, converted to ``dtype`` when one is given."""
    try:
        array = np.asarray(value)
    except (TypeError, ValueError) as exc:
        raise ShapeError(
            f"{field} is not a rectangular array of numbers: {exc}", field=field
        ) from exc
    as_float_dtype(array.dtype, field)
    return array if dtype is None else array.astype(dtype, copy=False)


def as_float_dtype(dtype: DTypeLike, field: str) -> np.dtype:
    """``dtype`` if the engine computes in it (float32 or float64), else a DTypeError."""
    try:
        checked = np.dtype(dtype)
    except TypeError as exc:
        raise DTypeError(f"{field} has no dtype NumPy knows: {dtype!r:.40}", field=field) from exc
    if checked not in _FLOAT_DTYPES:
        raise DTypeError(
            f"{field} has dtype {checked}; the engine computes in float32 or float64: "
            f"convert {field} to one of them",
            field=field,
        )
    return checked
