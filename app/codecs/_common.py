"""What every wire format shares: the decoded request, the byte budget, and .npy reading."""

from __future__ import annotations

import io
import math
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any, Literal

import numpy as np
import orjson

from app.errors import BadRequest, InvalidInput, PayloadTooLarge

__all__ = [
    "ArrayNames",
    "Budget",
    "Decoded",
    "TensorStyle",
    "check_known",
    "check_names",
    "parse_param_text",
    "read_npy",
]

# How the request sent x, which the JSON answer imitates; "binary" arrays answer nested lists.
TensorStyle = Literal["nested", "typed", "b64", "binary"]
MAX_NDIM = 8
_NPY_MAX_HEADER = 10_000


@dataclass(frozen=True)
class ArrayNames:
    """The arrays one pass takes."""

    required: tuple[str, ...]
    optional: tuple[str, ...]

    @property
    def all(self) -> tuple[str, ...]:
        return self.required + self.optional


@dataclass
class Decoded:
    """A request body turned into arrays and raw (not yet validated) hyperparameters."""

    arrays: dict[str, np.ndarray]
    params: dict[str, Any]
    style: TensorStyle
    param_location: Literal["body", "query", "parameters"] = "body"


@dataclass
class Budget:
    """The decoded bytes a request may still claim, checked before anything is allocated."""

    remaining: int
    limit: int = field(init=False)

    def __post_init__(self) -> None:
        self.limit = self.remaining

    def take(self, nbytes: int, name: str) -> None:
        if nbytes > self.remaining:
            raise PayloadTooLarge(
                f"{name} would decode to {nbytes} bytes, beyond the {self.limit}-byte limit "
                f"for the arrays of one request",
                loc=("body", name),
            )
        self.remaining -= nbytes


def check_known(name: str, names: ArrayNames) -> None:
    """422 for an array the pass does not take."""
    if name not in names.all:
        raise InvalidInput(
            f"unknown array {name[:40]!r}: this endpoint takes {', '.join(names.all)}",
            loc=("body", name[:40]),
            type="extra_forbidden",
        )


def check_names(present: Mapping[str, object], names: ArrayNames) -> None:
    """422 for a missing required array or an array the pass does not take."""
    for name in present:
        check_known(name, names)
    for name in names.required:
        if name not in present:
            raise InvalidInput(f"array {name!r} is required", loc=("body", name), type="missing")


def parse_param_text(text: str) -> Any:
    """A hyperparameter sent as text (form field, query): "2", "1,2", "[1, 2]", "same"."""
    stripped = text.strip()
    if stripped.startswith("["):
        try:
            return orjson.loads(stripped)
        except orjson.JSONDecodeError:
            return text
    parts = [part.strip() for part in stripped.split(",")]
    if all(part.lstrip("-").isdigit() for part in parts):
        numbers = [int(part) for part in parts]
        return numbers[0] if len(numbers) == 1 else numbers
    return text


def shape_of(value: object, name: str) -> tuple[int, ...]:
    """A declared shape: a list of at most MAX_NDIM non-negative ints."""
    if (
        not isinstance(value, list)
        or len(value) > MAX_NDIM
        or not all(isinstance(d, int) and not isinstance(d, bool) and d >= 0 for d in value)
    ):
        raise InvalidInput(
            f"{name}.shape must be a list of at most {MAX_NDIM} non-negative integers, "
            f"got {str(value)[:100]}",
            loc=("body", name, "shape"),
        )
    return tuple(value)


def float_dtype(value: object, name: str, loc: tuple[str, ...]) -> np.dtype:
    """float32 or float64 from a name ("float32", "FP32", ...) or a NumPy dtype."""
    names = {"float32": np.float32, "fp32": np.float32, "float64": np.float64, "fp64": np.float64}
    if isinstance(value, str) and value.lower() in names:
        return np.dtype(names[value.lower()])
    raise InvalidInput(
        f"{name} has dtype {str(value)[:40]!r}; the service computes in float32 or float64",
        loc=loc,
        type="dtype_error",
    )


def read_npy(data: bytes, name: str, budget: Budget | None) -> np.ndarray:
    """A .npy file's array, checked from its header before any data is read.

    ``budget`` is charged for the array unless the caller already charged for ``data``.

    Only float32 and float64 (either byte order) are accepted; never pickles.
    """
    stream = io.BytesIO(data)
    try:
        version = np.lib.format.read_magic(stream)
        if version == (1, 0):
            header = np.lib.format.read_array_header_1_0(stream, max_header_size=_NPY_MAX_HEADER)
        elif version == (2, 0):
            header = np.lib.format.read_array_header_2_0(stream, max_header_size=_NPY_MAX_HEADER)
        else:
            raise ValueError(f"unsupported .npy format version {version}")
    except Exception as exc:  # numpy's header parser raises a zoo of types on hostile bytes
        raise BadRequest(f"{name} is not a valid .npy file: {exc}", loc=("body", name)) from exc
    shape, fortran_order, dtype = header
    if dtype.kind != "f" or dtype.itemsize not in (4, 8) or len(shape) > MAX_NDIM:
        raise InvalidInput(
            f"{name} has dtype {dtype.str if not dtype.hasobject else 'object'} and "
            f"{len(shape)} dimensions; the service takes float32 or float64 arrays",
            loc=("body", name),
            type="dtype_error",
        )
    count = math.prod(shape)
    if budget is not None:
        budget.take(count * dtype.itemsize, name)
    available = len(data) - stream.tell()
    if available != count * dtype.itemsize:
        raise BadRequest(
            f"{name} is a truncated or corrupt .npy file: its header announces shape {shape} "
            f"({count * dtype.itemsize} bytes of {dtype.name}) but {available} bytes follow",
            loc=("body", name),
        )
    array = np.frombuffer(data, dtype=dtype, count=count, offset=stream.tell())
    array = array.reshape(shape, order="F" if fortran_order else "C")
    return np.ascontiguousarray(array, dtype=dtype.newbyteorder("="))
