"""API keys: accepted, refused, added and revoked while the service runs; never logged."""

from __future__ import annotations

import hashlib
import logging
import os
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import httpx
import numpy as np
import pydantic
import pytest
import tritonclient.http as triton
from tritonclient.utils import InferenceServerException

from app.auth import KeyFile
from app.config import Settings
from app.logs import JsonFormatter
from convengine import conv2d
from convengine.client import AsyncConvClient, ConvClient, ConvServiceError

from ..servers import Service, start_service
from .conftest import serve

pytestmark = pytest.mark.anyio

KEY = "plain-key-for-tests-0123"
HASHED = "hashed-key-for-tests-4567"  # the file holds only its SHA-256
FORWARD = {"x": [[[[1.0, 2.0], [3.0, 4.0]]]], "w": [[[[2.0]]]]}
PUBLIC = [
    "/healthz",
    "/readyz",
    "/v2/health/live",
    "/v2/health/ready",
    "/",
    "/static/playground.js",
    "/docs",
    "/docs/oauth2-redirect",
    "/redoc",
    "/static-offline-docs/swagger-ui.css",
    "/openapi.json",
]
PROTECTED = ["/version", "/metrics", "/v2", "/v2/models/conv2d", "/v2/models/conv2d/ready"]


def sha256(text: str) -> str:
    return hashlib.sha256(text.encode()).hexdigest()


def write_keys(path: Path, *lines: str) -> None:
    """Replace the file as editors and Kubernetes do: a new file renamed over the old one."""
    fresh = path.with_suffix(".new")
    fresh.write_text("\n".join(lines) + "\n")
    os.replace(fresh, path)


@pytest.fixture
def keys_file(tmp_path) -> Path:
    path = tmp_path / "api-keys"
    write_keys(path, "# convengine keys", "", KEY, sha256(HASHED).upper())
    return path


def bearer(key: str) -> dict[str, str]:
    return {"authorization": f"Bearer {key}"}


async def test_a_known_key_in_either_header_is_accepted(keys_file):
    async with serve(Settings(api_keys_file=keys_file)) as client:
        for headers in (bearer(KEY), {"x-api-key": KEY}, bearer(HASHED), {"X-API-Key": HASHED}):
            response = await client.post("/forward", json=FORWARD, headers=headers)
            assert response.status_code == 200, (headers, response.text)
            assert response.json()["out"] == [[[[2.0, 4.0], [6.0, 8.0]]]]


@pytest.mark.parametrize(
    "headers, message, challenge",
    [
        ({}, "this service needs an API key", 'Bearer realm="convengine"'),
        (
            bearer("wrong"),
            "the API key is not known here (or was revoked)",
            'Bearer realm="convengine", error="invalid_token"',
        ),
        (
            bearer(sha256(HASHED)),  # the hash in the file is not itself a key
            "the API key is not known here",
            'Bearer realm="convengine", error="invalid_token"',
        ),
        ({"authorization": f"Basic {KEY}"}, "this service needs an API key", "Bearer"),
        ({"authorization": "Bearer "}, "this service needs an API key", "Bearer"),
    ],
    ids=["missing", "wrong", "hash-as-key", "basic", "empty-bearer"],
)
async def test_a_missing_or_wrong_key_is_401_with_a_challenge(
    keys_file, headers, message, challenge
):
    async with serve(Settings(api_keys_file=keys_file)) as client:
        response = await client.post("/forward", json=FORWARD, headers=headers)
        assert response.status_code == 401
        assert response.headers["www-authenticate"].startswith(challenge)
        (detail,) = response.json()["detail"]
        assert detail["loc"] == ["header", "authorization"]
        assert detail["type"] == "unauthorized"
        assert message in detail["msg"]


async def test_probes_and_static_pages_are_public_the_rest_is_not(keys_file):
    async with serve(Settings(api_keys_file=keys_file)) as client:
        for path in PUBLIC:
            assert (await client.get(path)).status_code == 200, path
        for path in PROTECTED:
            assert (await client.get(path)).status_code == 401, path
            assert (await client.get(path, headers=bearer(KEY))).status_code == 200, path


async def test_the_protocol_gets_its_401_in_its_own_shape(keys_file):
    async with serve(Settings(api_keys_file=keys_file)) as client:
        response = await client.post("/v2/models/conv2d/infer", json={"inputs": []})
        assert response.status_code == 401
        assert response.json() == {
            "error": "authorization: this service needs an API key: "
            "send Authorization: Bearer <key> or X-API-Key"
        }


async def test_a_refused_request_is_answered_before_its_body_is_read(keys_file):
    pulled = 0

    async def body():
        nonlocal pulled
        for _ in range(100):
            pulled += 1
            yield b"0" * 65536

    async with serve(Settings(api_keys_file=keys_file)) as client:
        response = await client.post(
            "/forward", content=body(), headers={"content-type": "application/x-npz"}
        )
        assert response.status_code == 401
        assert response.headers["connection"] == "close"
        assert pulled <= 1  # httpx's transport may start the stream; the service read nothing


async def test_the_async_client_sends_its_key(keys_file):
    x, w = np.ones((1, 1, 4, 4)), np.ones((2, 1, 3, 3))
    async with serve(Settings(api_keys_file=keys_file)) as http:  # closed by serve alone
        client = AsyncConvClient("http://convengine", client=http, api_key=HASHED)
        np.testing.assert_array_equal(await client.forward(x, w), conv2d(x, w))
        keyless = AsyncConvClient("http://convengine", client=http, compress=True)
        with pytest.raises(ConvServiceError) as refused:
            await keyless.forward(x, w)
    assert refused.value.status_code == 401


async def test_logs_and_metrics_name_the_key_by_its_id_only(keys_file, caplog):
    caplog.set_level(logging.INFO)
    async with serve(Settings(api_keys_file=keys_file)) as client:
        await client.post("/forward", json=FORWARD, headers=bearer(KEY))
        await client.post("/forward", json=FORWARD, headers=bearer("a-wrong-key"))
        metrics = (await client.get("/metrics", headers={"x-api-key": HASHED})).text
    text = "\n".join(JsonFormatter().format(record) for record in caplog.records)
    assert f'"key":"{sha256(KEY)[:8]}"' in text
    assert f"{sha256(KEY)[:8]}, {sha256(HASHED)[:8]}" in text  # the reload message
    for secret in (KEY, HASHED, "a-wrong-key"):
        assert secret not in text
    line = f'convengine_key_requests_total{{key="{sha256(KEY)[:8]}",status="200"}}'
    assert line in metrics
    assert KEY not in metrics


async def test_keys_are_added_and_revoked_without_a_restart(keys_file):
    async with serve(Settings(api_keys_file=keys_file)) as client:
        assert (await client.get("/version", headers=bearer("new-key"))).status_code == 401
        write_keys(keys_file, KEY, "new-key")
        assert (await client.get("/version", headers=bearer("new-key"))).status_code == 200
        write_keys(keys_file, "new-key")  # KEY revoked, HASHED revoked
        assert (await client.get("/version", headers=bearer(KEY))).status_code == 401
        assert (await client.get("/version", headers=bearer(HASHED))).status_code == 401
        keys_file.unlink()  # unreadable for a moment: the keys last read stay
        assert (await client.get("/version", headers=bearer("new-key"))).status_code == 200
        write_keys(keys_file)  # empty: every key refused
        assert (await client.get("/version", headers=bearer("new-key"))).status_code == 401
        assert (await client.get("/healthz")).status_code == 200


def test_a_keys_file_that_cannot_be_read_stops_the_start(tmp_path):
    with pytest.raises(pydantic.ValidationError, match="Path does not point to a file"):
        Settings(api_keys_file=tmp_path / "missing")
    with pytest.raises(FileNotFoundError):
        KeyFile(tmp_path / "missing")


def test_keys_are_off_by_default(monkeypatch):
    assert Settings().api_keys_file is None
    monkeypatch.setenv("CONVENGINE_API_KEYS_FILE", "")  # set but empty: off too
    assert Settings().api_keys_file is None


async def test_the_docs_offer_to_send_a_key(keys_file):
    async with serve(Settings(api_keys_file=keys_file)) as client:
        schema = (await client.get("/openapi.json")).json()
    assert schema["components"]["securitySchemes"]["bearer"]["scheme"] == "bearer"
    assert schema["components"]["securitySchemes"]["apiKey"]["name"] == "X-API-Key"
    assert schema["security"] == [{"bearer": []}, {"apiKey": []}]
    async with serve() as client:
        assert "security" not in (await client.get("/openapi.json")).json()


# --- a real uvicorn, with our client and NVIDIA's ---------------------------------------------


@pytest.fixture(scope="module")
def service(tmp_path_factory) -> Iterator[tuple[Service, Path]]:
    folder = tmp_path_factory.mktemp("keys")
    keys_file = folder / "api-keys"
    write_keys(keys_file, KEY)
    service = start_service(folder, api_keys_file=str(keys_file), log_level="info")
    service.wait_ready()
    yield service, keys_file
    log = service.stop()
    assert KEY not in log and "added-later" not in log


def test_keys_through_uvicorn_accepted_refused_added_revoked(service):
    service_, keys_file = service
    rng = np.random.default_rng(11)
    x = rng.standard_normal((1, 2, 6, 6)).astype("float32")
    w = rng.standard_normal((3, 2, 3, 3)).astype("float32")
    with ConvClient(service_.url, api_key=KEY) as client:
        np.testing.assert_array_equal(client.forward(x, w, padding=1), conv2d(x, w, padding=1))
    with ConvClient(service_.url, api_key="added-later", compress=True) as later:
        with pytest.raises(ConvServiceError) as refused:
            later.forward(x, w)
        assert refused.value.status_code == 401
        write_keys(keys_file, KEY, "added-later")
        np.testing.assert_array_equal(later.forward(x, w), conv2d(x, w))
        write_keys(keys_file, KEY)
        with pytest.raises(ConvServiceError, match="HTTP 401: the API key is not known"):
            later.forward(x, w)
    response = httpx.get(f"{service_.url}/version")
    assert response.status_code == 401
    assert response.headers["www-authenticate"] == 'Bearer realm="convengine"'


@pytest.mark.parametrize("algorithm", ["gzip", "deflate"])
def test_tritonclient_sends_the_key_with_headers(service, algorithm):
    service_, _ = service
    client = triton.InferenceServerClient(url=f"127.0.0.1:{service_.port}")
    try:
        assert client.is_server_live() and client.is_server_ready()  # probes need no key
        with pytest.raises(InferenceServerException, match="needs an API key"):
            client.get_model_metadata("conv2d")
        x = np.ones((1, 2, 5, 5), np.float32)
        w = np.ones((4, 2, 3, 3), np.float32)
        inputs = []
        for name, array in (("x", x), ("w", w)):
            tensor = triton.InferInput(name, list(array.shape), "FP32")
            tensor.set_data_from_numpy(array)
            inputs.append(tensor)
        result = client.infer(
            "conv2d",
            inputs,
            headers={"Authorization": f"Bearer {KEY}"},
            parameters={"padding": "same"},
            request_compression_algorithm=algorithm,
            response_compression_algorithm=algorithm,  # deflate: answered as is
        )
        np.testing.assert_array_equal(result.as_numpy("out"), conv2d(x, w, padding="same"))
        assert client.get_model_metadata("conv2d", headers={"X-API-Key": KEY})["name"] == "conv2d"
    finally:
        client.close()


# --- key files that are not what they should be ----------------------------------------------


async def test_a_byte_order_mark_is_not_part_of_the_first_key(tmp_path):
    path = tmp_path / "api-keys"
    path.write_bytes("\ufeff".encode() + f"{KEY}\n".encode())  # as Windows editors save
    async with serve(Settings(api_keys_file=path)) as client:
        assert (await client.post("/forward", json=FORWARD, headers=bearer(KEY))).status_code == 200


@pytest.mark.parametrize(
    "garbage", [b"\xff\xfe\x00k\x00e\x00y", b"key-one\n\x80\x81\x82\n"], ids=["utf16", "binary"]
)
def test_a_keys_file_that_is_not_utf8_stops_the_service_at_start_naming_it(tmp_path, garbage):
    path = tmp_path / "api-keys"
    path.write_bytes(garbage)
    with pytest.raises(pydantic.ValidationError, match="is not UTF-8 text: byte 0x"):
        Settings(api_keys_file=path)
    run = subprocess.run(
        [sys.executable, "-m", "app"],
        env={**os.environ, "CONVENGINE_API_KEYS_FILE": str(path), "CONVENGINE_PORT": "0"},
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert run.returncode == 2, run.stderr
    lines = run.stderr.strip().splitlines()
    assert len(lines) == 1 and "CONVENGINE_API_KEYS_FILE" in lines[0] and "not UTF-8" in lines[0], (
        lines
    )


async def test_a_keys_file_turned_to_garbage_while_serving_keeps_the_last_keys(keys_file, caplog):
    async with serve(Settings(api_keys_file=keys_file)) as client:
        assert (await client.post("/forward", json=FORWARD, headers=bearer(KEY))).status_code == 200
        fresh = keys_file.with_suffix(".new")
        fresh.write_bytes(b"\x00\xff garbage \xfe\n")
        os.replace(fresh, keys_file)
        with caplog.at_level(logging.ERROR, logger="app.auth"):
            response = await client.post("/forward", json=FORWARD, headers=bearer(KEY))
        assert response.status_code == 200, response.text  # it was a 500 for every keyed request
        assert (
            await client.post("/forward", json=FORWARD, headers=bearer("nope"))
        ).status_code == 401
        assert any("not read, the last keys kept" in r.getMessage() for r in caplog.records)
        write_keys(keys_file, "a-new-key-0000")  # a good file again is read again
        assert (
            await client.post("/forward", json=FORWARD, headers=bearer("a-new-key-0000"))
        ).status_code == 200
