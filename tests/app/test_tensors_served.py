"""Every tensor through every payload form, Accept type, the protocol and the client: one
sample without its batch axis, empty batches, float16, bfloat16, complex64 and complex128,
against the engine's library functions (themselves checked against the oracle)."""

from __future__ import annotations

import json

import ml_dtypes
import numpy as np
import pytest

from benchmarks.payloads import REQUEST_FORMS, read, request
from convengine import conv, conv_backward, conv_transpose, conv_transpose_backward
from convengine.client import AsyncConvClient

from ..tensors import DTYPES, sample
from .conftest import serve
from .test_operations_served import LAYERS, _case

pytestmark = pytest.mark.anyio

BATCHES = ("one sample", "empty")
_PROTOCOL = {"float16": "FP16", "bfloat16": "BF16", "float32": "FP32", "float64": "FP64"}


def _tensors(name, dtype, batch, seed=0):
    """A layer of LAYERS with arrays of ``dtype``, one sample, an empty batch or the batch,
    and the library's answers for them."""
    kind, x, w, b, _dout, hyper, _out, _grads, paths = _case(name, seed)
    rng = np.random.default_rng(seed)
    x_shape = {"one sample": x.shape[1:], "empty": (0, *x.shape[1:]), "batch": x.shape}[batch]
    x, w, b = sample(rng, x_shape, dtype), sample(rng, w.shape, dtype), sample(rng, b.shape, dtype)
    run, grads = (
        (conv_transpose, conv_transpose_backward) if kind == "transposed" else (conv, conv_backward)
    )
    out = run(x, w, b, **hyper)
    dout = sample(rng, out.shape, dtype)
    return x, w, b, dout, hyper, out, grads(dout, x, w, **hyper), paths


def _can_nest(dtype, batch):
    return not dtype.startswith("complex") and batch != "empty"


def _same(got, want):
    assert got.dtype == want.dtype and got.shape == want.shape, (got.dtype, got.shape, want.shape)
    np.testing.assert_array_equal(got.view(np.uint8), want.view(np.uint8))


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("batch", [*BATCHES, "batch"])
@pytest.mark.parametrize("name", LAYERS)
async def test_every_form_carries_every_tensor(client, name, batch, dtype):
    """Bit for bit the library's answer, in x's dtype and shape, whatever carries it."""
    x, w, b, dout, hyper, out, grads, (forward, backward) = _tensors(name, dtype, batch)
    for form in REQUEST_FORMS:
        for accept in ("application/json", "application/x-npz"):
            response = await client.post(
                forward, **request(form, {"x": x, "w": w, "b": b}, hyper, accept)
            )
            if form == "nested" and not _can_nest(dtype, batch):
                assert response.status_code == 422, response.text
                message = response.json()["detail"][0]["msg"]
                assert "nested lists cannot carry" in message
                continue
            assert response.status_code == 200, (form, accept, response.text)
            _same(read(response, ["out"])["out"], out)
            response = await client.post(
                backward, **request(form, {"dout": dout, "x": x, "w": w}, hyper, accept)
            )
            assert response.status_code == 200, (form, accept, response.text)
            got = read(response, ["dx", "dw", "db"])
            for key, want in zip(("dx", "dw", "db"), grads, strict=True):
                _same(got[key], want)


async def test_json_answers_that_nested_lists_cannot_carry_come_typed(client):
    """A complex answer, or an empty one, to a request sent as .npz is answered in JSON as
    typed tensors: complex numbers as their real and imaginary parts, in a flat list."""
    x, w, _, _, hyper, out, _, (forward, _) = _tensors("conv1d", "complex64", "one sample")
    json_answer = "application/json"  # without an Accept, an .npz request is answered in .npz
    response = await client.post(forward, **request("npz", {"x": x, "w": w}, hyper, json_answer))
    document = response.json()
    assert document["out"]["dtype"] == "complex64" and document["out"]["shape"] == list(out.shape)
    parts = np.asarray(document["out"]["data"], np.float32)
    assert parts.size == 2 * out.size
    np.testing.assert_array_equal(parts.view(np.complex64).reshape(out.shape), conv(x, w, **hyper))
    x, w, _, _, hyper, out, _, _ = _tensors("conv1d", "float32", "empty")
    response = await client.post(forward, **request("npz", {"x": x, "w": w}, hyper, json_answer))
    assert response.json()["out"] == {"shape": list(out.shape), "dtype": "float32", "data": []}


async def test_npy_carries_bfloat16_as_numpy_saves_it(client):
    """.npy has no bfloat16: np.save writes an ml_dtypes.bfloat16 array as "<V2", and the
    service reads and writes it so; float16 is "<f2"."""
    x, w, _, _, hyper, _, _, (forward, _) = _tensors("conv1d", "bfloat16", "batch")
    response = await client.post(
        forward, **request("multipart", {"x": x, "w": w}, hyper, "application/x-npy")
    )
    assert response.content[:80].find(b"'descr': '<V2'") > 0
    _same(read(response, ["out"])["out"], conv(x, w, **hyper))
    x16 = x.astype(np.float16)
    response = await client.post(
        forward, **request("npz", {"x": x16, "w": w}, hyper, "application/x-npy")
    )
    assert b"'descr': '<f2'" in response.content[:80]


def _tensor(name, array, binary):
    entry = {"name": name, "shape": list(array.shape), "datatype": _PROTOCOL[array.dtype.name]}
    if binary:
        entry["parameters"] = {"binary_data_size": array.nbytes}
    else:
        values = array.astype(np.float32) if array.dtype == ml_dtypes.bfloat16 else array
        entry["data"] = values.ravel().tolist()
    return entry


def _protocol_request(inputs, parameters, binary):
    document = {
        "parameters": {**parameters, "binary_data_output": binary},
        "inputs": [_tensor(name, a, binary) for name, a in inputs.items()],
    }
    header = json.dumps(document).encode()
    if not binary:
        return {"content": header, "headers": {"content-type": "application/json"}}
    body = header + b"".join(np.ascontiguousarray(a).tobytes() for a in inputs.values())
    return {
        "content": body,
        "headers": {
            "content-type": "application/octet-stream",
            "inference-header-content-length": str(len(header)),
        },
    }


def _protocol_outputs(response):
    if response.headers["content-type"] == "application/json":
        document, blob = response.json(), b""
    else:
        length = int(response.headers["inference-header-content-length"])
        document, blob = json.loads(response.content[:length]), response.content[length:]
    types = {code: name for name, code in _PROTOCOL.items()}
    arrays, offset = {}, 0
    for output in document["outputs"]:
        dtype = np.dtype(ml_dtypes.bfloat16) if output["datatype"] == "BF16" else None
        dtype = dtype or np.dtype(types[output["datatype"]])
        if "data" in output:
            values = np.asarray(output["data"], np.float64).astype(dtype)
        else:
            size = output["parameters"]["binary_data_size"]
            values = np.frombuffer(blob[offset : offset + size], dtype)
            offset += size
        arrays[output["name"]] = values.reshape(output["shape"])
    return arrays


@pytest.mark.parametrize("binary", [False, True], ids=["json", "binary"])
@pytest.mark.parametrize("dtype", ["float16", "bfloat16", "float64"])
@pytest.mark.parametrize("batch", [*BATCHES, "batch"])
@pytest.mark.parametrize("name", ["conv1d", "conv3d", "transposed2d"])
async def test_the_protocol_takes_half_types_one_sample_and_empty_batches(
    client, name, batch, dtype, binary
):
    x, w, b, dout, hyper, out, grads, _ = _tensors(name, dtype, batch)
    rank = len(w.shape) - 2
    model = f"conv_transpose{rank}d" if "transposed" in name else f"conv{rank}d"
    parameters = {k: ",".join(map(str, v)) if isinstance(v, tuple) else v for k, v in hyper.items()}
    response = await client.post(
        f"/v2/models/{model}/infer",
        **_protocol_request({"x": x, "w": w, "b": b}, parameters, binary),
    )
    assert response.status_code == 200, response.text
    _same(_protocol_outputs(response)["out"], out)
    response = await client.post(
        f"/v2/models/{model}_backward/infer",
        **_protocol_request({"dout": dout, "x": x, "w": w}, parameters, binary),
    )
    assert response.status_code == 200, response.text
    got = _protocol_outputs(response)
    for key, want in zip(("dx", "dw", "db"), grads, strict=True):
        _same(got[key], want)


async def test_the_protocol_names_its_lack_of_a_complex_type(client):
    document = {
        "inputs": [
            {"name": "x", "shape": [1, 1, 3], "datatype": "COMPLEX64", "data": [1, 2, 3]},
            {"name": "w", "shape": [1, 1, 1], "datatype": "FP32", "data": [1]},
        ]
    }
    response = await client.post("/v2/models/conv1d/infer", json=document)
    assert response.status_code == 400
    error = response.json()["error"]
    assert "the models take FP16, BF16, FP32, FP64" in error
    assert "the protocol has no complex datatype" in error
    metadata = (await client.get("/v2/models/conv1d")).json()
    assert metadata["parameters"]["datatypes"].startswith("FP16, BF16, FP32, FP64")


async def test_a_protocol_model_names_both_forms_of_its_inputs(client):
    document = {
        "inputs": [
            {"name": "x", "shape": [3], "datatype": "FP32", "data": [1, 2, 3]},
            {"name": "w", "shape": [1, 1, 1], "datatype": "FP32", "data": [1]},
        ]
    }
    response = await client.post("/v2/models/conv1d/infer", json=document)
    assert response.status_code == 400
    assert (
        "input x must be 3-D or 2-D (N, C, *spatial, or one sample without N)"
        in (response.json()["error"])
    )


@pytest.mark.parametrize("dtype", DTYPES)
async def test_the_client_takes_every_tensor(dtype):
    async with serve() as http:
        client = AsyncConvClient("http://convengine", client=http)
        for name, batch in (("conv3d", "one sample"), ("transposed1d", "empty")):
            x, w, b, dout, hyper, out, grads, _ = _tensors(name, dtype, batch)
            method = "conv_transpose" if "transposed" in name else "forward"
            got = await getattr(client, method)(x, w, b, **hyper)
            _same(got, out)
            got_grads = (
                await getattr(client, f"{method.replace('forward', '')}backward".lstrip("_"))(
                    dout, x, w, **hyper
                )
                if method == "forward"
                else await client.conv_transpose_backward(dout, x, w, **hyper)
            )
            for g, want in zip(got_grads, grads, strict=True):
                _same(g, want)


def test_shards_keep_one_sample_whole_and_add_complex_gradients():
    """A client's shards split the batch only: one sample goes whole, whatever the limits;
    complex dw and db of shards add up as complex numbers."""
    from convengine import OPERATIONS
    from convengine._shards import Assembly, Limits, plan

    rng = np.random.default_rng(3)
    backward = OPERATIONS["backward"]
    one = {"dout": sample(rng, (4, 6), "float32"), "x": sample(rng, (3, 8), "float32")}
    one["w"] = sample(rng, (4, 3, 3), "float32")
    tight = Limits(max_work_bytes=1, max_gflop=1e-12)
    assert plan(backward, one, {}, tight, shards=3) == [slice(None)]
    x, w = sample(rng, (4, 3, 8), "complex64"), sample(rng, (4, 3, 3), "complex64")
    dout = sample(rng, (4, 4, 6), "complex64")
    parts = plan(backward, {"dout": dout, "x": x, "w": w}, {}, Limits(), shards=2)
    assembly = Assembly(backward, len(parts))
    for index, part in enumerate(parts):
        dx, dw, db = conv_backward(dout[part], x[part], w)
        assembly.add(index, {"dx": dx, "dw": dw, "db": db})
    whole = conv_backward(dout, x, w)
    result = assembly.result()
    for key, want in zip(("dx", "dw", "db"), whole, strict=True):
        assert result[key].dtype == np.complex64
        np.testing.assert_allclose(result[key], want, rtol=1e-5, atol=1e-5)
