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


# How far from the exactly rounded answer each dtype may be, in units of its own epsilon.
EPSILON = {
    "float16": 2.0**-10,
    "bfloat16": 2.0**-7,
    "float32": 2.0**-23,
    "float64": 2.0**-52,
    "complex64": 2.0**-23,
    "complex128": 2.0**-52,
}


def assert_rounded(got: np.ndarray, want: np.ndarray, dtype: str, scale: float) -> None:
    """got, in ``dtype``, within the dtype's rounding of the exact answer ``want``: one unit
    in the last place for the half types (their float32 sums rounded once), plus a few dozen
    epsilons of ``scale`` (the sum of the products' sizes) for the sums' own rounding."""
    assert got.dtype == dtype_of(dtype), (got.dtype, dtype)
    assert got.shape == want.shape, (got.shape, want.shape)
    error = np.abs(got.astype(want.dtype) - want)
    bound = EPSILON[dtype] * (np.abs(want) + 64 * scale)
    assert (error <= bound).all(), f"{dtype}: worst {error.max():.3g}, bound {bound.min():.3g}"
