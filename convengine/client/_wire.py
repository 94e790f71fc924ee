"""One call on the wire: its arrays and hyperparameters as a request, the answer as arrays.

Pure functions of the table of operations (:data:`convengine.OPERATIONS`) and httpx's
requests and responses; nothing here sends anything.
"""

from __future__ import annotations

import gzip
import io
import json
import math
import time
import zipfile
import zlib
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any, NamedTuple, cast

import httpx
import numpy as np
from numpy.typing import ArrayLike

from .._operations import OPERATIONS, ArraySpec, Explanation, Operation
from .._shards import Limits, shard_arrays
from ..npy_header import load_npz

NPZ = "application/x-npz"
RETRY_AFTER_CAP = 30.0  # seconds: a longer Retry-After is waited out this long at most

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
    """Every way a call fails, one type: the service refused it (``status_code``, and its
    ``detail``, a list of ``{loc, msg, type}``), or no usable answer came (``status_code``
    None): none in time (type "timeout"), none at all after the retries (type "transport",
    the transport's error chained), or one that is not what the call expects (type "answer":
    too large, not an archive of the expected arrays, shapes or dtypes)."""

    def __init__(self, status_code: int | None, detail: list[dict[str, Any]]) -> None:
        messages = "; ".join(str(item.get("msg", item)) for item in detail)
        where = f"HTTP {status_code}" if status_code is not None else "no usable answer"
        super().__init__(f"{where}: {messages}")
        self.status_code = status_code
        self.detail = detail


def failure(kind: str, message: str) -> ConvServiceError:
    """A call's failure without an answer from the service to report."""
    return ConvServiceError(None, [{"loc": [], "msg": message, "type": kind}])


# An answer is read as untrusted input, bounded by what the call expects: its arrays, plus
# per array its .npy header and zip entries, plus the archive's end; a refusal by its JSON.
ARCHIVE_BYTES = 4096
MEMBER_BYTES = 1024
REFUSAL_BYTES = 64 << 10
# A shard the client cannot plan (the service will refuse it, in a few bytes) that is answered
# all the same: bounded by this.
UNPLANNED_BYTES = 256 << 20


@dataclass(frozen=True)
class Expected:
    """What one shard's answer must hold: each output's shape and dtype (None: unknown)."""

    arrays: Mapping[str, tuple[tuple[int, ...], np.dtype]] | None

    @property
    def bound(self) -> int:
        """Bytes the answer may take, decoded."""
        if self.arrays is None:
            return UNPLANNED_BYTES
        data = sum(int(np.prod(shape)) * dtype.itemsize for shape, dtype in self.arrays.values())
        return ARCHIVE_BYTES + MEMBER_BYTES * len(self.arrays) + data

    @classmethod
    def of(
        cls, op: Operation, arrays: Mapping[str, np.ndarray], hyper: Mapping[str, object]
    ) -> Expected:
        """The outputs of ``op`` on ``arrays``, as the table plans them (the answer takes x's
        dtype), or unknown where the table refuses the call."""
        try:
            geometry = op.plan({name: a.shape for name, a in arrays.items()}, dict(hyper))
        except (ValueError, TypeError):  # the service answers with its own refusal
            return cls(None)
        shapes = op.shapes(geometry)
        dtype = arrays["x"].dtype if "x" in arrays else np.dtype(np.float64)
        return cls({name: (shapes[name], dtype) for name in op.outputs})

    def check(self, answer: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        """``answer`` if it holds exactly the expected arrays, shapes and dtypes."""
        if self.arrays is None:
            return answer
        if set(answer) != set(self.arrays):
            raise failure(
                "answer",
                f"the answer holds {sorted(answer)[:8]}, not the expected {sorted(self.arrays)}",
            )
        for name, (shape, dtype) in self.arrays.items():
            got = answer[name]
            if got.shape != shape or got.dtype != dtype:
                raise failure(
                    "answer",
                    f"the answer's {name} is {got.dtype.name} {got.shape}, not the expected "
                    f"{dtype.name} {shape}",
                )
        return answer


class BoundedBody:
    """An answer's body read piece by piece (raw, as it travels), decoded and refused as soon
    as it passes its bound or its deadline (``time.monotonic()`` seconds)."""

    def __init__(self, headers: httpx.Headers, bound: int, deadline: float) -> None:
        self.bound, self.deadline = bound, deadline
        declared = headers.get("content-length", "")
        if declared.isdigit() and int(declared) > bound and "content-encoding" not in headers:
            raise self._too_large(f"declares {declared}")
        coding = headers.get("content-encoding", "identity").strip().lower()
        if coding not in ("identity", "gzip", "deflate"):
            raise failure("answer", f"the answer is coded {coding[:20]!r}, which was not asked for")
        wbits = {"gzip": 16 + zlib.MAX_WBITS, "deflate": zlib.MAX_WBITS}.get(coding)
        self.inflater = None if wbits is None else zlib.decompressobj(wbits)
        self.pieces: list[bytes] = []
        self.size = 0

    def feed(self, raw: bytes) -> None:
        if time.monotonic() > self.deadline:
            raise failure("timeout", "the answer did not arrive within the call's timeout")
        if self.inflater is None:
            self._keep(raw)
            return
        while raw:
            # Never inflate more than the bound allows: a bomb stops at the bound.
            piece = self.inflater.decompress(raw, self.bound - self.size + 1)
            self._keep(piece)
            raw = self.inflater.unconsumed_tail

    def finish(self) -> bytes:
        if self.inflater is not None:
            self._keep(self.inflater.flush())
        return b"".join(self.pieces)

    def _keep(self, piece: bytes) -> None:
        self.size += len(piece)
        if self.size > self.bound:
            raise self._too_large("grew past that")
        self.pieces.append(piece)

    def _too_large(self, how: str) -> ConvServiceError:
        return failure("answer", f"this call's answer can need {self.bound} bytes; it {how}")


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
    # Only the codings the answer is read with (not httpx's default list, which may name br).
    headers = {**request["headers"], "accept-encoding": "identity"}
    if api_key is not None:
        headers["authorization"] = f"Bearer {api_key}"
    if compress:
        headers.update({"content-encoding": "gzip", "accept-encoding": "gzip"})
        request = {**request, "content": gzip.compress(request["content"], compresslevel=1)}
    return {**request, "headers": headers}


@dataclass(frozen=True)
class Call:
    """One logical call: its operation, arrays, hyperparameters and shards, and the time
    (``time.monotonic()``) by which it must be answered."""

    operation: Operation
    arrays: dict[str, np.ndarray]
    hyper: dict[str, object]
    parts: list[slice]
    deadline: float

    def request(self, index: int) -> tuple[dict[str, Any], Expected]:
        """Shard ``index``'s request, and what its answer must hold."""
        arrays = shard_arrays(self.operation, self.arrays, self.parts[index])
        return _request(arrays, self.hyper), Expected.of(self.operation, arrays, self.hyper)

    def remaining(self) -> float:
        """Seconds left; a timeout failure when none are."""
        left = self.deadline - time.monotonic()
        if left <= 0:
            raise failure("timeout", "no answer within the call's timeout")
        return left


def dry_run(op: Operation, dtype: str | None, arguments: Mapping[str, object]) -> dict[str, Any]:
    """The body of ``POST /explain`` for ``op``: inputs as shapes, hyperparameters as JSON."""
    document: dict[str, Any] = {"operation": op.name}
    for name, value in arguments.items():
        if name in op.inputs:
            shape = cast(Sequence[int], getattr(value, "shape", value))
            spec: dict[str, Any] = {"shape": [int(d) for d in shape]}
            kind = getattr(value, "dtype", None)  # a tensor's is named torch.float32
            if kind is not None:
                spec["dtype"] = str(kind).rsplit(".", 1)[-1]
            document[name] = spec
        else:
            document[name] = json.loads(_param(value)) if not isinstance(value, str) else value
    if dtype is not None:
        document["dtype"] = dtype
    return document


def explanation(response: httpx.Response) -> Explanation:
    """The service's dry run as the engine's :class:`~convengine.Explanation`."""
    if response.status_code != 200:
        raise ConvServiceError(response.status_code, _detail(response))
    try:
        data = response.json()
        return Explanation(
            operation=str(data["operation"]),
            outputs={
                str(name): ArraySpec(tuple(int(d) for d in spec["shape"]), str(spec["dtype"]))
                for name, spec in data["outputs"].items()
            },
            flops=int(data["flops"]),
            memory_bytes=int(data["memory_bytes"]),
            path=str(data["path"]),
        )
    except (ValueError, KeyError, TypeError, AttributeError) as exc:
        raise failure("answer", f"the dry run's answer is not one: {str(exc)[:200]}") from exc


def plain(headers: httpx.Headers) -> dict[str, str]:
    """An answer's headers once its body is read and decoded: no coding, no length."""
    return {k: v for k, v in headers.items() if k not in ("content-encoding", "content-length")}


def outputs(op: Operation, result: Mapping[str, np.ndarray]) -> Any:
    """One output as an array, several as a tuple in the operation's order."""
    values = tuple(result[name] for name in op.outputs)
    return values[0] if len(values) == 1 else values


def result(response: httpx.Response, expected: Expected) -> dict[str, np.ndarray]:
    """The arrays of a 200 answer, as the call expects them; any other answer raises
    :class:`ConvServiceError` with the service's detail."""
    if response.status_code != 200:
        raise ConvServiceError(response.status_code, _detail(response))
    # Not np.load: shards are read from several threads, and its header parser is not
    # thread-safe on CPython before 3.11.8 (gh-106905).
    try:
        answer = load_npz(response.content, expected.bound)
    except (ValueError, KeyError, OSError, EOFError, zipfile.BadZipFile) as exc:
        raise failure("answer", f"the answer is not a readable .npz: {str(exc)[:200]}") from exc
    return expected.check({name: _typed(array) for name, array in answer.items()})


def _typed(array: np.ndarray) -> np.ndarray:
    """A bfloat16 answer as bfloat16: .npy has no name for it, and the service writes it as
    np.save does, two bytes of "<V2" (ml_dtypes comes with the service; without it the
    bytes stay as they are)."""
    if array.dtype.kind != "V" or array.dtype.itemsize != 2 or array.dtype.names:
        return array
    try:
        import ml_dtypes
    except ImportError:  # pragma: no cover - a client installed without it
        return array
    return array.view(ml_dtypes.bfloat16)


def _detail(response: httpx.Response) -> list[dict[str, Any]]:
    """The refusal's ``detail``, or its text as one item when it has none."""
    try:
        detail = response.json()["detail"]
        if isinstance(detail, list) and all(isinstance(item, dict) for item in detail):
            return detail
    except (ValueError, KeyError, TypeError):
        pass
    return [{"loc": [], "msg": response.text[:500], "type": "http"}]


def retry_after(response: httpx.Response) -> float:
    """The seconds a busy replica asks to wait (1 when it says nothing usable), capped."""
    try:
        seconds = float(response.headers.get("retry-after", "1"))
    except ValueError:  # an HTTP date, or nothing a number
        return 1.0
    return min(seconds, RETRY_AFTER_CAP) if math.isfinite(seconds) and seconds >= 0 else 1.0


def limits(response: httpx.Response) -> Limits:
    """A replica's limits from its answer to ``GET /limits`` (none known from an older one)."""
    if response.status_code != 200:
        return Limits()
    try:
        data = response.json()
    except ValueError:
        return Limits()
    return Limits.from_json(data) if isinstance(data, dict) else Limits()
