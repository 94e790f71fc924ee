"""Every form of every geometry hyperparameter, through every payload form and the protocol."""

from __future__ import annotations

import json

import numpy as np
import pytest

from benchmarks.payloads import REQUEST_FORMS, read, request
from convengine import conv2d, conv2d_backward

pytestmark = pytest.mark.anyio

# name: (x shape, w shape, hyperparameters)
CASES = {
    "stem-floor": ((1, 3, 24, 24), (4, 3, 7, 7), dict(stride=2, padding=3, rounding="floor")),
    "downsample-floor": ((2, 4, 8, 8), (4, 4, 3, 3), dict(stride=2, padding=1, rounding="floor")),
    "per-side": ((1, 2, 9, 9), (3, 2, 3, 3), dict(stride=2, padding=((2, 0), (1, 1)))),
    "same-strided": ((1, 2, 9, 8), (2, 2, 3, 3), dict(stride=2, padding="same")),
    "same-lower": ((1, 2, 8, 8), (2, 2, 4, 4), dict(padding="same_lower")),
    "reflect": ((1, 2, 6, 6), (2, 2, 3, 3), dict(padding=2, padding_mode="reflect")),
    "replicate": ((1, 2, 6, 5), (2, 2, 3, 3), dict(padding=(1, 2), padding_mode="replicate")),
    "circular-floor": (
        (1, 2, 7, 6),
        (2, 2, 3, 3),
        dict(stride=2, padding=((2, 1), (0, 3)), padding_mode="circular", rounding="floor"),
    ),
}


def _arrays(x_shape, w_shape, hyper, seed=0):
    rng = np.random.default_rng(seed)
    x = rng.standard_normal(x_shape)
    w = rng.standard_normal(w_shape)
    dout = rng.standard_normal(conv2d(x, w, **hyper).shape)
    return x, w, dout


@pytest.mark.parametrize("form", REQUEST_FORMS)
@pytest.mark.parametrize("name", CASES)
async def test_rest_forms(client, form, name):
    x_shape, w_shape, hyper = CASES[name]
    x, w, dout = _arrays(x_shape, w_shape, hyper)
    response = await client.post("/forward", **request(form, {"x": x, "w": w}, hyper))
    assert response.status_code == 200, response.text
    np.testing.assert_allclose(read(response, ["out"])["out"], conv2d(x, w, **hyper), atol=1e-12)
    response = await client.post(
        "/backward", **request(form, {"x": x, "w": w, "dout": dout}, hyper)
    )
    assert response.status_code == 200, response.text
    got = read(response, ["dx", "dw", "db"])
    for name_, want in zip(("dx", "dw", "db"), conv2d_backward(dout, x, w, **hyper)):
        np.testing.assert_allclose(got[name_], want, atol=1e-12)


def _protocol_value(value):
    if isinstance(value, tuple):  # a pair as "h,w" text, a pair of pairs as JSON text
        return json.dumps(value) if isinstance(value[0], tuple) else ",".join(map(str, value))
    return value


@pytest.mark.parametrize("name", CASES)
async def test_protocol_parameters(client, name):
    x_shape, w_shape, hyper = CASES[name]
    x, w, _ = _arrays(x_shape, w_shape, hyper)
    document = {
        "parameters": {k: _protocol_value(v) for k, v in hyper.items()},
        "inputs": [
            {"name": n, "shape": list(a.shape), "datatype": "FP64", "data": a.ravel().tolist()}
            for n, a in (("x", x), ("w", w))
        ],
    }
    response = await client.post("/v2/models/conv2d/infer", json=document)
    assert response.status_code == 200, response.text
    (out,) = response.json()["outputs"]
    want = conv2d(x, w, **hyper)
    assert out["shape"] == list(want.shape)
    np.testing.assert_allclose(np.reshape(out["data"], want.shape), want, atol=1e-12)


async def test_refusal_names_both_ways_out(client):
    x, w = np.zeros((1, 1, 56, 56)), np.zeros((1, 1, 3, 3))
    response = await client.post(
        "/forward", **request("npz", {"x": x, "w": w}, {"stride": 2, "padding": 1})
    )
    assert response.status_code == 422
    (detail,) = response.json()["detail"]
    assert detail["loc"] == ["query", "stride"]
    assert detail["msg"] == (
        "output height (56 + 2*1 - 1*(3-1) - 1)/2 + 1 = 28.5 is not a whole number: pad "
        '[[1, 0], [1, 0]] for an output height of 28 (what PyTorch computes), or send rounding "floor"'
    )
    # Following either advice gives PyTorch's 28x28.
    for hyper in (
        {"stride": 2, "padding": ((1, 0), (1, 0))},
        {"stride": 2, "padding": 1, "rounding": "floor"},
    ):
        response = await client.post("/forward", **request("npz", {"x": x, "w": w}, hyper))
        assert response.status_code == 200
        assert read(response, ["out"])["out"].shape == (1, 1, 28, 28)
