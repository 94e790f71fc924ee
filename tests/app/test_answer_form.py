"""Answers in the request's form: with no Accept (or one that allows anything), a binary
request gets ``.npz`` and a JSON request JSON; an Accept that names a form wins."""

from __future__ import annotations

import io

import numpy as np
import pytest

from convengine import conv2d

pytestmark = pytest.mark.anyio
X = np.arange(16, dtype=np.float32).reshape(1, 1, 4, 4)
W = np.ones((2, 1, 3, 3), dtype=np.float32)
NPZ = "application/x-npz"


def _npz(**arrays: np.ndarray) -> bytes:
    stream = io.BytesIO()
    np.savez(stream, **arrays)
    return stream.getvalue()


def _npy(array: np.ndarray) -> bytes:
    stream = io.BytesIO()
    np.save(stream, array)
    return stream.getvalue()


def _out(response) -> np.ndarray:
    kind = response.headers["content-type"]
    if kind == NPZ:
        with np.load(io.BytesIO(response.content), allow_pickle=False) as archive:
            return archive["out"]
    if kind == "application/x-npy":
        return np.load(io.BytesIO(response.content), allow_pickle=False)
    return np.asarray(response.json()["out"], dtype=response.json()["dtype"])


def _request(form: str) -> dict[str, object]:
    if form == "npz":
        return {
            "content": _npz(x=X, w=W),
            "headers": {"content-type": NPZ},
            "params": {"padding": 1},
        }
    if form == "multipart":
        files = {"x": ("x.npy", _npy(X)), "w": ("w.npy", _npy(W))}
        return {"files": files, "data": {"padding": "1"}}
    return {"json": {"x": X.tolist(), "w": W.tolist(), "padding": 1, "dtype": "float32"}}


@pytest.mark.parametrize(
    ("form", "accept", "answer"),
    [
        ("npz", None, NPZ),
        ("npz", "*/*", NPZ),
        ("npz", "application/*", NPZ),
        ("multipart", None, NPZ),
        ("multipart", "*/*", NPZ),
        ("json", None, "application/json"),
        ("json", "*/*", "application/json"),
        ("npz", "application/json", "application/json"),  # an explicit Accept wins
        ("json", NPZ, NPZ),
        ("multipart", "application/x-npy", "application/x-npy"),
        ("npz", "text/html, */*;q=0.8", NPZ),  # what a browser sends: anything, its default
    ],
)
async def test_the_answer_takes_the_request_s_form_unless_accept_names_one(
    client, form, accept, answer
):
    request = _request(form)
    if accept is not None:
        request["headers"] = {**request.get("headers", {}), "accept": accept}
    response = await client.post("/forward", **request)
    assert response.status_code == 200, response.text
    assert response.headers["content-type"] == answer
    np.testing.assert_allclose(_out(response), conv2d(X, W, padding=1), rtol=1e-6)


async def test_a_binary_request_that_cannot_be_answered_as_asked_is_still_406(client):
    response = await client.post(
        "/backward",
        content=_npz(x=X, w=W, dout=np.ones((1, 2, 2, 2), np.float32)),
        headers={"content-type": NPZ, "accept": "application/x-npy"},
    )
    assert response.status_code == 406
    assert "application/x-npz" in response.json()["detail"][0]["msg"]
