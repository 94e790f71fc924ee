"""Every way a request can be wrong: its status, and a detail that names the field and numbers."""

from __future__ import annotations

import base64
import io
import json
import zipfile

import numpy as np
import pytest

import app.errors as errors
from app.config import Settings
from benchmarks.payloads import npy_bytes, npz_bytes

from .conftest import serve

pytestmark = pytest.mark.anyio

X = [[[[1.0, 2.0, 3.0], [4.0, 5.0, 6.0], [7.0, 8.0, 9.0]]]]
W = [[[[1.0, 0.0], [0.0, 1.0]]]]
NPY_X = npy_bytes(np.ones((1, 1, 4, 4)))
NPY_W = npy_bytes(np.ones((1, 1, 3, 3)))


def _json(document) -> dict:
    return {"content": json.dumps(document), "headers": {"content-type": "application/json"}}


def _raw_json(text: str) -> dict:
    return {"content": text, "headers": {"content-type": "application/json"}}


def _multipart(**parts) -> dict:
    files = {k: v for k, v in parts.items() if isinstance(v, tuple)}
    data = {k: v for k, v in parts.items() if not isinstance(v, tuple)}
    return {"files": files, "data": data}


def _npz(body: bytes, query: str = "") -> dict:
    return {"content": body, "headers": {"content-type": "application/x-npz"}, "params": query}


def _typed(shape, dtype="float32", data=None):
    return {
        "shape": shape,
        "dtype": dtype,
        "data": data if data is not None else [1.0] * int(np.prod(shape)),
    }


# One row a case, so the table reads as a table.
# fmt: off
CASES = {
    # name: (path, request kwargs, status, loc, message fragment)
    "malformed-json": ("/forward", _raw_json("{bad"), 400, ["body"], "not valid JSON"),
    "json-not-object": ("/forward", _json([1, 2]), 422, ["body"], "must be a JSON object"),
    "json-nan": ("/forward", _raw_json('{"x": [[[[NaN]]]], "w": [[[[1]]]]}'), 422, ["body", "x"], "NaN, Infinity"),
    "json-infinity": ("/forward", _raw_json('{"x": [[[[1]]]], "w": [[[[-Infinity]]]]}'), 422, ["body", "w"], "NaN, Infinity"),
    "json-huge-number": ("/forward", _raw_json('{"x": [[[[1e400]]]], "w": [[[[1]]]]}'), 422, ["body", "x"], "too large"),
    "float32-overflow": ("/forward", _json({"x": [[[[1e39]]]], "w": [[[[1]]]], "dtype": "float32"}), 422, ["body", "x"], "too large for float32"),
    "ragged": ("/forward", _json({"x": [[[[1, 2], [3]]]], "w": W}), 422, ["body", "x"], "not a rectangular array"),
    "strings": ("/forward", _json({"x": [[[["a", "b"]]]], "w": W}), 422, ["body", "x"], "found strings"),
    "booleans": ("/forward", _json({"x": [[[[True, False]]]], "w": W}), 422, ["body", "x"], "found true/false"),
    "nulls": ("/forward", _json({"x": X, "w": [[[[None, 1]]]]}), 422, ["body", "w"], "found nulls"),
    "tensor-number": ("/forward", _json({"x": 5, "w": W}), 422, ["body", "x"], "must be a nested list"),
    "tensor-bad-keys": ("/forward", _json({"x": {"shape": [1], "values": [1]}, "w": W}), 422, ["body", "x"], "keys ['shape', 'values']"),
    "missing-x": ("/forward", _json({"w": W}), 422, ["body", "x"], "'x' is required"),
    "missing-dout": ("/backward", _json({"x": X, "w": W}), 422, ["body", "dout"], "'dout' is required"),
    "unknown-field": ("/forward", _json({"x": X, "w": W, "strides": 2}), 422, ["body", "strides"], "Extra inputs are not permitted"),
    "dout-on-forward": ("/forward", _json({"x": X, "w": W, "dout": X}), 422, ["body", "dout"], "Extra inputs"),
    "unknown-dtype": ("/forward", _json({"x": X, "w": W, "dtype": "int8"}), 422, ["body", "dtype"], "dtype must be one of float16, bfloat16, float32, float64"),
    "nested-complex": ("/forward", _json({"x": X, "w": W, "dtype": "complex64"}), 422, ["body", "dtype"], "nested lists cannot carry complex numbers"),
    "typed-int-dtype": ("/forward", _json({"x": _typed([1, 1, 3, 3], "int32"), "w": W}), 422, ["body", "x", "dtype"], "dtype 'int32'"),
    "typed-complex-length": ("/forward", _json({"x": _typed([1, 1, 3, 3], "complex64"), "w": W}), 422, ["body", "x", "data"], "x.data holds 9 numbers but shape [1, 1, 3, 3] of complex64, each its real and imaginary parts, needs 18"),
    "typed-complex-w-real-x": ("/forward", _json({"x": _typed([1, 1, 3, 3]), "w": _typed([1, 1, 2, 2], "complex64", [1.0] * 8)}), 422, ["body", "w"], "w is complex64 but x is float32: every array takes x's dtype, and a complex w cannot become real"),
    "typed-length": ("/forward", _json({"x": _typed([1, 1, 3, 3], data=[1.0] * 8), "w": W}), 422, ["body", "x", "data"], "holds 8 numbers but shape [1, 1, 3, 3] needs 9"),
    "negative-shape": ("/forward", _json({"x": _typed([1, -1, 3, 3], data=[]), "w": W}), 422, ["body", "x", "shape"], "non-negative integers"),
    "absurd-shape": ("/forward", _json({"x": _typed([100000] * 4, data=[]), "w": W}), 413, ["body", "x"], "beyond the"),
    "bad-base64": ("/forward", _json({"x": {"shape": [1, 1, 1, 1], "dtype": "float32", "b64": "@@@@"}, "w": W}), 422, ["body", "x", "b64"], "not valid base64"),
    "base64-length": ("/forward", _json({"x": {"shape": [1, 1, 2, 2], "dtype": "float32", "b64": "AACAPw=="}, "w": W}), 422, ["body", "x", "b64"], "decodes to 4 bytes but shape [1, 1, 2, 2] of float32 needs 16"),
    "not-whole": ("/forward", _json({"x": [[[[0.0] * 32] * 32]], "w": [[[[1.0] * 3] * 3]], "stride": 2}), 422, ["body", "stride"], "output height (32 + 2*0 - 1*(3-1) - 1)/2 + 1 = 15.5 is not a whole number"),
    "kernel-too-big": ("/forward", _json({"x": X, "w": [[[[1.0] * 5] * 5]]}), 422, ["body", "w"], "is not positive"),
    "channels": ("/forward", _json({"x": X, "w": [[[[1.0]], [[1.0]]]]}), 422, ["body", "w"], "C/groups = 1/1 = 1 input channels"),
    "groups": ("/forward", _json({"x": X, "w": W, "groups": 2}), 422, ["body", "groups"], "groups=2 must divide the input channels C=1"),
    "bias-length": ("/forward", _json({"x": X, "w": W, "b": [1.0, 2.0]}), 422, ["body", "b"], "b must have shape (1,)"),
    "dout-shape": ("/backward", _json({"x": X, "w": W, "dout": X}), 422, ["body", "dout"], "(1, 1, 2, 2), got (1, 1, 3, 3)"),
    "x-2d": ("/forward", _json({"x": X[0][0], "w": W}), 422, ["body", "x"], "x must be 4-D (N, C, H, W) or 3-D (C, H, W) for one sample, as w of 4 axes (F, C/groups, KH, KW) makes a 2-D layer; got 2-D shape (3, 3)"),
    "x-one-sample-channels": ("/forward", _json({"x": [[[1.0] * 3] * 3] * 2, "w": W}), 422, ["body", "w"], "(x of shape (2, 3, 3) is read as one sample, without the batch axis: w has 4 axes)"),
    "x-6d": ("/forward", _json({"x": [[[[[[1.0]]]]]], "w": W}), 422, ["body", "x"], "x must be 4-D (N, C, H, W) or 3-D (C, H, W) for one sample"),
    "x-empty": ("/forward", _json({"x": [], "w": W}), 422, ["body", "x"], "x is an empty nested list: nested lists cannot carry an empty axis"),
    "x-empty-channels": ("/forward", _json({"x": _typed([2, 0, 3, 3], data=[]), "w": W}), 422, ["body", "x"], "x has an empty axis C: shape (2, 0, 3, 3) (N, C, H, W); only the batch axis N may be empty"),
    "x-one-sample-empty-width": ("/forward", _json({"x": _typed([1, 3, 0], data=[]), "w": W}), 422, ["body", "x"], "x has an empty axis W: shape (1, 3, 0) (C, H, W)"),
    "stride-zero": ("/forward", _json({"x": X, "w": W, "stride": 0}), 422, ["body", "stride"], "greater than or equal to 1, got 0"),
    "stride-string": ("/forward", _json({"x": X, "w": W, "stride": "2"}), 422, ["body", "stride"], "valid integer"),
    "stride-bool": ("/forward", _json({"x": X, "w": W, "stride": True}), 422, ["body", "stride"], "valid integer"),
    "stride-float": ("/forward", _json({"x": X, "w": W, "stride": 1.5}), 422, ["body", "stride"], "valid integer"),
    "padding-triple": ("/forward", _json({"x": X, "w": W, "padding": [1, 1, 1]}), 422, ["body", "padding"], "padding must be an integer or a pair of integers (height, width), got 3 values: [1, 1, 1]"),
    "padding-negative-width": ("/forward", _json({"x": X, "w": W, "padding": [0, -1]}), 422, ["body", "padding", 1], "greater than or equal to 0, got -1"),
    "padding-word": ("/forward", _json({"x": X, "w": W, "padding": "full"}), 422, ["body", "padding"], "'same', 'same_lower' or 'valid'"),
    "reflect-too-much": ("/forward", _json({"x": X, "w": W, "padding": 3, "padding_mode": "reflect"}), 422, ["body", "padding"], 'padding_mode "reflect" needs each padding smaller than the input: padding 3 at the start of the height, but the input height is 3'),
    "unknown-padding-mode": ("/forward", _json({"x": X, "w": W, "padding_mode": "mirror"}), 422, ["body", "padding_mode"], "Input should be 'zeros', 'reflect', 'replicate' or 'circular', got 'mirror'"),
    "unknown-rounding": ("/forward", _json({"x": X, "w": W, "rounding": "ceil"}), 422, ["body", "rounding"], "Input should be 'exact' or 'floor', got 'ceil'"),
    "sides-negative": ("/forward", _json({"x": X, "w": W, "padding": [[1, 1], [0, -1]]}), 422, ["body", "padding", 1, 1], "greater than or equal to 0, got -1"),
    "sides-three": ("/forward", _json({"x": X, "w": W, "padding": [[1, 1], [0, 1], [1, 1]]}), 422, ["body", "padding"], "padding per side needs one (before, after) pair per spatial axis (height, width), got 3 pairs"),
    "stem-not-whole": ("/forward", _json({"x": {"shape": [1, 1, 224, 224], "dtype": "float32", "b64": base64.b64encode(bytes(4 * 224 * 224)).decode()}, "w": [[[[1.0] * 7] * 7]], "stride": 2, "padding": 3}), 422, ["body", "stride"], 'output height (224 + 2*3 - 1*(7-1) - 1)/2 + 1 = 112.5 is not a whole number: pad [[3, 2], [3, 2]] for an output height of 112 (what PyTorch computes), or send rounding "floor"'),
    "channels-last": ("/forward", _json({"x": _typed([1, 4, 4, 3]), "w": _typed([2, 3, 3, 3])}), 422, ["body", "x"], "x looks like (N, H, W, C) (1, 4, 4, 3); send (N, C, H, W)"),
    "npz-sides-in-query": ("/forward", _npz(npz_bytes(x=np.ones((1, 1, 4, 4)), w=np.ones((1, 1, 3, 3))), "padding=[[1,1],[2]]"), 422, ["query", "padding", 1, 1], "Field required"),
    "dilation-absurd": ("/forward", _json({"x": X, "w": W, "dilation": 10**12}), 422, ["body", "dilation"], "less than or equal to"),
    "query-with-json": ("/forward?stride=2", _json({"x": X, "w": W}), 422, ["query", "stride"], "hyperparameters go in the body"),
    "work-limit": ("/forward", _json({"x": [[[[1.0]]]], "w": [[[[1.0]]]], "padding": 200000}), 422, ["body"], "MiB of working memory"),
    "unsupported-type": ("/forward", {"content": b"x", "headers": {"content-type": "text/plain"}}, 415, ["header", "content-type"], "'text/plain' is not read here"),
    "no-content-type": ("/forward", {"content": b"x"}, 415, ["header", "content-type"], "'(none)'"),
    "not-acceptable": ("/forward", {**_json({"x": X, "w": W}), "headers": {"content-type": "application/json", "accept": "text/html"}}, 406, ["header", "accept"], "application/json, application/x-npz, application/x-npy"),
    "npy-for-backward": ("/backward", {**_json({"x": X, "w": W, "dout": X}), "headers": {"content-type": "application/json", "accept": "application/x-npy"}}, 406, ["header", "accept"], "single array"),
    "npy-pickled-objects": ("/forward", _multipart(x=("x.npy", npy_bytes(np.array([{"a": 1}], dtype=object))), w=("w.npy", NPY_W)), 422, ["body", "x"], "object"),
    "npy-int": ("/forward", _multipart(x=("x.npy", npy_bytes(np.ones((1, 1, 4, 4), dtype=np.int64))), w=("w.npy", NPY_W)), 422, ["body", "x"], "dtype int64"),
    "npy-structured": ("/forward", _multipart(x=("x.npy", npy_bytes(np.zeros(3, dtype=[("a", "f4")]))), w=("w.npy", NPY_W)), 422, ["body", "x"], "the service takes arrays of float16, bfloat16, float32, float64, complex64, complex128"),
    "npy-truncated": ("/forward", _multipart(x=("x.npy", NPY_X[:-8]), w=("w.npy", NPY_W)), 400, ["body", "x"], "announces shape (1, 1, 4, 4) (128 bytes of float64) but 120 bytes follow"),
    "npy-trailing-bytes": ("/forward", _multipart(x=("x.npy", NPY_X + b"junk"), w=("w.npy", NPY_W)), 400, ["body", "x"], "but 132 bytes follow"),
    "npy-garbage": ("/forward", _multipart(x=("x.npy", b"not a numpy file at all"), w=("w.npy", NPY_W)), 400, ["body", "x"], "not a valid .npy file"),
    "npy-bad-header": ("/forward", _multipart(x=("x.npy", b"\x93NUMPY\x01\x00\x10\x00{'descr': os.sys}  \n"), w=("w.npy", NPY_W)), 400, ["body", "x"], "not a valid .npy file"),
    "multipart-unknown-part": ("/forward", _multipart(x=("x.npy", NPY_X), w=("w.npy", NPY_W), y=("y.npy", NPY_X)), 422, ["body", "y"], "unknown array 'y'"),
    "multipart-missing-w": ("/forward", _multipart(x=("x.npy", NPY_X)), 422, ["body", "w"], "'w' is required"),
    "multipart-bad-stride": ("/forward", _multipart(x=("x.npy", NPY_X), w=("w.npy", NPY_W), stride="two"), 422, ["body", "stride"], "valid integer, got 'two'"),
    "multipart-unknown-field": ("/forward", _multipart(x=("x.npy", NPY_X), w=("w.npy", NPY_W), stirde="2"), 422, ["body", "stirde"], "Extra inputs"),
    "multipart-no-boundary": ("/forward", {"content": b"--x--", "headers": {"content-type": "multipart/form-data"}}, 400, ["header", "content-type"], "needs a boundary"),
    "multipart-malformed": ("/forward", {"content": b"garbage without boundaries", "headers": {"content-type": "multipart/form-data; boundary=abc"}}, 400, ["body"], "malformed"),
    "npz-corrupt": ("/forward", _npz(b"PK\x03\x04 definitely not a zip"), 400, ["body"], "not a valid .npz"),
    "npz-unknown-member": ("/forward", _npz(npz_bytes(x=np.ones((1, 1, 3, 3)), w=np.ones((1, 1, 2, 2)), z=np.ones(1))), 422, ["body", "z"], "unknown array 'z'"),
    "npz-missing": ("/forward", _npz(npz_bytes(x=np.ones((1, 1, 3, 3)))), 422, ["body", "w"], "'w' is required"),
    "npz-bad-query": ("/forward", _npz(npz_bytes(x=np.ones((1, 1, 3, 3)), w=np.ones((1, 1, 2, 2))), "stride=0"), 422, ["query", "stride"], "greater than or equal to 1"),
    "npz-geometry-in-query": ("/forward", _npz(npz_bytes(x=np.ones((1, 1, 4, 4)), w=np.ones((1, 1, 3, 3))), "stride=2"), 422, ["query", "stride"], "(4 + 2*0 - 1*(3-1) - 1)/2 + 1 = 1.5"),
    "npz-pickle-member": ("/forward", _npz(npz_bytes(x=np.array([None, 1], dtype=object), w=np.ones((1, 1, 2, 2)))), 422, ["body", "x"], "object"),
}
# fmt: on


@pytest.mark.parametrize("name", CASES)
async def test_bad_request(client, name):
    path, kwargs, status, loc, fragment = CASES[name]
    response = await client.post(path, **kwargs)
    assert response.status_code == status, response.text
    assert response.headers["content-type"] == "application/json"
    detail = response.json()["detail"]
    assert isinstance(detail, list) and detail
    assert detail[0]["loc"] == loc, detail
    assert fragment in detail[0]["msg"], detail[0]["msg"]
    assert set(detail[0]) == {"loc", "msg", "type"}
    assert "Traceback" not in response.text
    # The service keeps serving.
    assert (await client.post("/forward", json={"x": X, "w": W})).status_code == 200


async def test_non_finite_result_cannot_travel_as_json_numbers(client):
    body = {"x": [[[[3e38]]]], "w": [[[[10.0]]]], "dtype": "float32"}
    response = await client.post("/forward", json=body)
    assert response.status_code == 422
    assert "holds NaN or Infinity" in response.json()["detail"][0]["msg"]
    big = np.full((1, 1, 1, 1), 3e38, dtype=np.float32)
    response = await client.post(
        "/forward",
        json={
            "x": {"shape": [1, 1, 1, 1], "dtype": "float32", "b64": _b64(big)},
            "w": [[[[10.0]]]],
        },
    )
    assert response.status_code == 200
    assert response.json()["out"]["b64"] == _b64(np.full((1, 1, 1, 1), np.inf, dtype=np.float32))


def _b64(array):
    import base64

    return base64.b64encode(array.astype("<f4").tobytes()).decode()


async def test_zip_bomb_is_refused_from_its_directory():
    stream = io.BytesIO()
    with zipfile.ZipFile(stream, "w", compression=zipfile.ZIP_DEFLATED) as archive:
        archive.writestr("x.npy", npy_bytes(np.zeros((1, 1, 1024, 1024))))  # 8 MiB of zeros
        archive.writestr("w.npy", npy_bytes(np.ones((1, 1, 1, 1))))
    assert len(stream.getvalue()) < 64 * 1024
    async with serve(Settings(max_decoded_bytes=1 << 20)) as client:
        response = await client.post("/forward", **_npz(stream.getvalue()))
    assert response.status_code == 413
    assert response.json()["detail"][0]["loc"] == ["body", "x"]
    assert "beyond the 1048576-byte limit" in response.json()["detail"][0]["msg"]


async def test_gflop_limit():
    async with serve(Settings(max_gflop=0.001)) as client:
        body = {
            "x": np.zeros((1, 8, 32, 32)).tolist(),
            "w": np.zeros((16, 8, 3, 3)).tolist(),
            "padding": 1,
        }
        response = await client.post("/forward", json=body)
    assert response.status_code == 422
    assert "GFLOP, over the service's limit of 0.0 GFLOP" in response.json()["detail"][0]["msg"]


def test_every_service_error_maps_to_its_status():
    expected = {
        errors.BadRequest: 400,
        errors.Unauthorized: 401,
        errors.NotFound: 404,
        errors.NotAcceptable: 406,
        errors.RequestTimeout: 408,
        errors.PayloadTooLarge: 413,
        errors.UnsupportedMediaType: 415,
        errors.InvalidInput: 422,
        errors.Overloaded: 503,
    }
    assert set(errors.ServiceError.__subclasses__()) == set(expected)
    for cls, status in expected.items():
        response = errors.error_response(cls("message", loc=("body", "x")))
        assert response.status_code == status
        assert json.loads(response.body) == {
            "detail": [{"loc": ["body", "x"], "msg": "message", "type": cls.type}]
        }
