"""Arrays of every dtype the engine takes, for tests: random numbers, complex ones with a
random imaginary part too, half-precision ones rounded from float64."""

from __future__ import annotations

import ml_dtypes
import numpy as np

DTYPES = ("float16", "bfloat16", "float32", "float64", "complex64", "complex128")
REAL_DTYPES = DTYPES[:4]


def dtype_of(name: str) -> np.dtype:
    return np.dtype(ml_dtypes.bfloat16) if name == "bfloat16" else np.dtype(name)


def sample(rng: np.random.Generator, shape: tuple[int, ...], dtype: str) -> np.ndarray:
    """Standard normal numbers of ``shape`` in ``dtype``."""
    values = rng.standard_normal(shape)
    if dtype.startswith("complex"):
        values = values + 1j * rng.standard_normal(shape)
    return values.astype(dtype_of(dtype))


def as_float64(array: np.ndarray) -> np.ndarray:
    """The exact values of an array of any of the dtypes, as float64 or complex128."""
    return array.astype(np.complex128 if array.dtype.kind == "c" else np.float64)
