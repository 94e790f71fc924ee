"""What every wire format shares: the codec record, the decoded request, the byte budget,
the array-name checks and .npy reading."""

from __future__ import annotations

import io
import math
import struct
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from functools import lru_cache
from typing import Any, Literal, Protocol

import ml_dtypes
import numpy as np
from numpy.lib import format as npy_format

from app.errors import BadRequest, InvalidInput, PayloadTooLarge, brief
from convengine import Cost, Operation
from convengine.npy_header import MAX_HEADER, NpyHeader, parse_header

__all__ = [
    "ANSWER_OVERHEAD",
    "BFLOAT16",
    "DTYPES",
    "MAX_NDIM",
    "PIECE",
    "Announced",
    "Budget",
    "Codec",
    "Decoded",
    "Decoder",
    "Encoder",
    "Fields",
    "Pieces",
    "TensorStyle",
    "check_known",
    "check_names",
    "file_dtype",
    "float_dtype",
    "npy_parts",
    "pieces_of",
    "read_npy",
    "readable",
    "shape_of",
]

# How the request sent x, which a JSON answer imitates: "file" arrays (.npy, .npz, the
# protocol's binary data) are answered as nested lists.
TensorStyle = Literal["nested", "typed", "b64", "file"]
MAX_NDIM = 8
# The dtypes arrays travel in, by their names (and the inference protocol's where it has
# them). NumPy has no bfloat16: ml_dtypes' is a NumPy dtype like the others, whose casts
# round to nearest even; a .npy of it is written with descr "<V2" (np.save does the same).
BFLOAT16: np.dtype = np.dtype(ml_dtypes.bfloat16)
DTYPES: dict[str, np.dtype] = {
    "float16": np.dtype(np.float16),
    "bfloat16": BFLOAT16,
    "float32": np.dtype(np.float32),
    "float64": np.dtype(np.float64),
    "complex64": np.dtype(np.complex64),
    "complex128": np.dtype(np.complex128),
}
_ALIASES = {"fp16": "float16", "bf16": "bfloat16", "fp32": "float32", "fp64": "float64"}
_LISTED = f"{', '.join(DTYPES)}"
# A .npy header's bytes at most: magic, version, length field and the longest header read.
_HEADER_BYTES = 12 + MAX_HEADER


@dataclass
class Decoded:
    """A request body turned into arrays and raw (not yet validated) hyperparameters.

    ``params_as_text``: the hyperparameters arrived as text (query, form fields, protocol
    parameters) and are read through their text forms.
    """

    arrays: dict[str, np.ndarray]
    params: dict[str, Any]
    style: TensorStyle
    param_location: Literal["body", "query", "parameters"] = "body"
    params_as_text: bool = False


# decode(body, operation, query, budget, media type options such as the multipart boundary)
# Text by name: the query string, or a media type's options (the multipart boundary).
Fields = Mapping[str, str]
Decoder = Callable[[bytes, Operation, Fields, "Budget", Fields], Decoded]
# An answer is made and sent as pieces of at most PIECE bytes, never joined into one buffer:
# a buffer of an answer's size is fresh memory (glibc maps every block over 4 MiB anew, see
# app.limits.memory), whose pages cost more to touch than the encoding itself (the mid
# forward's 12.8 MB .npz answer: 8 ms to join in the server), while pieces of 1 MiB reuse
# the heap's. The transport sends each piece as it is.
PIECE = 1 << 20
Pieces = list[bytes]
# encode(outputs, style of the request's tensors)
Encoder = Callable[[dict[str, np.ndarray], TensorStyle], Pieces]
OpenAPIEntry = Callable[[Operation], dict[str, Any]]


class Announced(Protocol):
    """What a body says of its arrays before all of it has arrived: their shapes and dtypes,
    read from headers as the bytes are fed, and what else it sent (its hyperparameters).

    ``lost``: the bytes could not be followed (the decoder names why once the body is whole);
    ``ended``: every array has been announced.
    """

    specs: dict[str, tuple[tuple[int, ...], np.dtype]]
    lost: bool
    ended: bool

    @property
    def sent(self) -> Decoded: ...

    def feed(self, piece: bytes | memoryview) -> None: ...


def _everything(operation: Operation) -> bool:
    return True


# Bytes of an answer besides its numbers, at most: a few arrays' .npy headers, zip headers and
# directory, or JSON's names and shapes.
ANSWER_OVERHEAD = 4096


def _file_and_copy(cost: Cost) -> int:
    # A binary answer holds the file written, then the copy sent out.
    return 2 * (cost.output_bytes + ANSWER_OVERHEAD)


@dataclass(frozen=True)
class Codec:
    """One wire format: how it reads requests and writes answers, and how the OpenAPI shows it.

    ``answers`` tells which operations' outputs the format can carry; ``answer_bytes`` what
    its encoded answer holds at most, beside the outputs themselves; ``query_parameters``
    marks a format whose hyperparameters travel in the query string; ``announced(operation,
    query, options)`` reads the arrays' shapes from a body as it arrives, for a format that
    says them before the data.
    """

    media_type: str
    decode: Decoder | None = None
    encode: Encoder | None = None
    request_doc: OpenAPIEntry | None = None
    response_doc: OpenAPIEntry | None = None
    answers: Callable[[Operation], bool] = _everything
    answer_bytes: Callable[[Cost], int] = _file_and_copy
    query_parameters: bool = False
    announced: Callable[[Operation, Fields, Fields], Announced] | None = None


@dataclass
class Budget:
    """The decoded bytes a request may still claim, checked before anything is allocated.

    Each claim is also memory: ``allowance`` bytes were reserved for the arrays with the body
    (app.limits.body.holding); beyond them ``reserve(nbytes, name)`` takes more from the
    process's memory budget, or refuses.
    """

    remaining: int
    allowance: int = 0
    reserve: Callable[[int, str], None] | None = None
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
        beyond = nbytes - self.allowance
        self.allowance = max(0, -beyond)
        if beyond > 0 and self.reserve is not None:
            self.reserve(beyond, name)


def check_known(name: str, operation: Operation) -> None:
    """422 for an array the operation does not take."""
    if name not in operation.inputs:
        raise InvalidInput(
            f"unknown array {name[:40]!r}: this endpoint takes {', '.join(operation.inputs)}",
            loc=("body", name[:40]),
            type="extra_forbidden",
        )


def check_names(present: Mapping[str, object], operation: Operation) -> None:
    """422 for a missing required array or an array the operation does not take."""
    for name in present:
        check_known(name, operation)
    for name in operation.required:
        if name not in present:
            raise InvalidInput(f"array {name!r} is required", loc=("body", name), type="missing")


def shape_of(value: object, name: str) -> tuple[int, ...]:
    """A declared shape: a list of at most MAX_NDIM non-negative ints."""
    if (
        not isinstance(value, list)
        or len(value) > MAX_NDIM
        or not all(isinstance(d, int) and not isinstance(d, bool) and d >= 0 for d in value)
    ):
        raise InvalidInput(
            f"{name}.shape must be a list of at most {MAX_NDIM} non-negative integers, "
            f"got {brief(value, 100)}",
            loc=("body", name, "shape"),
        )
    return tuple(value)


def float_dtype(value: object, name: str, loc: tuple[str, ...]) -> np.dtype:
    """A dtype the service takes (:data:`DTYPES`) from its name ("float16", "FP16", ...)."""
    if isinstance(value, str):
        key = value.lower()
        key = _ALIASES.get(key, key)
        if key in DTYPES:
            return DTYPES[key]
    raise InvalidInput(
        f"{name} has dtype {brief(value, 40)}; the service takes {_LISTED}",
        loc=loc,
        type="dtype_error",
    )


def file_dtype(dtype: np.dtype | None) -> np.dtype | None:
    """The dtype of a .npy file's data, if the service takes it: "<f2", "<f4", "<f8",
    "<c8", "<c16" (either byte order), and "V2" for bfloat16 (what np.save writes for an
    ml_dtypes.bfloat16 array: .npy has no name for it)."""
    if dtype is None:
        return None
    if dtype.kind == "V" and dtype.itemsize == 2 and dtype.names is None:
        return BFLOAT16
    known = dtype.kind in "fc" and dtype.newbyteorder("=").name in DTYPES
    return dtype if known else None


def readable(header: NpyHeader) -> tuple[tuple[int, ...], np.dtype] | None:
    """A .npy header's shape and dtype if :func:`read_npy` reads its array; else None (it
    names why)."""
    dtype = file_dtype(header.dtype)
    if dtype is None or len(header.shape) > MAX_NDIM:
        return None
    return header.shape, dtype


def read_npy(data: bytes | memoryview, name: str, budget: Budget | None) -> np.ndarray:
    """A .npy file's array, checked from its header before any data is read.

    ``budget`` is charged for the array unless the caller already charged for ``data``. The
    array is a read-only view of ``data`` when its byte order is native and its order C.

    Only the dtypes of :func:`file_dtype` are accepted; never pickles.
    """
    try:
        header, dtype = _parsed(_header_bytes(data))
    except (ValueError, UnicodeDecodeError, struct.error) as exc:
        raise BadRequest(f"{name} is not a valid .npy file: {exc}", loc=("body", name)) from exc
    shape, fortran_order = header.shape, header.fortran_order
    if dtype is None or len(shape) > MAX_NDIM:
        raise InvalidInput(
            f"{name} has dtype {_dtype_name(header.dtype)} and {len(shape)} dimensions; "
            f"the service takes arrays of {_LISTED} (bfloat16 as descr '<V2', as np.save "
            f"writes ml_dtypes.bfloat16)",
            loc=("body", name),
            type="dtype_error",
        )
    count = math.prod(shape)
    if budget is not None:
        budget.take(count * dtype.itemsize, name)
    available = len(data) - header.data_offset
    if available != count * dtype.itemsize:
        raise BadRequest(
            f"{name} is a truncated or corrupt .npy file: its header announces shape {shape} "
            f"({count * dtype.itemsize} bytes of {dtype.name}) but {available} bytes follow",
            loc=("body", name),
        )
    array = np.frombuffer(data, dtype=dtype, count=count, offset=header.data_offset)
    array = array.reshape(shape, order="F" if fortran_order else "C")
    return np.ascontiguousarray(array, dtype=dtype.newbyteorder("="))


def _header_bytes(data: bytes | memoryview) -> bytes:
    """A .npy file's magic, version, length and header, as its length field says (or its
    first bytes, for :func:`parse_header` to refuse)."""
    head = bytes(data[:12])
    if len(head) == 12 and head[6] in (1, 2, 3):
        length = int.from_bytes(head[8:10] if head[6] == 1 else head[8:12], "little")
        end = (10 if head[6] == 1 else 12) + length
        if length <= MAX_HEADER and end <= len(data):
            return bytes(data[:end])
    return bytes(data[:_HEADER_BYTES])


# A client sends the same few headers again and again (a training loop's batches): parsing
# one costs 20 us of a tiny request's few hundred. Bounded: 64 headers of at most ~10 KB.
@lru_cache(maxsize=64)
def _parsed(header: bytes) -> tuple[NpyHeader, np.dtype | None]:
    """The header, and its dtype if the service takes it (:func:`file_dtype`)."""
    parsed = parse_header(header)
    return parsed, file_dtype(parsed.dtype)


@lru_cache(maxsize=64)
def _npy_header(descr: str, fortran_order: bool, shape: tuple[int, ...]) -> bytes:
    """A .npy header (format 1.0), as NumPy writes it: the same shapes come back often."""
    header = io.BytesIO()
    fields = {"descr": descr, "fortran_order": fortran_order, "shape": shape}
    npy_format.write_array_header_1_0(header, fields)
    return header.getvalue()


def pieces_of(data: bytes | memoryview) -> Pieces:
    """``data`` as pieces of at most PIECE bytes: bytes that small as they are, else copies
    of its slices (a copy of 1 MiB lands in memory the heap has touched before)."""
    if isinstance(data, bytes) and len(data) <= PIECE:
        return [data]
    view = memoryview(data).cast("B")
    return [view[start : start + PIECE].tobytes() for start in range(0, len(view), PIECE)]


def npy_parts(array: np.ndarray) -> tuple[bytes, memoryview]:
    """A .npy file of ``array`` in two parts: its header, and its data (C order, no copy when
    the array already is)."""
    array = np.ascontiguousarray(array)
    fields = npy_format.header_data_from_array_1_0(array)
    header = _npy_header(fields["descr"], fields["fortran_order"], fields["shape"])
    return header, array.reshape(-1).view(np.uint8).data


def _dtype_name(dtype: np.dtype | None) -> str:
    if dtype is None:
        return "structured (a list of fields)"
    return "object" if dtype.hasobject else dtype.name  # as users write it: int64, float16
