"""The client treats every answer as untrusted input: bounded by what the call expects, under
a total deadline, every failure one documented exception (a real HTTP server on loopback,
answering as a broken or hostile one would)."""

from __future__ import annotations

import contextlib
import gzip
import http.server
import io
import threading
import time
import tracemalloc
from collections.abc import Callable, Iterator

import numpy as np
import pytest

from convengine import conv
from convengine.client import AsyncConvClient, ConvClient, ConvServiceError

X = np.ones((1, 1, 3, 3), np.float32)
W = np.ones((1, 1, 1, 1), np.float32)  # out: (1, 1, 3, 3), 36 bytes

Answer = Callable[[http.server.BaseHTTPRequestHandler], None]


def _npz(**arrays: np.ndarray) -> bytes:
    stream = io.BytesIO()
    np.savez(stream, **arrays)
    return stream.getvalue()


def _send(
    handler: http.server.BaseHTTPRequestHandler, status: int, body: bytes, **headers: str
) -> None:
    handler.send_response(status)
    for name, value in {
        "content-type": "application/x-npz",
        "content-length": str(len(body)),
        **headers,
    }.items():
        handler.send_header(name.replace("_", "-"), value)
    handler.end_headers()
    handler.wfile.write(body)


class _Handler(http.server.BaseHTTPRequestHandler):
    answer: Answer
    limits: bytes = b"{}"

    def log_message(self, *args: object) -> None:  # quiet
        pass

    def do_GET(self) -> None:
        _send(self, 200, self.limits, content_type="application/json")

    def do_POST(self) -> None:
        self.rfile.read(int(self.headers["content-length"]))
        with contextlib.suppress(BrokenPipeError, ConnectionResetError):  # the client gave up
            type(self).answer(self)


@pytest.fixture
def server() -> Iterator[Callable[..., str]]:
    servers: list[http.server.ThreadingHTTPServer] = []

    def start(answer: Answer, limits: bytes = b"{}") -> str:
        handler = type("Handler", (_Handler,), {"answer": staticmethod(answer), "limits": limits})
        httpd = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
        httpd.daemon_threads = True
        threading.Thread(target=httpd.serve_forever, daemon=True).start()
        servers.append(httpd)
        return f"http://127.0.0.1:{httpd.server_address[1]}"

    yield start
    for httpd in servers:
        httpd.shutdown()
        httpd.server_close()


def _refused(url: str, kind: str, fragment: str, **options: object) -> ConvServiceError:
    with ConvClient(url, retries=1, **options) as client, pytest.raises(ConvServiceError) as raised:
        client.forward(X, W)
    assert raised.value.status_code is None
    assert raised.value.detail[0]["type"] == kind, raised.value.detail
    assert fragment in raised.value.detail[0]["msg"], raised.value.detail
    return raised.value


def test_a_right_answer_is_taken(server):
    url = server(lambda h: _send(h, 200, _npz(out=conv(X, W))))
    with ConvClient(url) as client:
        np.testing.assert_array_equal(client.forward(X, W), conv(X, W))


def test_an_archive_claiming_a_huge_array_is_refused_before_it_is_read(server):
    huge = np.zeros((1, 1, 8192, 8192), np.float64)  # 512 MiB, for a (1, 1, 3, 3) answer
    body = _npz(out=huge)
    url = server(lambda h: _send(h, 200, body))
    tracemalloc.start()
    try:
        _refused(url, "answer", "can need 5156 bytes; it declares 536871172")
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert peak < len(body) // 4, f"the client held {peak / 2**20:.1f} MiB of a refused answer"


def test_a_gzip_bomb_stops_at_the_bound(server):
    bomb = gzip.compress(bytes(800 << 20), compresslevel=1)  # 800 MiB of zeros in ~0.8 MB
    url = server(lambda h: _send(h, 200, bomb, content_encoding="gzip"))
    tracemalloc.start()
    try:
        _refused(url, "answer", "can need 5156 bytes; it grew past that")
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert peak < 16 << 20, f"the client grew by {peak / 2**20:.0f} MiB inflating a bomb"


def test_a_huge_content_length_is_refused_at_once(server):
    def lie(h):
        h.send_response(200)
        h.send_header("content-type", "application/x-npz")
        h.send_header("content-length", str(2 << 30))
        h.end_headers()
        h.wfile.write(b"PK" * 1000)

    _refused(server(lie), "answer", f"it declares {2 << 30}")


@pytest.mark.parametrize(
    ("arrays", "fragment"),
    [
        (
            {"out": np.ones((1, 1, 2, 2), np.float32)},
            "the answer's out is float32 (1, 1, 2, 2), not the expected float32 (1, 1, 3, 3)",
        ),
        (
            {"out": np.ones((1, 1, 3, 3), np.float64)},
            "is float64 (1, 1, 3, 3), not the expected float32",
        ),
        (
            {"dx": np.ones((1, 1, 3, 3), np.float32)},
            "the answer holds ['dx'], not the expected ['out']",
        ),
        ({}, "the answer holds [], not the expected ['out']"),
    ],
    ids=["wrong-shape", "wrong-dtype", "missing-array", "empty"],
)
def test_an_answer_that_is_not_what_the_call_expects_is_refused_by_name(server, arrays, fragment):
    body = _npz(**arrays)
    _refused(server(lambda h: _send(h, 200, body)), "answer", fragment)


def test_a_small_archive_claiming_a_huge_member_is_not_inflated(server):
    stream = io.BytesIO()
    np.savez_compressed(stream, out=np.zeros((1, 1, 8192, 8192)))  # 512 MiB in ~500 kB
    body = stream.getvalue()

    def chunked(h):  # no Content-Length to refuse it by
        h.send_response(200)
        h.send_header("content-type", "application/x-npz")
        h.send_header("transfer-encoding", "chunked")
        h.end_headers()
        h.wfile.write(b"%x\r\n%s\r\n0\r\n\r\n" % (len(body), body))

    _refused(server(chunked), "answer", "grew past that")
    small = io.BytesIO()
    np.savez_compressed(small, out=np.zeros((1, 1, 3, 3), np.float32), junk=np.zeros(1 << 18))
    squeezed = small.getvalue()  # 2 MiB claimed in 2 kB, under the call's bound
    assert len(squeezed) < 5000
    _refused(server(lambda h: _send(h, 200, squeezed)), "answer", "more than the 5156 expected")


def test_an_answer_that_is_no_archive_is_refused(server):
    _refused(server(lambda h: _send(h, 200, b"not a zip at all")), "answer", "not a readable .npz")


def test_the_timeout_bounds_the_whole_call(server):
    body = _npz(out=conv(X, W))

    def drip(h):
        h.send_response(200)
        h.send_header("content-type", "application/x-npz")
        h.send_header("content-length", str(len(body)))
        h.end_headers()
        for byte in body:
            h.wfile.write(bytes([byte]))
            h.wfile.flush()
            time.sleep(0.25)

    started = time.monotonic()
    _refused(server(drip), "timeout", "within the call's timeout", timeout=2)
    assert time.monotonic() - started < 4


@pytest.mark.parametrize("retry_after", ["nan", "inf", "-5", "Wed, 21 Oct 2026 07:28:00 GMT"])
def test_a_busy_replica_with_a_strange_retry_after_is_retried_then_reported(server, retry_after):
    detail = b'{"detail": [{"loc": [], "msg": "busy", "type": "overloaded"}]}'
    url = server(
        lambda h: _send(h, 503, detail, content_type="application/json", retry_after=retry_after)
    )
    started = time.monotonic()
    with ConvClient(url, retries=1) as client, pytest.raises(ConvServiceError) as raised:
        client.forward(X, W)
    assert raised.value.status_code == 503 and raised.value.detail[0]["msg"] == "busy"
    assert time.monotonic() - started < 10


@pytest.mark.anyio
async def test_the_async_client_reports_alike(server):
    url = server(lambda h: _send(h, 503, b"{}", content_type="application/json", retry_after="nan"))
    async with AsyncConvClient(url, retries=1) as client:
        with pytest.raises(ConvServiceError) as raised:
            await client.forward(X, W)
    assert raised.value.status_code == 503
    assert raised.value.detail[0]["type"] == "http"  # no detail of its own: its text


@pytest.mark.parametrize(
    "limits", [b"[1, 2]", b'{"max_body_bytes": "lots"}', b"not json", b'{"max_body_bytes": -1}']
)
def test_limits_that_are_not_limits_are_ignored(server, limits):
    url = server(lambda h: _send(h, 200, _npz(out=conv(X, W))), limits=limits)
    with ConvClient(url) as client:
        np.testing.assert_array_equal(client.forward(X, W), conv(X, W))


def test_a_refusal_s_body_is_bounded_too(server):
    body = b'{"detail": "' + b"x" * (1 << 20) + b'"}'
    _refused(
        server(lambda h: _send(h, 422, body, content_type="application/json")),
        "answer",
        "can need 65536 bytes",
    )


def test_a_500_no_replica_signed_is_retried_and_a_replica_s_500_is_not(server):
    """A proxy whose replica died mid-request (Ray Serve's answers 500, without X-Replica) is
    a lost try, retried; a 500 from the service itself (X-Replica set) is its answer."""
    tries: list[int] = []

    def proxy_then_replica(h: http.server.BaseHTTPRequestHandler) -> None:
        tries.append(1)
        if len(tries) == 1:
            _send(h, 500, b"Internal Server Error", content_type="text/plain")
        else:
            _send(h, 200, _npz(out=conv(X, W)), x_replica="r1")

    with ConvClient(server(proxy_then_replica), retries=2) as client:
        np.testing.assert_array_equal(client.forward(X, W), conv(X, W))
    assert len(tries) == 2
    signed: list[int] = []

    def replica_error(h: http.server.BaseHTTPRequestHandler) -> None:
        signed.append(1)
        _send(h, 500, b'{"detail": "boom"}', content_type="application/json", x_replica="r1")

    with (
        ConvClient(server(replica_error), retries=2) as client,
        pytest.raises(ConvServiceError) as raised,
    ):
        client.forward(X, W)
    assert raised.value.status_code == 500 and len(signed) == 1
