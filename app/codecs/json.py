"""application/json: arrays as nested lists, typed tensors or base64 tensors.

Parsed by orjson; lists become arrays in one NumPy call, never one pydantic check per float.
Hyperparameters are fields of the same object, beside an optional ``dtype`` for the nested
lists.
"""

from __future__ import annotations

import binascii
import json as stdlib_json
import math
import re
import secrets
from functools import cache
from typing import Annotated, Any, Literal, get_args

import numpy as np
import orjson
import pybase64
from pydantic import BaseModel, ConfigDict, Field, create_model

from app.errors import BadRequest, InvalidInput, brief
from app.schemas import DType, Hyperparameters, camel
from convengine import Cost, Operation

from .base import (
    ANSWER_OVERHEAD,
    BFLOAT16,
    DTYPES,
    PIECE,
    Budget,
    Codec,
    Decoded,
    Fields,
    Pieces,
    TensorStyle,
    check_names,
    float_dtype,
    shape_of,
)

__all__ = ["CODEC", "MEDIA_TYPE", "array_from_lists", "decode", "encode", "wire_model"]

MEDIA_TYPE = "application/json"

# Nested lists carry real numbers only, and never an empty axis (their shape would be lost).
NestedDType = Literal["float16", "bfloat16", "float32", "float64"]
NESTED_DTYPES: tuple[str, ...] = get_args(NestedDType)
_TYPED_KEYS = {"shape", "dtype", "data"}
_B64_KEYS = {"shape", "dtype", "b64"}


def decode(
    body: bytes, operation: Operation, query: Fields, budget: Budget, options: Fields
) -> Decoded:
    set_aside = _set_aside(body, budget.remaining)
    if set_aside is not None:
        skeleton, payloads = set_aside
        try:
            document = orjson.loads(skeleton)
        except orjson.JSONDecodeError:
            document = None
        if _all_in_tensors(document, operation, payloads):
            return _decoded(document, operation, budget, payloads)
    # No base64 set aside, or some of it outside the tensors, or a body that is not JSON:
    # the whole body parsed as is, so that every error reads as it always has.
    return _decoded(parse_object(body), operation, budget, {})


def parse_object(body: bytes) -> dict[str, Any]:
    """A JSON body's top-level object, or the refusal every JSON request gets."""
    try:
        document = orjson.loads(body)
    except orjson.JSONDecodeError as exc:
        document = _lenient(body, exc)
    return _object(document)


def _object(document: object) -> dict[str, Any]:
    if not isinstance(document, dict):
        raise InvalidInput(
            f"the body must be a JSON object with the arrays and hyperparameters, "
            f"got a JSON {type(document).__name__}",
            type="model_type",
        )
    return document


def _decoded(
    document: object, operation: Operation, budget: Budget, payloads: dict[str, bytes]
) -> Decoded:
    document = _object(document)
    default_dtype = default_dtype_of(document)
    raw = {key: document.pop(key) for key in operation.inputs if key in document}
    for name in operation.optional:  # an explicit null is an optional array left out
        if name in raw and raw[name] is None:
            del raw[name]
    check_names(raw, operation)
    arrays, styles = {}, {}
    for name, value in raw.items():
        arrays[name], styles[name] = _tensor(value, name, default_dtype, budget, payloads)
    # The answer imitates the style of x, the layer's input.
    return Decoded(arrays, document, styles.get("x", next(iter(styles.values()))))


# --- base64 set aside before parsing ---------------------------------------------------------
#
# orjson copies a string's every byte into a new str (most of a b64 body), which then is
# decoded into a third copy. Instead, the text of each "b64" string is decoded straight from
# the body, and the body is parsed with a short marker in its place. The swap cannot change
# what the document means: a span between two quotes that is nothing but base64 characters is
# either a string's whole text, or sits where JSON is invalid with any text in its place.
# The markers must then turn up exactly where tensors' "b64" are read; otherwise, or if any
# span is not plain base64, the body is parsed as is.

_B64_VALUE = re.compile(rb'"b64"[ \t\n\r]*:[ \t\n\r]*"')
_MAX_SET_ASIDE = 16  # occurrences of "b64" looked at: a request holds a few tensors
# Bytes of an answer's array encoded at a time: a multiple of 3, so that the pieces' base64
# joins without padding in between, and whose base64 is one PIECE.
_B64_CHUNK = PIECE // 4 * 3


def _set_aside(body: bytes, budget: int) -> tuple[bytes, dict[str, bytes]] | None:
    """The body with each "b64" string's text swapped for a marker, and each marker's bytes.

    Decoded before the tensors are charged to the budget, so never beyond ``budget`` bytes
    in all: a body whose base64 would exceed it is parsed as is, and refused as before.
    """
    view, nonce = memoryview(body), secrets.token_hex(8)
    pieces: list[bytes | memoryview] = []
    payloads: dict[str, bytes] = {}
    kept, found = 0, body.find(b'"b64"')
    for _ in range(_MAX_SET_ASIDE):
        if found < 0:
            break
        value = _B64_VALUE.match(body, found)
        if value is None:
            found = body.find(b'"b64"', found + 1)
            continue
        end = body.find(b'"', value.end())
        budget -= (end - value.end()) // 4 * 3
        if end < 0 or budget < 0:
            return None
        try:
            payload = pybase64.b64decode(view[value.end() : end], validate=True)
        except (binascii.Error, ValueError):
            return None
        marker = f"{nonce}{len(payloads)}"
        payloads[marker] = payload
        pieces += (view[kept : value.end()], marker.encode())
        kept, found = end, body.find(b'"b64"', end + 1)
    else:
        if found >= 0:
            return None
    if not payloads:
        return None
    pieces.append(view[kept:])
    return b"".join(pieces), payloads


def _all_in_tensors(document: object, operation: Operation, payloads: dict[str, bytes]) -> bool:
    """Whether every marker is the "b64" of a tensor, the only place they are read."""
    if not isinstance(document, dict):
        return False
    placed = 0
    for name in operation.inputs:
        value = document.get(name)
        if isinstance(value, dict) and value.get("b64") in payloads:
            placed += 1
    return placed == len(payloads)


def default_dtype_of(document: dict[str, Any]) -> np.dtype:
    """The dtype of arrays sent without one (as nested lists), taken out of ``document``."""
    return _default_dtype(document.pop("dtype", "float64"))


def _default_dtype(declared: object) -> np.dtype:
    if declared in ("complex64", "complex128"):
        raise InvalidInput(
            f"dtype {declared}: nested lists cannot carry complex numbers; send each array as "
            f'{{"shape", "dtype": "{declared}", "data"}} (real and imaginary parts interleaved) '
            f'or {{"shape", "dtype", "b64"}}',
            loc=("body", "dtype"),
            type="literal_error",
        )
    if declared not in NESTED_DTYPES:
        raise InvalidInput(
            f"dtype must be one of {', '.join(NESTED_DTYPES)} (the dtype of arrays sent as "
            f"nested lists), got {brief(declared, 40)}",
            loc=("body", "dtype"),
            type="literal_error",
        )
    return DTYPES[str(declared)]


def _lenient(body: bytes, error: orjson.JSONDecodeError) -> Any:
    """The body parsed by the standard library, which reads NaN, Infinity and 1e400.

    Only for bodies orjson refused: such numbers are then refused by name, as numbers JSON
    cannot carry, instead of as malformed JSON.
    """
    try:
        return stdlib_json.loads(body)
    except (ValueError, RecursionError):
        raise BadRequest(f"the body is not valid JSON: {error}") from error


def _tensor(
    value: object, name: str, default_dtype: np.dtype, budget: Budget, payloads: dict[str, bytes]
) -> tuple[np.ndarray, TensorStyle]:
    if isinstance(value, list):
        array = array_from_lists(value, name, default_dtype, ("body", name))
        if array.size == 0:
            raise InvalidInput(
                f"{name} is an empty nested list: nested lists cannot carry an empty axis (an "
                f"empty batch's shape is lost); send {name} as {{shape, dtype, data}} or "
                f"{{shape, dtype, b64}}",
                loc=("body", name),
            )
        budget.take(array.nbytes, name)
        return array, "nested"
    if isinstance(value, dict) and set(value) == _TYPED_KEYS:
        return _typed(value, name, budget), "typed"
    if isinstance(value, dict) and set(value) == _B64_KEYS:
        return _from_b64(value, name, budget, payloads), "b64"
    raise InvalidInput(
        f"{name} must be a nested list of numbers, {{shape, dtype, data}} or "
        f"{{shape, dtype, b64}}, got {_describe(value)}",
        loc=("body", name),
        type="tensor_type",
    )


def _typed(value: dict[str, Any], name: str, budget: Budget) -> np.ndarray:
    """A typed tensor: flat row-major data, a complex number as its real and imaginary
    parts one after the other (the array's view as real numbers)."""
    shape = shape_of(value["shape"], name)
    dtype = float_dtype(value["dtype"], name, ("body", name, "dtype"))
    budget.take(math.prod(shape) * dtype.itemsize, name)
    if not isinstance(value["data"], list):
        raise InvalidInput(f"{name}.data must be a list of numbers", loc=("body", name, "data"))
    parts = 2 if dtype.kind == "c" else 1
    number = np.dtype(f"f{dtype.itemsize // parts}") if parts == 2 else dtype
    flat = array_from_lists(value["data"], name, number, ("body", name, "data"))
    needed = math.prod(shape) * parts
    if flat.size != needed or flat.ndim != 1:
        each = f" of {dtype.name}, each its real and imaginary parts," if parts == 2 else ""
        raise InvalidInput(
            f"{name}.data holds {flat.size} numbers but shape {list(shape)}{each} needs "
            f"{needed} in a flat list",
            loc=("body", name, "data"),
        )
    return (flat.view(dtype) if parts == 2 else flat).reshape(shape)


def _describe(value: object) -> str:
    if isinstance(value, dict):
        return f"an object with keys {sorted(value)[:8]}"
    return f"a JSON {type(value).__name__}"


def array_from_lists(
    value: list[Any], name: str, dtype: np.dtype, loc: tuple[str, ...]
) -> np.ndarray:
    try:
        array = np.array(value)
    except (ValueError, TypeError, OverflowError) as exc:
        raise InvalidInput(
            f"{name} is not a rectangular array of numbers: nested lists must all have the "
            f"same length at each depth ({str(exc).split('.')[0]})",
            loc=loc,
        ) from exc
    kind = array.dtype.kind
    if kind in "iuf" and _holds_booleans(value):
        kind = "b"  # NumPy reads [1, true] as [1, 1]: a boolean is not a number here
    if kind not in "iuf":
        what = {"b": "true/false", "U": "strings", "O": "nulls, objects or huge integers"}
        raise InvalidInput(
            f"{name} must hold only numbers, found {what.get(kind, 'no numbers')}",
            loc=loc,
            type="dtype_error",
        )
    with np.errstate(over="ignore"):
        array = array.astype(dtype, copy=False)
    if not np.isfinite(array).all():
        raise InvalidInput(
            f"{name} holds NaN, Infinity or a number too large for {dtype.name}: JSON numbers "
            f"cannot carry them (send b64 tensors or .npy/.npz for such values)",
            loc=loc,
            type="non_finite",
        )
    return array


def _holds_booleans(value: list[Any]) -> bool:
    """Whether a list NumPy read as numbers holds true or false.

    Once NumPy has read the list as numbers, its only non-numbers can be booleans, and the
    JSON text of numbers has no "t" and no "f": one C-speed pass, not one check per element.
    """
    text = orjson.dumps(value)
    return b"t" in text or b"f" in text


def _from_b64(
    value: dict[str, Any], name: str, budget: Budget, payloads: dict[str, bytes]
) -> np.ndarray:
    shape = shape_of(value["shape"], name)
    dtype = float_dtype(value["dtype"], name, ("body", name, "dtype"))
    nbytes = math.prod(shape) * dtype.itemsize
    budget.take(nbytes, name)
    text = value["b64"]
    if not isinstance(text, str):
        raise InvalidInput(f"{name}.b64 must be a base64 string", loc=("body", name, "b64"))
    raw = payloads.get(text)
    if raw is None:
        try:
            raw = pybase64.b64decode(text, validate=True)
        except (binascii.Error, ValueError) as exc:
            raise InvalidInput(
                f"{name}.b64 is not valid base64: {exc}", loc=("body", name, "b64")
            ) from exc
    if len(raw) != nbytes:
        raise InvalidInput(
            f"{name}.b64 decodes to {len(raw)} bytes but shape {list(shape)} of {dtype.name} "
            f"needs {nbytes}",
            loc=("body", name, "b64"),
        )
    little = np.frombuffer(raw, dtype=dtype.newbyteorder("<")).reshape(shape)
    return little.astype(dtype, copy=False)


def encode(outputs: dict[str, np.ndarray], style: TensorStyle) -> Pieces:
    """The outputs as a JSON object, each tensor in ``style`` (binary requests: nested).

    Complex numbers and empty arrays, which nested lists cannot carry, are answered as
    typed tensors."""
    document: dict[str, Any] = {}
    if style in ("nested", "file") and any(_not_nested(a) for a in outputs.values()):
        style = "typed"
    payloads: dict[str, np.ndarray] = {}
    nonce = secrets.token_hex(8)
    for name, array in outputs.items():
        if style == "b64":
            # A marker stands in for the base64 until orjson has written the rest, so that
            # it does not copy and escape-scan megabytes it would write out unchanged.
            marker = f"{nonce}{len(payloads)}"
            payloads[marker] = np.ascontiguousarray(array, dtype=array.dtype.newbyteorder("<"))
            document[name] = {"shape": list(array.shape), "dtype": array.dtype.name, "b64": marker}
            continue
        array = np.ascontiguousarray(array)
        if not np.isfinite(array).all():
            raise InvalidInput(
                f"the result {name} holds NaN or Infinity, which JSON numbers cannot carry: "
                f"send b64 tensors or ask for application/x-npz",
                loc=("body",),
                type="non_finite_result",
            )
        if style == "typed":
            document[name] = {
                "shape": list(array.shape),
                "dtype": array.dtype.name,
                "data": _numbers(array).ravel(),
            }
        else:
            document[name] = _numbers(array)
    if style in ("nested", "file"):
        document["dtype"] = next(iter(outputs.values())).dtype.name
    return _put_back(orjson.dumps(document, option=orjson.OPT_SERIALIZE_NUMPY), payloads)


def _not_nested(array: np.ndarray) -> bool:
    return array.dtype.kind == "c" or array.size == 0


def _numbers(array: np.ndarray) -> np.ndarray:
    """What orjson writes of an array: a complex one as its real view (each number's real
    and imaginary parts), a bfloat16 one widened to float32 (exactly)."""
    if array.dtype.kind == "c":
        return array.view(f"f{array.dtype.itemsize // 2}")
    return array.astype(np.float32) if array.dtype == BFLOAT16 else array


def _put_back(text: bytes, payloads: dict[str, np.ndarray]) -> Pieces:
    """``text`` with each marker replaced by its array's base64, which JSON carries as it is:
    the pieces of text between the markers, and the base64 a piece (PIECE bytes) at a time."""
    if not payloads:
        return [text]
    pieces: Pieces = []
    kept = 0
    for marker, array in payloads.items():
        at = text.index(marker.encode(), kept)
        pieces.append(text[kept:at])
        raw = array.reshape(-1).view(np.uint8).data
        steps = range(0, len(raw), _B64_CHUNK)
        pieces += (pybase64.b64encode(raw[start : start + _B64_CHUNK]) for start in steps)
        kept = at + len(marker)
    pieces.append(text[kept:])
    return pieces


# --- the OpenAPI document ------------------------------------------------------------------

NestedList = list[Any]


class TypedTensor(BaseModel):
    """A tensor in the inference protocol's layout: flat row-major data with its shape; a
    complex number as its real and imaginary parts, one after the other."""

    model_config = ConfigDict(extra="forbid")
    shape: list[Annotated[int, Field(ge=0)]]
    dtype: DType
    data: list[float]


class B64Tensor(BaseModel):
    """A tensor as base64 of its little-endian row-major bytes."""

    model_config = ConfigDict(extra="forbid")
    shape: list[Annotated[int, Field(ge=0)]]
    dtype: DType
    b64: str


Tensor = NestedList | TypedTensor | B64Tensor


class _Options(BaseModel):
    model_config = ConfigDict(extra="forbid")
    dtype: NestedDType = Field(
        "float64",
        description="dtype of arrays sent as nested lists (typed tensors carry their own); "
        "nested lists carry neither complex numbers nor empty axes",
    )


@cache
def wire_model(operation: Operation) -> type[BaseModel]:
    """The JSON body of ``operation``, as the OpenAPI document shows it."""
    fields: dict[str, Any] = {
        name: (
            Tensor | None if name in operation.optional else Tensor,
            Field(
                None if name in operation.optional else ..., description=str(operation.arrays[name])
            ),
        )
        for name in operation.inputs
    }
    listed = Hyperparameters.model_fields
    for name in sorted(operation.hyperparameters):
        fields[name] = (listed[name].annotation, listed[name])
    model: type[BaseModel] = create_model(
        f"{camel(operation.name)}JSON",
        __base__=_Options,
        __doc__=f"POST {operation.path} as JSON: every tensor a nested list, a typed tensor "
        "or a b64 tensor.",
        **fields,
    )
    return model


def _examples(operation: Operation) -> dict[str, Any]:
    nested = dict(operation.example)
    arrays = {
        name: np.asarray(nested[name], np.float32) for name in operation.inputs if name in nested
    }
    hyper = {key: value for key, value in nested.items() if key not in arrays}
    typed = {
        name: {"shape": list(a.shape), "dtype": "float32", "data": a.ravel().tolist()}
        for name, a in arrays.items()
    }
    b64 = {
        name: {
            "shape": list(a.shape),
            "dtype": "float32",
            "b64": pybase64.b64encode_as_string(a.astype("<f4").tobytes()),
        }
        for name, a in arrays.items()
    }
    return {
        "nested lists": {"value": nested},
        "typed tensors": {"value": {**typed, **hyper}},
        "base64 tensors": {"value": {**b64, **hyper}},
    }


def _request_doc(operation: Operation) -> dict[str, Any]:
    return {
        "schema": {"$ref": f"#/components/schemas/{wire_model(operation).__name__}"},
        "examples": _examples(operation),
    }


def _response_doc(operation: Operation) -> dict[str, Any]:
    return {
        "schema": {
            "type": "object",
            "description": f"{', '.join(operation.outputs)}, each tensor in the style of x",
        }
    }


def _answer_bytes(cost: Cost) -> int:
    # Up to 24 characters a number (two for a complex element), in orjson's growing buffer.
    return 32 * max(cost.output_elements, cost.output_numbers) + ANSWER_OVERHEAD


CODEC = Codec(
    MEDIA_TYPE,
    decode=decode,
    encode=encode,
    request_doc=_request_doc,
    response_doc=_response_doc,
    answer_bytes=_answer_bytes,
)
