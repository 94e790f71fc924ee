"""Builders of request bodies in every wire form, and readers of every response form."""

from __future__ import annotations

import base64
import io
import json
from typing import Any

import ml_dtypes
import numpy as np

REQUEST_FORMS = ["nested", "typed", "b64", "multipart", "npz"]
RESPONSE_FORMS = ["application/json", "application/x-npz", "application/x-npy"]


def npy_bytes(array: np.ndarray) -> bytes:
    stream = io.BytesIO()
    np.save(stream, array)
    return stream.getvalue()


def npz_bytes(compressed: bool = False, **arrays: Any) -> bytes:
    stream = io.BytesIO()
    (np.savez_compressed if compressed else np.savez)(stream, **arrays)
    return stream.getvalue()


def _numbers(array: np.ndarray) -> np.ndarray:
    """An array as JSON numbers carry it: complex numbers as their real and imaginary parts
    (the array's real view), bfloat16 widened to float32 (exactly)."""
    array = np.ascontiguousarray(array)
    if array.dtype.kind == "c":
        return array.view(f"f{array.dtype.itemsize // 2}")
    return array.astype(np.float32) if array.dtype == ml_dtypes.bfloat16 else array


def _json_tensor(array: np.ndarray, form: str) -> Any:
    if form == "nested":
        return _numbers(array).tolist()
    if form == "typed":
        return {
            "shape": list(array.shape),
            "dtype": array.dtype.name,
            "data": _numbers(array).ravel().tolist(),
        }
    raw = array.astype(array.dtype.newbyteorder("<")).tobytes()
    return {
        "shape": list(array.shape),
        "dtype": array.dtype.name,
        "b64": base64.b64encode(raw).decode(),
    }


def _text(value: Any) -> str:
    """A hyperparameter's text form: "2", "2,1", JSON for pairs of pairs, a word as is."""
    if isinstance(value, (tuple, list)):
        if any(isinstance(v, (tuple, list)) for v in value):
            return json.dumps(value)
        return ",".join(map(str, value))
    return str(value)


def request(
    form: str, arrays: dict[str, np.ndarray], hyper: dict[str, Any], accept: str | None = None
) -> dict[str, Any]:
    """httpx keyword arguments sending ``arrays`` and ``hyper`` in ``form``."""
    headers = {"accept": accept} if accept else {}
    if form in ("nested", "typed", "b64"):
        document = {name: _json_tensor(a, form) for name, a in arrays.items()}
        document.update({k: json.loads(json.dumps(v)) for k, v in hyper.items()})
        if form == "nested":
            document["dtype"] = arrays["x"].dtype.name
        # Bytes, as the binary forms' bodies are: httpx would otherwise encode the text
        # again on every request, a cost of the benchmark's client, not of the service.
        return {
            "content": json.dumps(document).encode(),
            "headers": {"content-type": "application/json", **headers},
        }
    if form == "multipart":
        files = {
            name: (f"{name}.npy", npy_bytes(a), "application/octet-stream")
            for name, a in arrays.items()
        }
        return {"files": files, "data": {k: _text(v) for k, v in hyper.items()}, "headers": headers}
    return {
        "content": npz_bytes(False, **arrays),
        "params": {k: _text(v) for k, v in hyper.items()},
        "headers": {"content-type": "application/x-npz", **headers},
    }


def _typed_array(array: np.ndarray) -> np.ndarray:
    # .npy has no bfloat16: the service writes it as "<V2", as np.save does.
    return array.view(ml_dtypes.bfloat16) if array.dtype.kind == "V" else array


def read(response: Any, names: list[str]) -> dict[str, np.ndarray]:
    """The arrays of a 200 response, whatever its media type."""
    kind = response.headers["content-type"]
    if kind == "application/x-npy":
        return {"out": _typed_array(np.load(io.BytesIO(response.content), allow_pickle=False))}
    if kind == "application/x-npz":
        with np.load(io.BytesIO(response.content), allow_pickle=False) as archive:
            assert sorted(archive.files) == sorted(names)
            return {name: _typed_array(archive[name]) for name in names}
    document = response.json()
    arrays = {}
    for name in names:
        value = document[name]
        if isinstance(value, list):
            arrays[name] = np.array(value, dtype=document["dtype"])
        elif "b64" in value:
            raw = base64.b64decode(value["b64"])
            arrays[name] = np.frombuffer(
                raw, dtype=np.dtype(value["dtype"]).newbyteorder("<")
            ).reshape(value["shape"])
        else:
            dtype = np.dtype(value["dtype"])
            parts = np.dtype(f"f{dtype.itemsize // 2}") if dtype.kind == "c" else dtype
            data = np.array(value["data"], dtype=parts)
            arrays[name] = (data.view(dtype) if dtype.kind == "c" else data).reshape(value["shape"])
    return arrays
