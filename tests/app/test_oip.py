"""The Open Inference Protocol by hand: JSON and binary requests, metadata, every error path."""

from __future__ import annotations

import json

import numpy as np
import pytest

from convengine import conv2d, conv2d_backward

pytestmark = pytest.mark.anyio
RNG = np.random.default_rng(5)
X = RNG.standard_normal((2, 3, 6, 6)).astype(np.float32)
W = RNG.standard_normal((4, 3, 3, 3)).astype(np.float32)
B = RNG.standard_normal(4).astype(np.float32)


def _tensor(name, array, binary=False):
    datatype = "FP32" if array.dtype == np.float32 else "FP64"
    entry = {"name": name, "shape": list(array.shape), "datatype": datatype}
    if binary:
        entry["parameters"] = {"binary_data_size": array.nbytes}
    else:
        entry["data"] = array.ravel().tolist()
    return entry


def _binary_request(document, arrays):
    header = json.dumps(document).encode()
    body = header + b"".join(a.astype(a.dtype.newbyteorder("<")).tobytes() for a in arrays)
    headers = {
        "inference-header-content-length": str(len(header)),
        "content-type": "application/octet-stream",
    }
    return {"content": body, "headers": headers}


def _read_binary(response):
    length = int(response.headers["inference-header-content-length"])
    document = json.loads(response.content[:length])
    arrays, offset = {}, length
    for output in document["outputs"]:
        size = output["parameters"]["binary_data_size"]
        dtype = np.float32 if output["datatype"] == "FP32" else np.float64
        arrays[output["name"]] = np.frombuffer(
            response.content[offset : offset + size], dtype
        ).reshape(output["shape"])
        offset += size
    assert offset == len(response.content)
    return document, arrays


async def test_server_metadata_and_health(client):
    assert (await client.get("/v2")).json() == {
        "name": "convengine",
        "version": "0.1.0",
        "extensions": ["binary_tensor_data", "model_configuration", "statistics"],
    }
    assert (await client.get("/v2/health/live")).status_code == 200
    assert (await client.get("/v2/health/ready")).status_code == 200
    for path in ("/v2/models/conv2d/ready", "/v2/models/conv2d_backward/versions/1/ready"):
        assert (await client.get(path)).status_code == 200


async def test_model_metadata(client):
    forward = (await client.get("/v2/models/conv2d")).json()
    assert forward["name"] == "conv2d" and forward["versions"] == ["1"]
    assert [(t["name"], t["datatype"], t["shape"]) for t in forward["inputs"]] == [
        ("x", "FP32", [-1, -1, -1, -1]),
        ("w", "FP32", [-1, -1, -1, -1]),
        ("b", "FP32", [-1]),
    ]
    backward = (await client.get("/v2/models/conv2d_backward/versions/1")).json()
    assert [t["name"] for t in backward["outputs"]] == ["dx", "dw", "db"]


async def test_json_inference_with_parameters(client):
    document = {
        "id": "req-1",
        "parameters": {"stride": "3,1", "padding": "0,1"},
        "inputs": [_tensor("x", X), _tensor("w", W), _tensor("b", B)],
    }
    response = await client.post("/v2/models/conv2d/infer", json=document)
    assert response.status_code == 200, response.text
    body = response.json()
    assert (body["model_name"], body["model_version"], body["id"]) == ("conv2d", "1", "req-1")
    (out,) = body["outputs"]
    expected = conv2d(X, W, B, stride=(3, 1), padding=(0, 1))
    assert (
        out["name"] == "out" and out["datatype"] == "FP32" and out["shape"] == list(expected.shape)
    )
    np.testing.assert_array_equal(np.array(out["data"], np.float32).reshape(out["shape"]), expected)


@pytest.mark.parametrize(
    "path", ["/v2/models/conv2d_backward/infer", "/v2/models/conv2d_backward/versions/1/infer"]
)
async def test_binary_inference_both_ways(client, path):
    x, w = X.astype(np.float64), W.astype(np.float64)
    dout = RNG.standard_normal((2, 4, 6, 6))
    document = {
        "parameters": {"padding": "same", "binary_data_output": True},
        "inputs": [_tensor("x", x, True), _tensor("w", w, True), _tensor("dout", dout, True)],
    }
    response = await client.post(path, **_binary_request(document, [x, w, dout]))
    assert response.status_code == 200, response.text
    result, arrays = _read_binary(response)
    assert [o["datatype"] for o in result["outputs"]] == ["FP64"] * 3
    for name, want in zip(["dx", "dw", "db"], conv2d_backward(dout, x, w, padding="same")):
        np.testing.assert_array_equal(arrays[name], want)


async def test_mixed_json_and_binary_inputs_and_chosen_outputs(client):
    document = {
        "inputs": [_tensor("x", X, True), _tensor("w", W)],
        "outputs": [{"name": "out", "parameters": {"binary_data": True}}],
    }
    response = await client.post("/v2/models/conv2d/infer", **_binary_request(document, [X]))
    _, arrays = _read_binary(response)
    np.testing.assert_array_equal(arrays["out"], conv2d(X, W))


ERRORS = {
    "unknown-model": ("/v2/models/resnet/infer", {"inputs": []}, 404, "unknown model 'resnet'"),
    "unknown-version": (
        "/v2/models/conv2d/versions/7/infer",
        {"inputs": []},
        404,
        "only version 1",
    ),
    "missing-input": (
        "/v2/models/conv2d/infer",
        {"inputs": [_tensor("x", X)]},
        400,
        "needs input 'w'",
    ),
    "unknown-input": (
        "/v2/models/conv2d/infer",
        {"inputs": [_tensor("dout", X)]},
        400,
        "has no input 'dout'",
    ),
    "bad-datatype": (
        "/v2/models/conv2d/infer",
        {"inputs": [{**_tensor("x", X), "datatype": "INT32"}, _tensor("w", W)]},
        400,
        "datatype 'INT32'",
    ),
    "shape-data-mismatch": (
        "/v2/models/conv2d/infer",
        {"inputs": [{**_tensor("x", X), "shape": [2, 3, 6, 5]}, _tensor("w", W)]},
        400,
        "holds 216 numbers but shape [2, 3, 6, 5] needs 180",
    ),
    "no-data": (
        "/v2/models/conv2d/infer",
        {"inputs": [{"name": "x", "shape": [1], "datatype": "FP32"}, _tensor("w", W)]},
        400,
        "needs data",
    ),
    "geometry": (
        "/v2/models/conv2d/infer",
        {"parameters": {"stride": 4}, "inputs": [_tensor("x", X), _tensor("w", W)]},
        400,
        "stride: output height (6 + 2*0 - 1*(3-1) - 1)/4 + 1 = 1.75 is not a whole number",
    ),
    "bad-parameter-value": (
        "/v2/models/conv2d/infer",
        {"parameters": {"padding": "full"}, "inputs": [_tensor("x", X), _tensor("w", W)]},
        400,
        "padding: Input should be 'same', 'same_lower' or 'valid'",
    ),
    "unknown-parameter": (
        "/v2/models/conv2d/infer",
        {"parameters": {"strides": 2}, "inputs": [_tensor("x", X), _tensor("w", W)]},
        400,
        "unknown parameter 'strides'",
    ),
    "unknown-output": (
        "/v2/models/conv2d/infer",
        {"inputs": [_tensor("x", X), _tensor("w", W)], "outputs": [{"name": "dx"}]},
        400,
        "has no output 'dx'",
    ),
    "not-a-request": ("/v2/models/conv2d/infer", {"tensors": []}, 400, "invalid inference request"),
    "channels": (
        "/v2/models/conv2d/infer",
        {"inputs": [_tensor("x", X), _tensor("w", W[:, :2])]},
        400,
        "w: w must have C/groups = 3/1 = 3 input channels",
    ),
}


@pytest.mark.parametrize("name", ERRORS)
async def test_errors_in_the_protocols_shape(client, name):
    path, document, status, fragment = ERRORS[name]
    response = await client.post(path, json=document)
    assert response.status_code == status, response.text
    body = response.json()
    assert set(body) == {"error"}
    assert fragment in body["error"], body["error"]


async def test_binary_framing_errors(client):
    document = {"inputs": [_tensor("x", X, True), _tensor("w", W, True)]}
    short = _binary_request(document, [X])  # w's bytes missing
    response = await client.post("/v2/models/conv2d/infer", **short)
    assert (
        response.status_code == 400
        and "bytes of binary data but only 0 remain" in response.json()["error"]
    )
    extra = _binary_request({"inputs": [_tensor("x", X), _tensor("w", W)]}, [X])
    response = await client.post("/v2/models/conv2d/infer", **extra)
    assert (
        response.status_code == 400 and "binary_data_size add up to 0" in response.json()["error"]
    )
    lying = {
        **extra,
        "headers": {**extra["headers"], "inference-header-content-length": "99999999"},
    }
    response = await client.post("/v2/models/conv2d/infer", **lying)
    assert response.status_code == 400 and "no larger than the body" in response.json()["error"]
    bad_size = {
        "inputs": [
            {**_tensor("x", X, True), "parameters": {"binary_data_size": 7}},
            _tensor("w", W),
        ]
    }
    response = await client.post("/v2/models/conv2d/infer", **_binary_request(bad_size, [X]))
    assert (
        response.status_code == 400
        and "binary_data_size 7 does not match" in response.json()["error"]
    )
    response = await client.post(
        "/v2/models/conv2d/infer", content=b"{nope", headers={"content-type": "application/json"}
    )
    assert response.status_code == 400 and "not valid JSON" in response.json()["error"]
