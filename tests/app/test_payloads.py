"""Every payload form x every response form gives the engine's own results, dtype kept."""

from __future__ import annotations

import numpy as np
import pytest

from benchmarks.payloads import REQUEST_FORMS, RESPONSE_FORMS, read, request
from convengine import conv2d, conv2d_backward

pytestmark = pytest.mark.anyio
HYPER = {"stride": (2, 1), "padding": (1, 2), "dilation": 1, "groups": 2}


def _arrays(dtype):
    rng = np.random.default_rng(3)
    x = rng.standard_normal((2, 4, 7, 6)).astype(dtype)
    w = rng.standard_normal((6, 2, 3, 3)).astype(dtype)
    b = rng.standard_normal(6).astype(dtype)
    return x, w, b


@pytest.mark.parametrize("dtype", ["float32", "float64"])
@pytest.mark.parametrize("accept", RESPONSE_FORMS)
@pytest.mark.parametrize("form", REQUEST_FORMS)
async def test_forward_every_form(client, form, accept, dtype):
    x, w, b = _arrays(dtype)
    response = await client.post(
        "/forward", **request(form, {"x": x, "w": w, "b": b}, HYPER, accept)
    )
    assert response.status_code == 200, response.text
    assert response.headers["content-type"] == accept
    out = read(response, ["out"])["out"]
    expected = conv2d(x, w, b, **HYPER)
    assert out.dtype == np.dtype(dtype)
    np.testing.assert_array_equal(out, expected)


@pytest.mark.parametrize("dtype", ["float32", "float64"])
@pytest.mark.parametrize("accept", ["application/json", "application/x-npz"])
@pytest.mark.parametrize("form", REQUEST_FORMS)
async def test_backward_every_form(client, form, accept, dtype):
    x, w, _ = _arrays(dtype)
    dout = np.random.default_rng(4).standard_normal(conv2d(x, w, **HYPER).shape).astype(dtype)
    response = await client.post(
        "/backward", **request(form, {"x": x, "w": w, "dout": dout}, HYPER, accept)
    )
    assert response.status_code == 200, response.text
    got = read(response, ["dx", "dw", "db"])
    for name, expected in zip(["dx", "dw", "db"], conv2d_backward(dout, x, w, **HYPER)):
        assert got[name].dtype == np.dtype(dtype), name
        np.testing.assert_array_equal(got[name], expected, err_msg=name)


@pytest.mark.parametrize("form", ["nested", "typed", "b64"])
async def test_json_answers_in_the_style_of_x(client, form):
    x, w, _ = _arrays("float32")
    response = await client.post("/forward", **request(form, {"x": x, "w": w}, {"groups": 2}))
    value = response.json()["out"]
    if form == "nested":
        assert isinstance(value, list) and response.json()["dtype"] == "float32"
    else:
        assert set(value) == {"shape", "dtype", "data" if form == "typed" else "b64"}
        assert value["dtype"] == "float32" and value["shape"] == [2, 6, 5, 4]


async def test_compressed_npz_and_query_padding_words(client):
    x, w, b = _arrays("float64")
    from benchmarks.payloads import npz_bytes

    response = await client.post(
        "/forward?padding=same&groups=2",
        content=npz_bytes(compressed=True, x=x, w=w, b=b),
        headers={"content-type": "application/x-npz", "accept": "application/x-npz"},
    )
    assert response.status_code == 200, response.text
    np.testing.assert_array_equal(
        read(response, ["out"])["out"], conv2d(x, w, b, padding="same", groups=2)
    )


@pytest.mark.parametrize("padding", ["1,2", "[1, 2]", "[1,2]"])
async def test_multipart_hyperparameter_spellings(client, padding):
    x, w, _ = _arrays("float64")
    from benchmarks.payloads import npy_bytes

    response = await client.post(
        "/forward",
        files={"x": ("x.npy", npy_bytes(x)), "w": ("w.npy", npy_bytes(w))},
        data={"padding": padding, "stride": "2,1", "groups": "2"},
    )
    assert response.status_code == 200, response.text
    np.testing.assert_array_equal(
        read(response, ["out"])["out"], conv2d(x, w, padding=(1, 2), stride=(2, 1), groups=2)
    )


async def test_json_float32_nested_lists_by_top_level_dtype(client):
    response = await client.post(
        "/forward", json={"x": [[[[0.1, 0.2], [0.3, 0.4]]]], "w": [[[[1.0]]]], "dtype": "float32"}
    )
    assert response.status_code == 200
    assert response.json() == {"out": [[[[0.1, 0.2], [0.3, 0.4]]]], "dtype": "float32"}


async def test_fortran_order_and_big_endian_npy(client):
    x, w, _ = _arrays("float64")
    from benchmarks.payloads import npy_bytes

    response = await client.post(
        "/forward",
        files={
            "x": ("x.npy", npy_bytes(np.asfortranarray(x))),
            "w": ("w.npy", npy_bytes(w.astype(">f8"))),
        },
        data={"groups": "2"},
        headers={"accept": "application/x-npy"},
    )
    assert response.status_code == 200, response.text
    np.testing.assert_array_equal(read(response, ["out"])["out"], conv2d(x, w, groups=2))
