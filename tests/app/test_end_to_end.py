"""The real thing: `python -m app` under uvicorn on 127.0.0.1, driven over TCP."""

from __future__ import annotations

import time
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor

import httpx
import numpy as np
import pytest

from convengine import conv2d, conv2d_backward
from convengine.client import AsyncConvClient, ConvClient, ConvServiceError

from ..servers import start_service


@pytest.fixture(scope="module")
def server(tmp_path_factory) -> Iterator[str]:
    service = start_service(tmp_path_factory.mktemp("server"), log_level="info")
    service.wait_ready(timeout=30)
    yield service.url
    log = service.stop()
    assert "Application shutdown complete" in log, log


def test_client_forward_and_backward(server):
    rng = np.random.default_rng(0)
    x = rng.standard_normal((2, 3, 9, 9)).astype(np.float32)
    w = rng.standard_normal((4, 3, 3, 3)).astype(np.float32)
    b = rng.standard_normal(4).astype(np.float32)
    with ConvClient(server) as client:
        out = client.forward(x, w, b, stride=2, padding=1)
        assert out.dtype == np.float32
        np.testing.assert_array_equal(out, conv2d(x, w, b, stride=2, padding=1))
        dout = rng.standard_normal(out.shape).astype(np.float32)
        for got, want in zip(
            client.backward(dout, x, w, stride=2, padding=1),
            conv2d_backward(dout, x, w, stride=2, padding=1),
        ):
            np.testing.assert_array_equal(got, want)
        same = client.forward(x, w, padding="same", dilation=(1, 2))
        np.testing.assert_array_equal(same, conv2d(x, w, padding="same", dilation=(1, 2)))


def test_client_raises_the_servers_detail(server):
    with ConvClient(server) as client, pytest.raises(ConvServiceError) as info:
        client.forward(np.zeros((1, 1, 32, 32)), np.zeros((1, 1, 3, 3)), stride=2)
    assert info.value.status_code == 422
    assert info.value.detail[0]["loc"] == ["query", "stride"]
    assert "15.5 is not a whole number" in str(info.value)


def test_async_client(server):
    import anyio

    x, w = np.ones((1, 2, 5, 5)), np.ones((3, 2, 3, 3))

    async def run():
        async with AsyncConvClient(server) as client:
            out = await client.forward(x, w, padding=1)
            grads = await client.backward(np.ones_like(out), x, w, padding=1)
        return out, grads

    out, grads = anyio.run(run)
    np.testing.assert_array_equal(out, conv2d(x, w, padding=1))
    for got, want in zip(grads, conv2d_backward(np.ones_like(out), x, w, padding=1)):
        np.testing.assert_array_equal(got, want)


def test_fifty_parallel_requests_while_health_answers(server):
    rng = np.random.default_rng(1)
    shapes = [
        ((2, 3, 16, 16), (8, 3, 3, 3), 1),
        ((1, 4, 12, 10), (6, 2, 3, 1), 2),
        ((4, 1, 8, 8), (2, 1, 5, 5), 1),
    ]

    def one(i: int) -> bool:
        x_shape, w_shape, groups = shapes[i % len(shapes)]
        x, w = rng.standard_normal(x_shape), rng.standard_normal(w_shape)
        with ConvClient(server) as client:
            if i % 2:
                out = client.forward(x, w, padding="same", groups=groups)
                return bool(np.array_equal(out, conv2d(x, w, padding="same", groups=groups)))
            dout = rng.standard_normal(conv2d(x, w, groups=groups).shape)
            got = client.backward(dout, x, w, groups=groups)
            return all(
                np.array_equal(g, e)
                for g, e in zip(got, conv2d_backward(dout, x, w, groups=groups))
            )

    with ThreadPoolExecutor(max_workers=16) as pool:
        futures = [pool.submit(one, i) for i in range(50)]
        health = []
        while not all(f.done() for f in futures):
            started = time.perf_counter()
            health.append(
                (
                    httpx.get(f"{server}/healthz", timeout=5).status_code,
                    time.perf_counter() - started,
                )
            )
            time.sleep(0.02)
        assert all(f.result() for f in futures)
    assert health and all(status == 200 for status, _ in health)
    assert max(seconds for _, seconds in health) < 2.0


def test_curl_style_multipart(server):
    """What `curl -F x=@x.npy -F w=@w.npy -F stride=2` sends."""
    import io

    def npy(a):
        stream = io.BytesIO()
        np.save(stream, a)
        return stream.getvalue()

    x, w = np.ones((1, 1, 5, 5)), np.ones((1, 1, 3, 3))
    response = httpx.post(
        f"{server}/forward",
        files={"x": ("x.npy", npy(x)), "w": ("w.npy", npy(w))},
        data={"stride": "2"},
        headers={"accept": "application/json"},
    )
    assert response.status_code == 200
    assert response.json() == {"out": [[[[9.0, 9.0], [9.0, 9.0]]]], "dtype": "float64"}
