"""Arbitrary bytes in every wire format never earn a 5xx, and the service keeps answering."""

from __future__ import annotations

import io
import zipfile

import httpx
import numpy as np
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from app.config import Settings
from app.main import create_app
from benchmarks.payloads import npy_bytes

APP = create_app(Settings())
FUZZ = settings(max_examples=150, deadline=None, suppress_health_check=list(HealthCheck))


def _post(path: str, **kwargs) -> httpx.Response:
    import anyio

    async def call() -> httpx.Response:
        transport = httpx.ASGITransport(app=APP, raise_app_exceptions=False)
        async with httpx.AsyncClient(transport=transport, base_url="http://fuzz") as client:
            return await client.post(path, **kwargs)

    return anyio.run(call)


def _assert_refused_cleanly(response: httpx.Response) -> None:
    assert response.status_code < 500 or response.status_code == 503, response.text
    if response.status_code >= 400:
        body = response.json()
        assert "detail" in body or "error" in body
        assert "Traceback" not in response.text


VALID_NPY = npy_bytes(np.ones((1, 1, 4, 4)))


@FUZZ
@given(st.binary(max_size=600))
def test_any_bytes_as_json(body):
    _assert_refused_cleanly(
        _post("/forward", content=body, headers={"content-type": "application/json"})
    )


@FUZZ
@given(
    st.recursive(
        st.none()
        | st.booleans()
        | st.integers()
        | st.floats(allow_nan=False, allow_infinity=False)
        | st.text(max_size=5),
        lambda children: (
            st.lists(children, max_size=4)
            | st.dictionaries(
                st.sampled_from(
                    [
                        "x",
                        "w",
                        "b",
                        "dout",
                        "shape",
                        "dtype",
                        "data",
                        "b64",
                        "stride",
                        "padding",
                        "groups",
                        "dilation",
                    ]
                ),
                children,
                max_size=5,
            )
        ),
        max_leaves=30,
    )
)
def test_any_json_document(document):
    for path in ("/forward", "/backward", "/v2/models/conv2d/infer"):
        _assert_refused_cleanly(_post(path, json=document))


@FUZZ
@given(st.binary(max_size=400), st.integers(0, len(VALID_NPY)))
def test_any_bytes_and_mutated_npy_in_multipart(noise, cut):
    mutated = VALID_NPY[:cut] + noise
    for x in (noise, mutated):
        files = {"x": ("x.npy", x), "w": ("w.npy", npy_bytes(np.ones((1, 1, 3, 3))))}
        _assert_refused_cleanly(_post("/forward", files=files))


@FUZZ
@given(st.binary(max_size=600), st.integers(0, 2000), st.binary(max_size=50))
def test_any_bytes_and_mutated_archives_as_npz(noise, position, patch):
    stream = io.BytesIO()
    with zipfile.ZipFile(stream, "w", compression=zipfile.ZIP_DEFLATED) as archive:
        archive.writestr("x.npy", VALID_NPY)
        archive.writestr("w.npy", npy_bytes(np.ones((1, 1, 3, 3))))
    valid = stream.getvalue()
    position %= len(valid)
    mutated = valid[:position] + patch + valid[position + len(patch) :]
    for body in (noise, mutated):
        _assert_refused_cleanly(
            _post("/forward", content=body, headers={"content-type": "application/x-npz"})
        )


@FUZZ
@given(
    st.binary(max_size=400),
    st.text(st.characters(min_codepoint=33, max_codepoint=126), max_size=12),
)
def test_any_bytes_in_the_inference_protocol(body, header_length):
    headers = {
        "inference-header-content-length": header_length,
        "content-type": "application/octet-stream",
    }
    _assert_refused_cleanly(
        _post("/v2/models/conv2d_backward/infer", content=body, headers=headers)
    )


def test_still_serving_after_the_fuzz():
    response = _post("/forward", json={"x": [[[[1.0, 2.0], [3.0, 4.0]]]], "w": [[[[2.0]]]]})
    assert response.status_code == 200
    assert response.json()["out"] == [[[[2.0, 4.0], [6.0, 8.0]]]]
