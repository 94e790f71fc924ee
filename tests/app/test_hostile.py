"""A hostile corpus, one family of input a test: each earns a 4xx naming its field, and the
service keeps serving.

Hypothesis draws the members of each family (sizes, counts, positions); the families are the
ones seen from outside: zip directories that lie about their size, booleans among numbers,
multipart boundaries past the parser's bound, invented HTTP methods, and protocol JSON larger
than the JSON limit under another Content-Type.
"""

from __future__ import annotations

import contextlib
import io
import json
import socket
import struct
import threading
import time
import zipfile

import httpx
import numpy as np
import pytest
from hypothesis import given
from hypothesis import strategies as st

from app.codecs.npz import MAX_DIRECTORY_BYTES, MAX_MEMBERS
from app.config import Settings
from app.errors import brief
from benchmarks.payloads import npy_bytes, npz_bytes, request

from ..servers import start_service
from .conftest import serve

pytestmark = pytest.mark.anyio

X = [[[[1.0, 2.0], [3.0, 4.0]]]]
W = [[[[1.0]]]]
NPZ = {"content-type": "application/x-npz"}


@pytest.fixture(scope="module")
def anyio_backend() -> str:
    return "asyncio"


async def _refused(client, method: str, path: str, status: int, loc: list, fragment: str, **kw):
    response = await client.request(method, path, **kw)
    assert response.status_code == status, response.text
    if path.startswith("/v2"):
        message = response.json()["error"]
        assert fragment in message and ".".join(map(str, loc[1:])) in message, message
    else:
        detail = response.json()["detail"][0]
        assert detail["loc"] == loc and fragment in detail["msg"], detail
    alive = await client.post("/forward", json={"x": X, "w": W})
    assert alive.status_code == 200 and alive.json()["out"] == X


def _with_end_record(entries: int, size: int) -> bytes:
    """A real .npz whose end-of-central-directory record declares ``entries`` and ``size``."""
    body = bytearray(npz_bytes(x=np.ones((1, 1, 2, 2)), w=np.ones((1, 1, 1, 1))))
    end = body.rfind(b"PK\x05\x06")
    struct.pack_into("<HHI", body, end + 8, min(entries, 0xFFFF), min(entries, 0xFFFF), size)
    return bytes(body)


def _with_zip64_record(entries: int, size: int) -> bytes:
    """A real .npz whose classic end record is saturated and whose zip64 record declares."""
    body = npz_bytes(x=np.ones((1, 1, 2, 2)), w=np.ones((1, 1, 1, 1)))
    end = body.rfind(b"PK\x05\x06")
    (offset,) = struct.unpack_from("<I", body, end + 16)
    zip64_at = end
    record = struct.pack(
        "<4sQHHIIQQQQ", b"PK\x06\x06", 44, 45, 45, 0, 0, entries, entries, size, offset
    )
    locator = struct.pack("<4sIQI", b"PK\x06\x07", 0, zip64_at, 1)
    classic = struct.pack(
        "<4sHHHHIIH", b"PK\x05\x06", 0, 0, 0xFFFF, 0xFFFF, 0xFFFFFFFF, 0xFFFFFFFF, 0
    )
    return body[:end] + record + locator + classic


@given(entries=st.integers(MAX_MEMBERS + 1, 0xFFFE))
async def test_zip_directory_entry_count_checked_from_the_end_record(entries):
    async with serve() as client:
        body = _with_end_record(entries, 100)
        await _refused(
            client,
            "POST",
            "/forward",
            422,
            ["body"],
            f"declares {entries} members",
            content=body,
            headers=NPZ,
        )


@given(size=st.integers(MAX_DIRECTORY_BYTES + 1, 0xFFFFFFFE))
async def test_zip_directory_size_checked_from_the_end_record(size):
    async with serve() as client:
        body = _with_end_record(2, size)
        await _refused(
            client,
            "POST",
            "/forward",
            422,
            ["body"],
            f"declares {size} bytes",
            content=body,
            headers=NPZ,
        )


@given(entries=st.integers(MAX_MEMBERS + 1, 2**63 - 1))
async def test_zip64_directory_checked_from_its_end_record(entries):
    async with serve() as client:
        body = _with_zip64_record(entries, 200)
        await _refused(
            client,
            "POST",
            "/forward",
            422,
            ["body"],
            f"declares {entries} members",
            content=body,
            headers=NPZ,
        )


async def test_two_million_entries_are_refused_at_once():
    """The issue's archive: a directory of two million entries, refused before zipfile reads it."""
    stream = io.BytesIO()
    with zipfile.ZipFile(stream, "w") as archive:
        for index in range(MAX_MEMBERS + 1):
            archive.writestr(f"m{index}", b"")
    async with serve() as client:
        await _refused(
            client,
            "POST",
            "/forward",
            422,
            ["body"],
            f"declares {MAX_MEMBERS + 1} members",
            content=stream.getvalue(),
            headers=NPZ,
        )
        await _refused(
            client,
            "POST",
            "/forward",
            422,
            ["body"],
            "declares 2000000 members",
            content=_with_zip64_record(2_000_000, 92_000_000),
            headers=NPZ,
        )


def _with_boolean(values: list[float], position: int, flag: bool) -> list:
    mixed: list = list(values)
    mixed.insert(position % (len(mixed) + 1), flag)
    return mixed


numbers = st.lists(st.floats(-1e6, 1e6) | st.integers(-1000, 1000), min_size=1, max_size=12)


@given(values=numbers, position=st.integers(0, 100), flag=st.booleans())
async def test_booleans_among_numbers_are_refused(values, position, flag):
    row = _with_boolean(values, position, flag)
    typed = {"shape": [1, 1, 1, len(row)], "dtype": "float64", "data": row}
    infer = {
        "inputs": [
            {"name": "x", "shape": [1, 1, 1, len(row)], "datatype": "FP64", "data": row},
            {"name": "w", "shape": [1, 1, 1, 1], "datatype": "FP64", "data": [1.0]},
        ]
    }
    async with serve() as client:
        await _refused(
            client,
            "POST",
            "/forward",
            422,
            ["body", "x"],
            "found true/false",
            json={"x": [[[row]]], "w": W},
        )
        await _refused(
            client,
            "POST",
            "/forward",
            422,
            ["body", "x", "data"],
            "found true/false",
            json={"x": typed, "w": W},
        )
        await _refused(
            client,
            "POST",
            "/v2/models/conv2d/infer",
            400,
            ["inputs", "x"],
            "found true/false",
            json=infer,
        )


@given(length=st.integers(257, 4000))
async def test_a_multipart_boundary_past_the_parsers_bound_is_a_400(length):
    boundary = "b" * length
    body = f"--{boundary}\r\nContent-Disposition: form-data; name=stride\r\n\r\n1\r\n--{boundary}--\r\n"
    headers = {"content-type": f"multipart/form-data; boundary={boundary}"}
    async with serve() as client:
        await _refused(
            client,
            "POST",
            "/forward",
            400,
            ["header", "content-type"],
            f"{length} characters long",
            content=body,
            headers=headers,
        )


@given(method=st.text(st.sampled_from("ABCDEFGHIJKLMNOPQRSTUVWXYZ"), min_size=3, max_size=30))
async def test_invented_methods_do_not_become_metric_labels(method):
    async with serve() as client:
        response = await client.request(method, "/healthz")
        assert response.status_code in (200, 405)
        metrics = (await client.get("/metrics")).text
    known = {"GET", "HEAD", "POST", "PUT", "PATCH", "DELETE", "OPTIONS"}
    if method not in known:
        assert f'method="{method}"' not in metrics
        assert 'method="other"' in metrics


@given(extra=st.integers(1, 5000), header=st.booleans())
async def test_protocol_json_is_held_to_the_json_limit_whatever_its_type(extra, header):
    limit = 2048
    document = b'{"inputs": [], "id": "' + b"a" * (limit + extra) + b'"}'
    headers = {"content-type": "application/octet-stream"}
    if header:
        headers["inference-header-content-length"] = str(len(document))
    where = ["header", "inference-header-content-length"] if header else ["body"]
    async with serve(Settings(max_json_bytes=limit)) as client:
        await _refused(
            client,
            "POST",
            "/v2/models/conv2d/infer",
            413,
            where,
            f"over the limit of {limit} bytes for JSON",
            content=document,
            headers=headers,
        )


async def test_a_json_body_under_another_label_is_still_held_to_the_json_limit():
    async with serve(Settings(max_json_bytes=2048)) as client:
        for kind in ("application/problem+json", "application/vnd.api+json"):
            body = b'{"x": [[[[' + b"1," * 2000 + b'1]]]], "w": [[[[1]]]]}'
            await _refused(
                client,
                "POST",
                "/forward",
                413,
                ["header", "content-length"],
                "JSON body",
                content=body,
                headers={"content-type": kind},
            )


async def test_npy_header_with_negative_dimensions_is_a_400():
    good = npy_bytes(np.ones((1, 1, 2, 2)))
    bad = good.replace(b"(1, 1, 2, 2)", b"(-1, -1, 2, 2)")
    files = {"x": ("x.npy", bad), "w": ("w.npy", npy_bytes(np.ones((1, 1, 1, 1))))}
    async with serve() as client:
        await _refused(
            client, "POST", "/forward", 400, ["body", "x"], "not a valid .npy", files=files
        )


# Digits of every script and superscripts, among ASCII digits and signs; or ASCII numbers of
# more digits than any hyperparameter has. None of them is a number in a text form.
_DIGITS = st.characters(categories=("Nd", "No"))
not_numbers = st.text(_DIGITS | st.sampled_from("0123456789-+ "), min_size=1, max_size=12).filter(
    lambda text: not text.isascii()
) | st.from_regex(r"-?[0-9]{10,60}", fullmatch=True)


@given(value=not_numbers)
async def test_text_that_is_not_an_ascii_number_is_refused_by_name(value):
    x, w = np.ones((1, 1, 4, 4)), np.ones((1, 1, 3, 3))
    document = {
        "parameters": {"stride": value},
        "inputs": [
            {"name": "x", "shape": [1, 1, 4, 4], "datatype": "FP64", "data": [1.0] * 16},
            {"name": "w", "shape": [1, 1, 3, 3], "datatype": "FP64", "data": [1.0] * 9},
        ],
    }
    async with serve() as client:
        for form, where in (("multipart", "body"), ("npz", "query")):
            await _refused(
                client,
                "POST",
                "/forward",
                422,
                [where, "stride"],
                "integer",
                **request(form, {"x": x, "w": w}, {"stride": value}),
            )
        await _refused(
            client,
            "POST",
            "/v2/models/conv2d/infer",
            400,
            ["parameters", "stride"],
            "integer",
            json=document,
        )
        if value.isascii() and value.isdigit() and int(value) <= 2:
            return  # a number after all, for a length: zeros
        header = {"inference-header-content-length": value.encode()}
        await _refused(
            client,
            "POST",
            "/v2/models/conv2d/infer",
            400,
            ["header", "inference-header-content-length"],
            "Inference-Header-Content-Length",
            content=b"{}",
            headers=header,
        )


# --- values nested a thousand lists deep: refused by name, never a 500 ----------------------

DEEP = "[" * 1000 + "1" + "]" * 1000  # 2 kB; Python's repr recursion limit is 1,000
_ONE = "[[[[1.0]]]]"


@pytest.mark.parametrize(
    ("path", "content", "content_type", "status", "loc"),
    [
        (
            "/forward",
            f'{{"x": {_ONE}, "w": {_ONE}, "padding": {DEEP}}}',
            "application/json",
            422,
            ["body", "padding", 0, 0],
        ),
        (
            "/forward",
            f'{{"x": {_ONE}, "w": {_ONE}, "dtype": {DEEP}}}',
            "application/json",
            422,
            ["body", "dtype"],
        ),
        (
            "/forward",
            f'{{"x": {{"shape": {DEEP}, "dtype": "float32", "data": [1]}}, "w": {_ONE}}}',
            "application/json",
            422,
            ["body", "x", "shape"],
        ),
        (
            "/forward",
            f'{{"x": {{"shape": [1, 1, 1, 1], "dtype": {DEEP}, "data": [1]}}, "w": {_ONE}}}',
            "application/json",
            422,
            ["body", "x", "dtype"],
        ),
        (
            "/explain",
            f'{{"operation": "forward", "x": {{"shape": {DEEP}}}, "w": {{"shape": [1, 1, 1, 1]}}}}',
            "application/json",
            422,
            ["body", "x", "shape"],
        ),
        ("/explain", f'{{"operation": {DEEP}}}', "application/json", 422, ["body", "operation"]),
    ],
    ids=[
        "json-padding",
        "json-dtype",
        "typed-shape",
        "typed-dtype",
        "explain-shape",
        "explain-operation",
    ],
)
async def test_deep_nesting_in_a_json_body_is_refused_by_name(
    client, path, content, content_type, status, loc
):
    response = await client.post(path, content=content, headers={"content-type": content_type})
    assert response.status_code == status, response.text
    detail = response.json()["detail"][0]
    assert detail["loc"] == loc
    assert len(detail["msg"]) < 400 and "[[[[" in detail["msg"]
    assert (await client.get("/healthz")).status_code == 200


async def test_deep_nesting_in_the_query_and_form_fields_is_refused_by_name(client):
    one = np.ones((1, 1, 1, 1), np.float32)
    kwargs = request("npz", {"x": one, "w": one}, {})
    response = await client.post("/forward", **{**kwargs, "params": {"padding": DEEP}})
    assert response.status_code == 422, response.text
    assert response.json()["detail"][0]["loc"][:2] == ["query", "padding"]
    kwargs = request("multipart", {"x": one, "w": one}, {})
    kwargs["data"] = {"stride": DEEP}
    response = await client.post("/forward", **kwargs)
    assert response.status_code == 422, response.text
    assert response.json()["detail"][0]["loc"][1] == "stride"


async def test_deep_nesting_in_the_protocol_is_refused_by_name(client):
    tensor = '{{"name": "x", "shape": {shape}, "datatype": "FP32", "data": [1]}}'
    weights = '{"name": "w", "shape": [1, 1, 1, 1], "datatype": "FP32", "data": [1]}'
    bodies = [
        f'{{"inputs": [{tensor.format(shape="[1, 1, 1, 1]")}, {weights}], "parameters": {{"padding": {DEEP}}}}}',
        f'{{"inputs": [{tensor.format(shape=DEEP)}, {weights}]}}',
    ]
    for body in bodies:
        response = await client.post(
            "/v2/models/conv2d/infer", content=body, headers={"content-type": "application/json"}
        )
        assert response.status_code == 400, response.text
        assert len(response.json()["error"]) < 600


async def test_an_inference_header_length_of_thousands_of_digits_is_refused(client):
    response = await client.post(
        "/v2/models/conv2d/infer",
        content=b"{}",
        headers={"inference-header-content-length": "9" * 5000},
    )
    assert response.status_code == 400
    assert "Inference-Header-Content-Length" in response.json()["error"]


_JSON_VALUES = st.recursive(
    st.none()
    | st.booleans()
    | st.integers(-(2**1000), 2**1000)
    | st.floats(allow_nan=False)
    | st.text(max_size=300),
    lambda inner: (
        st.lists(inner, max_size=5) | st.dictionaries(st.text(max_size=5), inner, max_size=5)
    ),
    max_leaves=30,
)


@given(_JSON_VALUES, st.integers(8, 200))
def test_brief_is_repr_cut_to_its_limit(value, limit):
    text = brief(value, limit)
    assert len(text) <= limit
    whole = repr(value)
    if len(whole) <= limit and "..." not in text:
        assert text == whole
    else:
        assert text.endswith("...")


def test_brief_never_formats_more_than_its_limit():
    deep: list = []
    inner = deep
    for _ in range(100_000):
        inner.append([])
        inner = inner[0]
    assert brief(deep, 20) == "[" * 17 + "..."
    assert brief(10**5000) == "<an integer of 16610 bits>"
    assert brief(list(range(10**6)), 30) == "[0, 1, 2, 3, 4, 5, 6, 7, 8,..."


# --- header blocks have a size limit ---------------------------------------------------------


@pytest.fixture(scope="module")
def served(tmp_path_factory):
    service = start_service(tmp_path_factory.mktemp("headers"), max_header_bytes="16384")
    try:
        service.wait_ready()
        yield service
    finally:
        service.stop()


def _header_flood(port: int, size: int) -> bytes:
    """A header block of ``size`` bytes, sent until the service closes; what it answered."""
    answer = b""
    with socket.create_connection(("127.0.0.1", port), timeout=10) as sock:
        line = b"x-filler: " + b"a" * 1000 + b"\r\n"
        with contextlib.suppress(OSError):  # closed on us: what the test wants
            sock.sendall(b"GET /healthz HTTP/1.1\r\nhost: x\r\n")
            for _ in range(size // len(line)):
                sock.sendall(line)
        with contextlib.suppress(OSError):
            while chunk := sock.recv(65536):
                answer += chunk
    return answer


def test_a_header_block_over_the_limit_is_a_431_and_the_service_keeps_serving(served):
    head, _, body = _header_flood(served.port, 64 << 20).partition(b"\r\n\r\n")
    assert head.startswith(b"HTTP/1.1 431"), head[:200]
    assert json.loads(body)["detail"][0]["msg"] == "the header block is over 16384 bytes"
    floods = [
        threading.Thread(target=_header_flood, args=(served.port, 64 << 20)) for _ in range(3)
    ]
    for flood in floods:
        flood.start()
    worst = 0.0
    for _ in range(7):
        started = time.monotonic()
        assert httpx.get(f"{served.url}/healthz", timeout=10).status_code == 200
        worst = max(worst, time.monotonic() - started)
        time.sleep(0.1)
    for flood in floods:
        flood.join(timeout=30)
    assert worst < 1.0, f"/healthz took {worst:.2f} s beside three 64 MiB header floods"


def test_a_header_block_under_the_limit_is_served(served):
    response = httpx.get(f"{served.url}/healthz", headers={f"x-h{i}": "a" * 900 for i in range(15)})
    assert response.status_code == 200
