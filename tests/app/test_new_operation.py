"""An operation added to the table alone is served: its REST route, its protocol models, the
dry run and the OpenAPI document, with no file of app/ touched.

The throwaway operation is the textbook convolution (the kernel flipped, as in signal
processing, where deep-learning layers cross-correlate), built from the engine's planning
and forward pass.
"""

from __future__ import annotations

import dataclasses

import numpy as np
import pytest

from app.config import Settings
from app.main import create_app
from benchmarks.payloads import read, request
from convengine import OPERATIONS, forward

from ..engine.oracle import naive_conv

pytestmark = pytest.mark.anyio


def _flipped(geometry, arrays):
    w = arrays["w"]
    kernel = w[(slice(None), slice(None), *(slice(None, None, -1),) * (w.ndim - 2))]
    return {"out": forward(arrays["x"], np.ascontiguousarray(kernel), arrays.get("b"), geometry)}


TEXTBOOK = dataclasses.replace(
    OPERATIONS["forward"],
    name="textbook_conv",
    path="/textbook_conv/forward",
    model="textbook_conv{rank}d",
    summary="The convolution of signal processing: x with w flipped along its spatial axes.",
    run=_flipped,
)
TABLE = {**OPERATIONS, TEXTBOOK.name: TEXTBOOK}


@pytest.fixture
async def client():
    import httpx

    app = create_app(Settings(), operations=TABLE)
    async with app.router.lifespan_context(app):
        transport = httpx.ASGITransport(app=app)
        async with httpx.AsyncClient(transport=transport, base_url="http://convengine") as client:
            yield client


def _case(rng):
    x, w, b = (
        rng.standard_normal((2, 3, 6, 5)),
        rng.standard_normal((4, 3, 3, 2)),
        rng.standard_normal(4),
    )
    hyper = {"stride": 2, "padding": 1, "rounding": "floor"}
    want = naive_conv(x, w[:, :, ::-1, ::-1], b, **hyper)
    return x, w, b, hyper, want


@pytest.mark.parametrize("form", ["typed", "b64", "npz", "multipart"])
async def test_its_rest_route_answers_in_every_form(client, form, rng):
    x, w, b, hyper, want = _case(rng)
    response = await client.post(
        TEXTBOOK.path, **request(form, {"x": x, "w": w, "b": b}, hyper, "application/x-npz")
    )
    assert response.status_code == 200, response.text
    np.testing.assert_allclose(read(response, ["out"])["out"], want, atol=1e-12)


async def test_its_refusals_are_the_table_s_checks(client, rng):
    x, w, _, hyper, _ = _case(rng)
    response = await client.post(TEXTBOOK.path, **request("npz", {"x": x, "w": w[:, :2]}, hyper))
    assert response.status_code == 422
    assert response.json()["detail"][0]["loc"] == ["body", "w"]


async def test_its_protocol_models_answer(client, rng):
    x, w, b, hyper, want = _case(rng)
    body = {
        "inputs": [
            {"name": name, "shape": list(a.shape), "datatype": "FP64", "data": a.ravel().tolist()}
            for name, a in (("x", x), ("w", w), ("b", b))
        ],
        "parameters": {
            key: str(value) if not isinstance(value, str) else value for key, value in hyper.items()
        },
    }
    response = await client.post("/v2/models/textbook_conv2d/infer", json=body)
    assert response.status_code == 200, response.text
    (out,) = response.json()["outputs"]
    np.testing.assert_allclose(np.reshape(out["data"], out["shape"]), want, atol=1e-12)
    metadata = (await client.get("/v2/models/textbook_conv1d")).json()
    assert [t["name"] for t in metadata["inputs"]] == ["x", "w", "b"]


async def test_the_dry_run_and_the_openapi_document_know_it(client):
    dry = await client.post(
        "/explain",
        json={
            "operation": "textbook_conv",
            "x": {"shape": [2, 3, 6, 5]},
            "w": {"shape": [4, 3, 3, 2]},
            "padding": 1,
        },
    )
    assert dry.status_code == 200, dry.text
    assert dry.json()["outputs"] == {"out": {"shape": [2, 4, 6, 6], "dtype": "float64"}}
    document = (await client.get("/openapi.json")).json()
    assert TEXTBOOK.path in document["paths"]
    assert "TextbookConvJSON" in document["components"]["schemas"]


async def test_the_default_service_does_not_serve_it():
    import httpx

    app = create_app(Settings())
    transport = httpx.ASGITransport(app=app)
    async with httpx.AsyncClient(transport=transport, base_url="http://convengine") as client:
        assert (await client.post(TEXTBOOK.path, json={})).status_code in (404, 405)
        assert (await client.get("/v2/models/textbook_conv2d")).status_code == 404
