"""Tiny requests are served on the event loop; everything else in a computation thread.

Which thread decoded and which computed is observed by wrapping the pipeline's own steps
(the real ones run): the event loop's thread here is the test's main thread, and the
computation threads are the gate's ("convengine_0", ...).
"""

from __future__ import annotations

import io
import json
import threading

import numpy as np
import pytest

from app import pipeline
from app.routes import explain as explain_route
from benchmarks.payloads import read, request
from convengine import OPERATIONS, conv2d, conv2d_backward

from .conftest import serve

pytestmark = pytest.mark.anyio


@pytest.fixture
def threads(monkeypatch: pytest.MonkeyPatch) -> dict[str, list[str]]:
    """The thread each request's decoding ("prepare") and computation ("compute") ran in:
    "loop" or "worker"."""
    seen: dict[str, list[str]] = {"prepare": [], "compute": []}

    def where() -> str:
        current = threading.current_thread()
        if current is threading.main_thread():
            return "loop"
        assert current.name.startswith("convengine"), current.name
        return "worker"

    def spied(name: str):  # type: ignore[no-untyped-def]
        original = getattr(pipeline, name)

        def spy(*args, **kwargs):  # type: ignore[no-untyped-def]
            seen[name].append(where())
            return original(*args, **kwargs)

        return spy

    for name in seen:
        monkeypatch.setattr(pipeline, name, spied(name))
    return seen


def _arrays(rng: np.random.Generator, x_shape, w_shape) -> dict[str, np.ndarray]:  # type: ignore[no-untyped-def]
    return {
        "x": rng.standard_normal(x_shape).astype(np.float32),
        "w": rng.standard_normal(w_shape).astype(np.float32),
    }


@pytest.mark.parametrize("form", ["npz", "b64", "nested", "multipart"])
async def test_a_tiny_request_is_served_on_the_event_loop(threads, form):
    arrays = _arrays(np.random.default_rng(0), (1, 1, 8, 8), (1, 1, 3, 3))
    async with serve() as client:
        response = await client.post("/forward", **request(form, arrays, {"padding": 1}))
        assert response.status_code == 200, response.text
        expected = conv2d(arrays["x"], arrays["w"], padding=1)
        np.testing.assert_allclose(read(response, ["out"])["out"], expected, rtol=1e-6)
    assert threads == {"prepare": ["loop"], "compute": ["loop"]}


async def test_a_tiny_backward_is_served_on_the_event_loop(threads):
    rng = np.random.default_rng(1)
    arrays = _arrays(rng, (1, 1, 8, 8), (1, 1, 3, 3))
    arrays["dout"] = rng.standard_normal((1, 1, 8, 8)).astype(np.float32)
    async with serve() as client:
        response = await client.post("/backward", **request("npz", arrays, {"padding": 1}))
        assert response.status_code == 200, response.text
    expected = conv2d_backward(arrays["dout"], arrays["x"], arrays["w"], padding=1)
    for name, value in zip(["dx", "dw", "db"], expected, strict=True):
        np.testing.assert_allclose(read(response, [name, "dx", "dw", "db"][1:])[name], value)
    assert threads == {"prepare": ["loop"], "compute": ["loop"]}


async def test_work_over_the_bound_is_computed_in_a_thread(threads):
    """A small body whose plan is over INLINE_FLOPS: decoded on the loop, computed in a thread."""
    arrays = _arrays(np.random.default_rng(2), (1, 4, 16, 16), (8, 4, 3, 3))
    plan = pipeline.request_model(OPERATIONS["forward"]).model_validate(
        {
            "padding": 1,
            **{n: {"shape": a.shape, "dtype": "float32"} for n, a in arrays.items()},
        }
    )
    assert plan.cost.flops > pipeline.INLINE_FLOPS  # the case is what it claims
    assert not pipeline.tiny(plan.cost)
    async with serve() as client:
        response = await client.post("/forward", **request("npz", arrays, {"padding": 1}))
        assert response.status_code == 200, response.text
    assert threads == {"prepare": ["loop"], "compute": ["worker"]}


async def test_a_body_over_the_bound_is_decoded_in_a_thread(threads):
    # Tiny work, but a body over INLINE_BODY_BYTES: JSON nested lists of many digits.
    arrays = _arrays(np.random.default_rng(3), (1, 1, 8, 8), (1, 1, 3, 3))
    kwargs = request("nested", arrays, {"padding": 1})
    kwargs["content"] = kwargs["content"].replace(b", ", b"," + b" " * 300)
    assert len(kwargs["content"]) > pipeline.INLINE_BODY_BYTES
    async with serve() as client:
        response = await client.post("/forward", **kwargs)
        assert response.status_code == 200, response.text
    assert threads == {"prepare": ["worker"], "compute": ["loop"]}


async def test_a_small_body_that_inflates_is_decoded_in_a_thread(threads):
    """A compressed archive of a few hundred bytes whose arrays take more than
    INLINE_MEMORY_BYTES is not inflated on the loop: it is decoded again, in a thread."""
    x = np.zeros((1, 1, 200, 200), dtype=np.float32)
    w = np.ones((1, 1, 1, 1), dtype=np.float32)
    stream = io.BytesIO()
    np.savez_compressed(stream, x=x, w=w)
    body = stream.getvalue()
    assert len(body) < pipeline.INLINE_BODY_BYTES < pipeline.INLINE_MEMORY_BYTES < x.nbytes
    async with serve() as client:
        response = await client.post(
            "/forward", content=body, headers={"content-type": "application/x-npz"}
        )
        assert response.status_code == 200, response.text
        np.testing.assert_array_equal(read(response, ["out"])["out"], conv2d(x, w))
    assert threads == {"prepare": ["loop", "worker"], "compute": ["worker"]}


async def test_an_inference_protocol_request_takes_the_same_paths(threads):
    arrays = _arrays(np.random.default_rng(4), (1, 1, 8, 8), (1, 1, 3, 3))
    document = {
        "parameters": {"padding": 1},
        "inputs": [
            {"name": n, "shape": list(a.shape), "datatype": "FP32", "data": a.ravel().tolist()}
            for n, a in arrays.items()
        ],
    }
    model = OPERATIONS["forward"].model_name(2)
    async with serve() as client:
        response = await client.post(f"/v2/models/{model}/infer", json=document)
        assert response.status_code == 200, response.text
    assert threads["compute"] == ["loop"]


async def test_a_refusal_on_the_loop_is_the_same_refusal(threads):
    arrays = _arrays(np.random.default_rng(5), (1, 1, 8, 8), (1, 2, 3, 3))  # C mismatch
    async with serve() as client:
        response = await client.post("/forward", **request("npz", arrays, {"padding": 1}))
    assert response.status_code == 422
    assert response.json()["detail"][0]["loc"] == ["body", "w"]
    assert threads == {"prepare": ["loop"], "compute": []}


async def test_a_small_dry_run_is_answered_on_the_event_loop(monkeypatch):
    seen = []
    original = explain_route.explanation

    def spy(*args, **kwargs):  # type: ignore[no-untyped-def]
        seen.append(threading.current_thread() is threading.main_thread())
        return original(*args, **kwargs)

    monkeypatch.setattr(explain_route, "explanation", spy)
    dry = {"operation": "forward", "x": {"shape": [1, 1, 8, 8]}, "w": {"shape": [1, 1, 3, 3]}}
    large = json.dumps(dry).replace(", ", "," + " " * 4000).encode()
    assert pipeline.INLINE_BODY_BYTES < len(large) <= explain_route.MAX_BODY_BYTES
    async with serve() as client:
        small = await client.post("/explain", json=dry)
        spaced = await client.post(
            "/explain", content=large, headers={"content-type": "application/json"}
        )
    assert small.status_code == spaced.status_code == 200, (small.text, spaced.text)
    assert small.json() == spaced.json()
    assert small.json()["outputs"] == {"out": {"shape": [1, 1, 6, 6], "dtype": "float64"}}
    assert seen == [True, False]  # on the loop; the larger body in a worker thread
