"""One call on the wire: its arrays and hyperparameters as a request, the answer as arrays.

Pure functions of the table of operations (:data:`convengine.OPERATIONS`) and httpx's
requests and responses; nothing here sends anything.
"""

from __future__ import annotations

import gzip
import io
import json
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any, Literal, NamedTuple, TypeAlias

import httpx
import numpy as np
from numpy.typing import ArrayLike

from .._operations import OPERATIONS, Operation
from .._shards import Limits, shard_arrays
from ..npy_header import load_npz

NPZ = "application/x-npz"
RETRY_AFTER_CAP = 30.0  # seconds: a longer Retry-After is waited out this long at most

IntOrTuple: TypeAlias = int | Sequence[int]
# An int, one per axis, ((begin, end), ...) per axis, or a word.
Padding: TypeAlias = IntOrTuple | Sequence[Sequence[int]] | Literal["same", "same_lower", "valid"]
PaddingMode: TypeAlias = Literal["zeros", "reflect", "replicate", "circular"]
Rounding: TypeAlias = Literal["exact", "floor"]

# The engine's defaults (``convengine.conv``'s keywords), which the service applies to a
# hyperparameter left out: a call leaves out those equal to them, so the query says only
# what the caller chose.
DEFAULTS: Mapping[str, object] = {
    "stride": 1,
    "padding": 0,
    "output_padding": 0,
    "dilation": 1,
    "groups": 1,
    "padding_mode": "zeros",
    "rounding": "exact",
}


class Gradients(NamedTuple):
    """The gradients of a loss w.r.t. the inputs of a (transposed) convolution."""

    dx: np.ndarray  # (N, C, *spatial)
    dw: np.ndarray  # as w
    db: np.ndarray  # (F,) for a convolution, (C_out,) for a transposed one


class ConvServiceError(Exception):
    """The service refused a request; ``detail`` is its list of ``{loc, msg, type}``."""

    def __init__(self, status_code: int, detail: list[dict[str, Any]]) -> None:
        messages = "; ".join(str(item.get("msg", item)) for item in detail)
        super().__init__(f"HTTP {status_code}: {messages}")
        self.status_code = status_code
        self.detail = detail


def _param(value: object) -> str:
    """A hyperparameter as the service reads it in the query: a word as is, else JSON text."""
    if isinstance(value, str):
        return value
    if isinstance(value, np.integer):
        value = int(value)
    if isinstance(value, tuple | list | np.ndarray):
        return json.dumps(np.asarray(value).tolist())
    return json.dumps(value)


def chosen(hyperparameters: Mapping[str, object]) -> dict[str, object]:
    """The hyperparameters that differ from the engine's defaults (as the query says them)."""
    return {
        name: value
        for name, value in hyperparameters.items()
        if name not in DEFAULTS or _param(value) != _param(DEFAULTS[name])
    }


def _as_sent(value: ArrayLike) -> np.ndarray:
    # Integer arrays travel as float64, as the service reads integer JSON lists.
    array = np.asarray(value)
    return array.astype(np.float64) if array.dtype.kind in "iu" else array


def operation(name: str) -> Operation:
    try:
        return OPERATIONS[name]
    except KeyError:
        raise AttributeError(
            f"the service has no operation {name!r}: it has {', '.join(OPERATIONS)}"
        ) from None


def named_arrays(op: Operation, args: tuple[ArrayLike | None, ...]) -> dict[str, np.ndarray]:
    """The call's arrays by name, checked for number and presence, as they will be sent."""
    if len(args) > len(op.inputs):
        raise TypeError(
            f"{op.name}() takes {len(op.inputs)} arrays ({', '.join(op.inputs)}), got {len(args)}"
        )
    named = dict(zip(op.inputs, args, strict=False))
    missing = [name for name in op.required if named.get(name) is None]
    if missing:
        raise TypeError(f"{op.name}() needs the array {missing[0]!r}")
    return {k: _as_sent(v) for k, v in named.items() if v is not None}


def _request(arrays: Mapping[str, np.ndarray], hyper: Mapping[str, object]) -> dict[str, Any]:
    """The keyword arguments of one POST: arrays as one .npz, hyperparameters in the query."""
    stream = io.BytesIO()
    np.savez(stream, allow_pickle=False, **arrays)
    return {
        "content": stream.getvalue(),
        "params": {key: _param(value) for key, value in hyper.items()},
        "headers": {"content-type": NPZ, "accept": NPZ},
    }


def encoded(request: dict[str, Any], api_key: str | None, compress: bool) -> dict[str, Any]:
    """``request`` with the key's header, and its body gzipped (gzipped answers asked for)."""
    headers = dict(request["headers"])
    if api_key is not None:
        headers["authorization"] = f"Bearer {api_key}"
    if compress:
        headers.update({"content-encoding": "gzip", "accept-encoding": "gzip"})
        request = {**request, "content": gzip.compress(request["content"], compresslevel=1)}
    return {**request, "headers": headers}


@dataclass(frozen=True)
class Call:
    """One logical call: its operation, arrays, hyperparameters and shards."""

    operation: Operation
    arrays: dict[str, np.ndarray]
    hyper: dict[str, object]
    parts: list[slice]

    def request(self, index: int) -> dict[str, Any]:
        arrays = shard_arrays(self.operation, self.arrays, self.parts[index])
        return _request(arrays, self.hyper)


def outputs(op: Operation, result: Mapping[str, np.ndarray]) -> Any:
    """One output as an array, several as a tuple in the operation's order."""
    values = tuple(result[name] for name in op.outputs)
    return values[0] if len(values) == 1 else values


def result(response: httpx.Response) -> dict[str, np.ndarray]:
    """The arrays of a 200 answer; any other raises :class:`ConvServiceError`."""
    if response.status_code != 200:
        try:
            detail = response.json()["detail"]
        except (ValueError, KeyError, TypeError):
            detail = [{"loc": [], "msg": response.text[:500], "type": "http"}]
        raise ConvServiceError(response.status_code, detail)
    # Not np.load: shards are read from several threads, and its header parser is not
    # thread-safe on CPython before 3.11.8 (gh-106905).
    return load_npz(response.content)


def retry_after(response: httpx.Response) -> float:
    try:
        return min(float(response.headers.get("retry-after", "1")), RETRY_AFTER_CAP)
    except ValueError:
        return 1.0


def limits(response: httpx.Response) -> Limits:
    """A replica's limits from its answer to ``GET /limits`` (none known from an older one)."""
    if response.status_code != 200:
        return Limits()
    try:
        return Limits.from_json(response.json())
    except (ValueError, TypeError):
        return Limits()
