"""Every operation of the table, every rank, through every payload form, Accept type, the
protocol and the client, against the engine's library functions."""

from __future__ import annotations

import numpy as np
import pytest

from benchmarks.payloads import REQUEST_FORMS, RESPONSE_FORMS, read, request
from convengine import conv, conv_backward, conv_transpose, conv_transpose_backward
from convengine.client import AsyncConvClient

from .conftest import serve

pytestmark = pytest.mark.anyio

# name: (operation path, library function, x shape, w shape, hyperparameters)
LAYERS = {
    "conv1d": ("conv", (2, 3, 10), (4, 3, 3), dict(stride=2, padding=1, rounding="floor")),
    "conv3d": ("conv", (1, 2, 5, 4, 5), (3, 2, 3, 2, 3), dict(padding=(1, 0, 1), stride=(2, 1, 2))),
    "transposed1d": ("transposed", (2, 3, 5), (3, 2, 4), dict(stride=2, padding=1)),
    "transposed2d": ("transposed", (1, 4, 3, 3), (4, 2, 4, 4), dict(stride=2, padding=1, groups=2)),
    "transposed3d": (
        "transposed",
        (1, 2, 2, 3, 2),
        (2, 3, 2, 2, 3),
        dict(stride=2, output_padding=(1, 0, 1)),
    ),
}


def _case(name, seed=0):
    kind, x_shape, w_shape, hyper = LAYERS[name]
    rng = np.random.default_rng(seed)
    x, w = rng.standard_normal(x_shape), rng.standard_normal(w_shape)
    channels = w_shape[1] * hyper.get("groups", 1) if kind == "transposed" else w_shape[0]
    b = rng.standard_normal(channels)
    run, grads = (
        (conv_transpose, conv_transpose_backward) if kind == "transposed" else (conv, conv_backward)
    )
    out = run(x, w, b, **hyper)
    dout = rng.standard_normal(out.shape)
    paths = (
        ("/conv_transpose/forward", "/conv_transpose/backward")
        if kind == "transposed"
        else ("/forward", "/backward")
    )
    return kind, x, w, b, dout, hyper, out, grads(dout, x, w, **hyper), paths


@pytest.mark.parametrize("accept", RESPONSE_FORMS)
@pytest.mark.parametrize("form", REQUEST_FORMS)
@pytest.mark.parametrize("name", LAYERS)
async def test_every_form(client, name, form, accept):
    _kind, x, w, b, dout, hyper, out, grads, (forward, backward) = _case(name)
    response = await client.post(forward, **request(form, {"x": x, "w": w, "b": b}, hyper, accept))
    assert response.status_code == 200, response.text
    np.testing.assert_allclose(read(response, ["out"])["out"], out, atol=1e-12)
    response = await client.post(
        backward, **request(form, {"x": x, "w": w, "dout": dout}, hyper, accept)
    )
    if accept == "application/x-npy":
        assert response.status_code == 406
        assert "single array" in response.json()["detail"][0]["msg"]
        return
    assert response.status_code == 200, response.text
    got = read(response, ["dx", "dw", "db"])
    for key, want in zip(("dx", "dw", "db"), grads):
        np.testing.assert_allclose(got[key], want, atol=1e-12)


def _text(value):
    if isinstance(value, tuple):
        return ",".join(map(str, value))
    return value


@pytest.mark.parametrize("name", LAYERS)
async def test_protocol_model_of_each_rank(client, name):
    kind, x, w, b, dout, hyper, out, grads, _ = _case(name)
    rank = x.ndim - 2
    model = f"conv_transpose{rank}d" if kind == "transposed" else f"conv{rank}d"

    def tensor(key, array):
        return {
            "name": key,
            "shape": list(array.shape),
            "datatype": "FP64",
            "data": array.ravel().tolist(),
        }

    parameters = {k: _text(v) for k, v in hyper.items()}
    document = {
        "parameters": parameters,
        "inputs": [tensor("x", x), tensor("w", w), tensor("b", b)],
    }
    response = await client.post(f"/v2/models/{model}/infer", json=document)
    assert response.status_code == 200, response.text
    (result,) = response.json()["outputs"]
    np.testing.assert_allclose(np.reshape(result["data"], result["shape"]), out, atol=1e-12)
    document = {
        "parameters": parameters,
        "inputs": [tensor("dout", dout), tensor("x", x), tensor("w", w)],
    }
    response = await client.post(f"/v2/models/{model}_backward/infer", json=document)
    assert response.status_code == 200, response.text
    by_name = {o["name"]: np.reshape(o["data"], o["shape"]) for o in response.json()["outputs"]}
    for key, want in zip(("dx", "dw", "db"), grads):
        np.testing.assert_allclose(by_name[key], want, atol=1e-12)
    # A model of another rank refuses these arrays by name.
    other = "conv2d" if rank != 2 else "conv1d"
    if kind == "transposed":
        other = other.replace("conv", "conv_transpose")
    response = await client.post(
        f"/v2/models/{other}/infer",
        json={"parameters": parameters, "inputs": document["inputs"][1:]},
    )
    assert response.status_code == 400
    assert f"model {other} takes" in response.json()["error"]


async def test_client_methods_for_every_operation():
    async with serve() as http:
        client = AsyncConvClient("http://convengine", client=http)
        for name in LAYERS:
            kind, x, w, b, dout, hyper, out, grads, _ = _case(name)
            if kind == "transposed":
                got = await client.conv_transpose(x, w, b, **hyper)
                got_grads = await client.conv_transpose_backward(dout, x, w, **hyper)
            else:
                got = await client.forward(x, w, b, **hyper)
                got_grads = await client.backward(dout, x, w, **hyper)
            np.testing.assert_allclose(got, out, atol=1e-12)
            for g, want in zip(got_grads, grads):
                np.testing.assert_allclose(g, want, atol=1e-12)


async def test_transposed_refuses_what_only_convolutions_take(client):
    x, w = np.ones((1, 2, 3, 3)), np.ones((2, 1, 2, 2))
    for extra, fragment in (
        ({"padding_mode": "reflect"}, "padding_mode"),
        ({"rounding": "floor"}, "rounding"),
    ):
        response = await client.post(
            "/conv_transpose/forward", **request("nested", {"x": x, "w": w}, extra)
        )
        assert response.status_code == 422
        detail = response.json()["detail"][0]
        assert (
            detail["loc"] == ["body", fragment]
            and "Extra inputs are not permitted" in detail["msg"]
        )
    response = await client.post(
        "/forward", **request("nested", {"x": x, "w": w}, {"output_padding": 1})
    )
    assert response.status_code == 422
    assert response.json()["detail"][0]["loc"] == ["body", "output_padding"]
    response = await client.post(
        "/conv_transpose/forward",
        **request("npz", {"x": x, "w": w}, {"stride": 2, "output_padding": 2}),
    )
    assert response.status_code == 422
    detail = response.json()["detail"][0]
    assert detail["loc"] == ["query", "output_padding"]
    assert "must be smaller than the stride 2 or the dilation 1" in detail["msg"]
