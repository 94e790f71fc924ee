"""Compressed bodies both ways: gzip and deflate requests of every form, bombs, gzipped answers."""

from __future__ import annotations

import gzip
import re
import select
import socket
import struct
import zlib
from collections.abc import Iterator
from pathlib import Path

import httpx
import numpy as np
import pytest

from app.config import Settings
from app.encoding import Acceptance, acceptance
from benchmarks.payloads import REQUEST_FORMS, read, request
from convengine import conv, conv2d, conv2d_backward
from convengine.client import ConvClient

from ..servers import Service, start_service
from .conftest import serve

pytestmark = pytest.mark.anyio
MiB = 1 << 20
LIMIT = 16 * MiB  # the real service's body limit: the 10 MB bomb is declared within it


def deflate(data: bytes, raw: bool = False) -> bytes:
    """HTTP's deflate (the zlib format), or the raw deflate stream some clients send."""
    if not raw:
        return zlib.compress(data)
    compressor = zlib.compressobj(wbits=-zlib.MAX_WBITS)
    return compressor.compress(data) + compressor.flush()


CODINGS = {
    "gzip": ("gzip", gzip.compress),
    "x-gzip": ("x-gzip", gzip.compress),
    "deflate": ("deflate", deflate),
    "raw-deflate": ("deflate", lambda data: deflate(data, raw=True)),
    "gzip-members": ("gzip", lambda data: gzip.compress(data[:100]) + gzip.compress(data[100:])),
}


def compressed(kwargs: dict, coding: str) -> dict:
    """The same request as ``kwargs``, its body compressed with ``coding`` (a CODINGS key)."""
    built = httpx.Request("POST", "http://convengine/", **kwargs)
    body = built.read()
    name, compress = CODINGS[coding]
    headers = {
        "content-type": built.headers["content-type"],
        "content-encoding": name,
        **{k: v for k, v in kwargs.get("headers", {}).items() if k != "content-type"},
    }
    return {"content": compress(body), "headers": headers, "params": kwargs.get("params")}


def gzip_bomb(compressed_bytes: int) -> tuple[bytes, int]:
    """One valid gzip member of about ``compressed_bytes`` that inflates ~1000-fold (zeros)."""
    zeros = bytes(MiB)
    compressor = zlib.compressobj(9, zlib.DEFLATED, 16 + zlib.MAX_WBITS)
    head = compressor.compress(b"")
    block = compressor.compress(zeros) + compressor.flush(zlib.Z_FULL_FLUSH)
    # After a full flush the next MiB of zeros compresses to the very same bytes.
    assert block == compressor.compress(zeros) + compressor.flush(zlib.Z_FULL_FLUSH)
    count = max(1, compressed_bytes // len(block))
    crc = 0
    for _ in range(count):
        crc = zlib.crc32(zeros, crc)
    size = count * MiB
    final = b"\x03\x00"  # an empty last block with fixed codes
    return head + block * count + final + struct.pack("<II", crc, size % (1 << 32)), size


def test_the_bomb_is_valid_gzip():
    bomb, size = gzip_bomb(5 * 1037)
    assert len(gzip.decompress(bomb)) == size == 5 * MiB


@pytest.mark.parametrize("coding", list(CODINGS))
@pytest.mark.parametrize("form", REQUEST_FORMS)
async def test_compressed_bodies_give_the_answers_of_plain_ones(client, form, coding):
    rng = np.random.default_rng(5)
    x = rng.standard_normal((2, 3, 9, 9)).astype("float32")
    w = rng.standard_normal((4, 3, 3, 3)).astype("float32")
    dout = rng.standard_normal((2, 4, 5, 5)).astype("float32")
    hyper = {"stride": 2, "padding": 1}
    for path, arrays in [
        ("/forward", {"x": x, "w": w}),
        ("/backward", {"x": x, "w": w, "dout": dout}),
    ]:
        plain = request(form, arrays, hyper, "application/x-npz")
        want = await client.post(path, **plain)
        got = await client.post(path, **compressed(plain, coding))
        assert want.status_code == got.status_code == 200, got.text
        assert got.content == want.content
    expected = conv2d_backward(dout, x, w, **hyper)
    for name, array in zip(["dx", "dw", "db"], expected):
        np.testing.assert_array_equal(read(got, ["dx", "dw", "db"])[name], array)


async def test_inflated_bytes_count_against_the_limits():
    small = Settings(max_body_bytes=64 * 1024, max_json_bytes=16 * 1024)
    async with serve(small) as client:
        npz = await client.post(
            "/forward",
            content=gzip.compress(bytes(200_000)),
            headers={"content-type": "application/x-npz", "content-encoding": "gzip"},
        )
        assert npz.status_code == 413
        assert npz.json()["detail"][0]["msg"] == "the body grew past the limit of 65536 bytes"
        document = b'{"x": [[[[1.0]]]], "w": [[[[1.0]]]], "pad": "' + b" " * 20_000 + b'"}'
        json_ = await client.post(
            "/forward",
            content=gzip.compress(document),
            headers={"content-type": "application/json", "content-encoding": "gzip"},
        )
        assert json_.status_code == 413
        assert "JSON body grew past the limit of 16384 bytes" in json_.json()["detail"][0]["msg"]
        declared = await client.post(
            "/forward",
            content=b"\0" * 70_000,
            headers={"content-type": "application/x-npz", "content-encoding": "gzip"},
        )
        assert declared.status_code == 413
        assert declared.json()["detail"][0]["loc"] == ["header", "content-length"]
        ok = await client.post(
            "/forward",
            content=gzip.compress(b'{"x": [[[[2.0]]]], "w": [[[[3.0]]]]}'),
            headers={"content-type": "application/json", "content-encoding": "gzip"},
        )
        assert ok.json() == {"out": [[[[6.0]]]], "dtype": "float64"}


@pytest.mark.parametrize("coding", ["br", "zstd", "compress", "gzip, br"])
async def test_other_codings_are_415_naming_the_accepted_ones(client, coding):
    response = await client.post(
        "/forward",
        content=b"{}",
        headers={"content-type": "application/json", "content-encoding": coding},
    )
    assert response.status_code == 415
    assert response.headers["accept-encoding"] == "gzip, deflate"
    (detail,) = response.json()["detail"]
    assert detail["loc"] == ["header", "content-encoding"]
    assert detail["type"] == "unsupported_media_type"
    assert detail["msg"] == (
        f"Content-Encoding {coding!r} is not supported: "
        "send the body as is, or compressed with gzip or deflate"
    )


async def test_the_protocol_gets_415_in_its_own_shape(client):
    response = await client.post(
        "/v2/models/conv2d/infer", content=b"{}", headers={"content-encoding": "br"}
    )
    assert response.status_code == 415
    assert "Content-Encoding 'br' is not supported" in response.json()["error"]


@pytest.mark.parametrize(
    "body, message",
    [
        (b"not gzip at all", "the gzip body cannot be inflated: Error -3"),
        (gzip.compress(b'{"x": 1}')[:-12], "the gzip body ends before its compressed stream does"),
        (gzip.compress(b"{}") + b"trailing", "the gzip body cannot be inflated"),
        (b"", "the gzip body ends before its compressed stream does"),
    ],
    ids=["corrupt", "truncated", "trailing-garbage", "empty"],
)
async def test_broken_compressed_bodies_are_400(client, body, message):
    response = await client.post(
        "/forward",
        content=body,
        headers={"content-type": "application/json", "content-encoding": "gzip"},
    )
    assert response.status_code == 400, response.text
    assert message in response.json()["detail"][0]["msg"]
    assert (await client.post("/forward", json={"x": [[[[1.0]]]], "w": [[[[1.0]]]]})).is_success


@pytest.mark.parametrize(
    ("accept_encoding", "weighed", "text", "binary"),
    [
        ("gzip, deflate, br", Acceptance(1.0, 1.0, gzip_alone=False), True, False),
        ("gzip", Acceptance(1.0, 1.0, gzip_alone=True), True, True),
        (" GZIP ; q=1.0 ,identity", Acceptance(1.0, 1.0, gzip_alone=True), True, True),
        ("x-gzip", Acceptance(1.0, 1.0, gzip_alone=True), True, True),
        ("gzip;q=0, br;q=0.5", Acceptance(0.0, 1.0, gzip_alone=False), False, False),
        ("gzip;q=nonsense", Acceptance(0.0, 1.0, gzip_alone=False), False, False),
        ("", Acceptance(0.0, 1.0, gzip_alone=False), False, False),
        # The client's preference: no coding before gzip, or gzip before no coding.
        ("gzip;q=0.5, identity", Acceptance(0.5, 1.0, gzip_alone=True), False, False),
        ("gzip, deflate, identity;q=0.5", Acceptance(1.0, 0.5, gzip_alone=False), True, True),
        ("br, gzip;q=0.8, *;q=0.1", Acceptance(0.8, 0.1, gzip_alone=False), True, True),
        # * offers every coding it does not name, no coding among them.
        ("*", Acceptance(1.0, 1.0, gzip_alone=False), True, False),
        ("*;q=0.2, identity", Acceptance(0.2, 1.0, gzip_alone=False), False, False),
        ("gzip, *;q=0", Acceptance(1.0, 0.0, gzip_alone=True), True, True),
        ("identity;q=0", Acceptance(0.0, 0.0, gzip_alone=False), False, False),
        ("gzip;q=2, identity;q=-1", Acceptance(1.0, 0.0, gzip_alone=True), True, True),
        ("gzip;q=nan", Acceptance(0.0, 1.0, gzip_alone=False), False, False),
        # Long values are weighed alike, not kept.
        ("br;q=0.1, " * 15 + "gzip", Acceptance(1.0, 1.0, gzip_alone=False), True, False),
        ("identity;q=0.1, " * 10 + "gzip", Acceptance(1.0, 0.1, gzip_alone=True), True, True),
    ],
)
def test_acceptance_weighs_gzip_against_no_coding(accept_encoding, weighed, text, binary):
    accepts = acceptance(accept_encoding)
    assert accepts == weighed
    assert (accepts.any_answer, accepts.asked) == (text, binary)


BIG = {"x": np.ones((1, 1, 40, 40)).tolist(), "w": [[[[1.0]]]]}  # a ~10 kB JSON answer


@pytest.mark.parametrize(
    "accept_encoding, accept, gzipped",
    [
        ("gzip, deflate, br, zstd", "application/json", True),
        ("gzip", "application/json", True),
        ("deflate, br", "application/json", False),
        ("gzip;q=0, deflate", "application/json", False),
        ("identity", "application/json", False),
        ("gzip, deflate, br, zstd", "application/x-npz", False),  # what libraries send anyway
        ("gzip, deflate", "application/x-npy", False),
        ("gzip", "application/x-npz", True),  # asked for by itself
        ("gzip, identity", "application/x-npy", True),
        ("gzip;q=0.5, identity", "application/json", False),  # no coding preferred
        ("gzip, deflate, identity;q=0.1", "application/x-npz", True),  # gzip preferred
        ("*", "application/json", True),
        ("*", "application/x-npz", False),
        ("x-gzip", "application/json", True),
    ],
)
async def test_answers_are_gzipped_when_accepted_and_binary_only_when_asked(
    client, accept_encoding, accept, gzipped
):
    response = await client.post(
        "/forward", json=BIG, headers={"accept-encoding": accept_encoding, "accept": accept}
    )
    assert response.status_code == 200
    assert (response.headers.get("content-encoding") == "gzip") is gzipped
    if gzipped:
        assert int(response.headers["content-length"]) < len(response.content)
    np.testing.assert_array_equal(read(response, ["out"])["out"], np.ones((1, 1, 40, 40)))


@pytest.mark.parametrize(
    ("form", "accept_encoding", "gzipped"),
    [
        ("nested", "gzip, deflate", True),  # numbers written out: half their size gzipped
        ("typed", "gzip, deflate, br, zstd", True),
        ("b64", "gzip, deflate", False),  # base64 of floats: a quarter off at best
        ("b64", "gzip, deflate, br, zstd", False),
        ("b64", "gzip", True),  # asked for by itself: a slow link
        ("npz", "gzip, deflate", True),  # an .npz request answered in JSON: numbers
    ],
)
async def test_json_answers_are_gzipped_by_what_they_hold(
    client, form, accept_encoding, gzipped, rng
):
    x = rng.standard_normal((1, 2, 24, 24)).astype(np.float32)
    w = rng.standard_normal((3, 2, 3, 3)).astype(np.float32)
    kwargs = request(form, {"x": x, "w": w}, {"padding": 1}, "application/json")
    kwargs["headers"] = {**kwargs["headers"], "accept-encoding": accept_encoding}
    response = await client.post("/forward", **kwargs)
    assert response.status_code == 200, response.text
    assert (response.headers.get("content-encoding") == "gzip") is gzipped
    assert response.headers["vary"] == "Accept-Encoding"
    np.testing.assert_allclose(
        read(response, ["out"])["out"], conv(x, w, padding=1), rtol=1e-5, atol=1e-5
    )


@pytest.mark.parametrize(("binary", "gzipped"), [(False, True), (True, False)])
async def test_protocol_answers_are_gzipped_by_what_they_hold(client, binary, gzipped):
    x = np.arange(2 * 40 * 40, dtype=np.float32).reshape(1, 2, 40, 40)
    body = {
        "inputs": [
            {"name": "x", "shape": list(x.shape), "datatype": "FP32", "data": x.ravel().tolist()},
            {"name": "w", "shape": [1, 2, 1, 1], "datatype": "FP32", "data": [1.0, 1.0]},
        ],
        "outputs": [{"name": "out", "parameters": {"binary_data": binary}}],
    }
    response = await client.post(
        "/v2/models/conv2d/infer", json=body, headers={"accept-encoding": "gzip, deflate"}
    )
    assert response.status_code == 200, response.text
    assert (response.headers.get("content-encoding") == "gzip") is gzipped


async def test_documents_and_refusals_are_gzipped_as_they_stream(client):
    document = await client.get("/openapi.json", headers={"accept-encoding": "gzip, deflate"})
    assert document.headers["content-encoding"] == "gzip"
    assert int(document.headers["content-length"]) < len(document.content) / 3
    assert document.json()["openapi"]
    refusal = await client.post(
        "/forward", json={"x": [[[[1.0]]]] * 200, "w": 7}, headers={"accept-encoding": "gzip"}
    )
    assert refusal.status_code == 422 and refusal.json()["detail"]


async def test_small_answers_stay_as_they_are(client):
    response = await client.get("/healthz", headers={"accept-encoding": "gzip"})
    assert "content-encoding" not in response.headers
    small = await client.post(
        "/forward", json={"x": [[[[1.0]]]], "w": [[[[1.0]]]]}, headers={"accept-encoding": "gzip"}
    )
    assert "content-encoding" not in small.headers


# --- a real uvicorn ---------------------------------------------------------------------------


@pytest.fixture(scope="module")
def service(tmp_path_factory) -> Iterator[Service]:
    service = start_service(
        tmp_path_factory.mktemp("compression"),
        max_body_bytes=str(LIMIT),
        max_json_bytes=str(2 * MiB),
    )
    service.wait_ready()
    yield service
    service.stop()


def _peak_rss(pid: int) -> int:
    """The process's peak resident memory so far (VmHWM), in bytes."""
    status = Path(f"/proc/{pid}/status").read_text()
    return int(re.search(r"VmHWM:\s+(\d+) kB", status).group(1)) * 1024  # type: ignore[union-attr]


def _send_until_answered(port: int, head: bytes, body: bytes) -> tuple[bytes, int]:
    """Send ``head`` and as much of ``body`` as goes before the answer; (answer, bytes sent)."""
    sent = 0
    with socket.create_connection(("127.0.0.1", port), timeout=30) as sock:
        sock.sendall(head)
        sock.setblocking(False)
        while sent < len(body):
            readable, writable, _ = select.select([sock], [sock], [], 10)
            if readable:
                break
            if writable:
                try:
                    sent += sock.send(body[sent : sent + 65536])
                except (BlockingIOError, BrokenPipeError, ConnectionResetError):
                    break
        sock.setblocking(True)
        answer = b""
        try:  # until the service closes the connection (a reset: it left our bytes unread)
            while chunk := sock.recv(65536):
                answer += chunk
        except ConnectionResetError:
            pass
    return answer, sent


def test_a_10_mb_bomb_is_refused_at_the_limit_with_bounded_memory(service):
    bomb, inflated = gzip_bomb(10 * MiB)
    assert len(bomb) > 10 * 10**6 and inflated > 9 * 1024 * MiB  # 10 MB -> ~10 GiB
    before = _peak_rss(service.process.pid)
    head = (
        "POST /forward HTTP/1.1\r\nHost: convengine\r\nContent-Type: application/x-npz\r\n"
        f"Content-Encoding: gzip\r\nContent-Length: {len(bomb)}\r\n\r\n"
    ).encode()
    answer, sent = _send_until_answered(service.port, head, bomb)
    assert answer.startswith(b"HTTP/1.1 413"), answer[:300]
    assert b"the body grew past the limit of 16777216 bytes" in answer
    assert sent < len(bomb)
    growth = _peak_rss(service.process.pid) - before
    assert growth < 2 * LIMIT, f"peak memory grew by {growth / MiB:.0f} MiB"
    assert httpx.get(f"{service.url}/healthz").status_code == 200
    (line,) = [entry for entry in service.log().splitlines() if '"status":413' in entry]
    bytes_in = int(re.search(r'"bytes_in":(\d+)', line).group(1))  # type: ignore[union-attr]
    assert bytes_in < MiB, f"the service read {bytes_in} compressed bytes of {len(bomb)}"


@pytest.mark.parametrize("form", REQUEST_FORMS)
@pytest.mark.parametrize("coding", ["gzip", "deflate"])
def test_compressed_bodies_through_uvicorn(service, form, coding):
    rng = np.random.default_rng(7)
    x = rng.standard_normal((2, 3, 8, 8)).astype("float32")
    w = rng.standard_normal((5, 3, 3, 3)).astype("float32")
    plain = request(form, {"x": x, "w": w}, {"padding": "same"})
    with httpx.Client(base_url=service.url) as client:
        want = client.post("/forward", **plain)
        got = client.post("/forward", **compressed(plain, coding))
    assert want.status_code == got.status_code == 200, got.text
    assert got.content == want.content  # answered in the request's form, compressed or not
    np.testing.assert_array_equal(read(got, ["out"])["out"], conv2d(x, w, padding="same"))


def test_the_client_sends_gzip_and_gets_gzip(service):
    rng = np.random.default_rng(8)
    x = np.zeros((4, 8, 32, 32), np.float32)  # sparse: worth compressing
    x[:, :, 16, 16] = 1
    w = rng.standard_normal((8, 8, 3, 3)).astype("float32")
    seen: list[httpx.Response] = []
    transport = httpx.HTTPTransport()
    with (
        httpx.Client(
            base_url=service.url, transport=transport, event_hooks={"response": [seen.append]}
        ) as http,
        ConvClient(service.url, client=http, compress=True) as client,
    ):
        np.testing.assert_array_equal(client.forward(x, w, padding=1), conv2d(x, w, padding=1))
    (response,) = [r for r in seen if r.request.method == "POST"]  # after GET /limits
    assert response.request.headers["content-encoding"] == "gzip"
    assert response.headers["content-encoding"] == "gzip"
    assert len(response.request.content) < x.nbytes / 10


@pytest.mark.parametrize("chunk", [1, 7, 4096])
@pytest.mark.parametrize("coding", list(CODINGS))
async def test_bodies_arriving_in_pieces_are_inflated_alike(client, coding, chunk):
    document = b'{"x": [[[[1.0, 2.0], [3.0, 4.0]]]], "w": [[[[2.0]]]], "padding": "same"}'
    name, compress = CODINGS[coding]
    body = compress(document)

    async def pieces():
        for start in range(0, len(body), chunk):
            yield body[start : start + chunk]

    response = await client.post(
        "/forward",
        content=pieces(),
        headers={"content-type": "application/json", "content-encoding": name},
    )
    assert response.status_code == 200, response.text
    assert response.json()["out"] == [[[[2.0, 4.0], [6.0, 8.0]]]]
