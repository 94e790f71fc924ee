"""One call over three real replicas on loopback, each with a small body limit.

A batch several times the limit, every operation, against the in-process engine; the same bits
whatever order the shards finish in; a name that resolves to the three addresses; one replica
killed in the middle of a call. Timings are printed: run with -s to see them.
"""

from __future__ import annotations

import io
import random
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import anyio
import httpx
import numpy as np
import pytest
from prometheus_client.parser import text_string_to_metric_families

import convengine as ce
from convengine import OPERATIONS
from convengine._shards import request_bytes
from convengine.client import AsyncConvClient, ConvClient

from ..servers import Service, free_port, start_service

ROOT = Path(__file__).resolve().parents[2]
BODY_LIMIT = 32 << 10
ADDRESSES = ("127.0.0.1", "127.0.0.2", "127.0.0.3")  # all loopback on Linux


def _start(tmp, port: int, **settings: str) -> list[Service]:
    replicas = [
        start_service(
            tmp, host=address, port=str(port), replica=address, log_level="warning", **settings
        )
        for address in ADDRESSES
    ]
    for replica in replicas:
        replica.wait_ready()
    return replicas


def _url(replica: Service, address: str) -> str:
    return f"http://{address}:{replica.port}"


@pytest.fixture(scope="module")
def replicas(tmp_path_factory) -> Iterator[list[Service]]:
    # One port on three addresses: also what one name resolving to three pods looks like.
    replicas = _start(
        tmp_path_factory.mktemp("replicas"), free_port(), max_body_bytes=str(BODY_LIMIT)
    )
    yield replicas
    for replica in replicas:
        replica.stop()


@pytest.fixture(scope="module")
def urls(replicas) -> list[str]:
    return [_url(replica, address) for replica, address in zip(replicas, ADDRESSES, strict=True)]


def _posts(url: str) -> float:
    text = httpx.get(f"{url}/metrics", timeout=5).text
    return sum(
        sample.value
        for family in text_string_to_metric_families(text)
        for sample in family.samples
        if sample.name == "convengine_requests_total" and sample.labels["method"] == "POST"
    )


def _problem(name: str, n: int, dtype: str, seed: int = 0):
    rng = np.random.default_rng(seed)
    x = rng.standard_normal((n, 4, 8, 8)).astype(dtype)
    x[:, 0, 0, 0] = np.arange(n)  # a request tells which samples it carries
    if name.startswith("conv_transpose"):
        w = rng.standard_normal((4, 6, 3, 3)).astype(dtype)
        hyper: dict[str, object] = {"stride": 2, "padding": 1, "output_padding": 1}
        out = ce.conv_transpose(x, w, **hyper)
    else:
        w = rng.standard_normal((6, 4, 3, 3)).astype(dtype)
        hyper = {"padding": 1}
        out = ce.conv(x, w, **hyper)
    dout = rng.standard_normal(out.shape).astype(dtype)
    args = (dout, x, w) if name.endswith("backward") else (x, w)
    return args, hyper


def _engine(name: str, args, hyper) -> tuple[np.ndarray, ...]:
    function = {
        "forward": ce.conv,
        "backward": ce.conv_backward,
        "conv_transpose": ce.conv_transpose,
        "conv_transpose_backward": ce.conv_transpose_backward,
    }[name]
    result = function(*args, **hyper)
    return result if isinstance(result, tuple) else (result,)


@pytest.mark.parametrize("dtype", ["float64", "float32"])
@pytest.mark.parametrize("name", OPERATIONS)
def test_a_batch_several_times_the_body_limit_equals_the_engine(name, dtype, urls):
    args, hyper = _problem(name, 160, dtype)
    operation = OPERATIONS[name]
    whole = request_bytes(operation, dict(zip(operation.inputs, args, strict=False)), 160)
    assert whole >= 4 * BODY_LIMIT
    before = [_posts(url) for url in urls]
    with ConvClient(urls) as client:
        got = client.call(name, *args, **hyper)
    got = got if isinstance(got, tuple) else (got,)
    served = [_posts(url) - b for url, b in zip(urls, before, strict=True)]
    assert all(count >= 1 for count in served), served  # every replica computed shards
    for output, g, e in zip(operation.outputs, got, _engine(name, args, hyper), strict=True):
        assert g.dtype == np.dtype(dtype) and g.shape == e.shape, output
        if dtype == "float64":
            np.testing.assert_allclose(g, e, rtol=1e-12, atol=1e-12, err_msg=output)
        elif output in operation.summed:
            scale = np.abs(e).max()
            np.testing.assert_allclose(g, e, rtol=1e-5, atol=1e-5 * scale, err_msg=output)
        else:
            np.testing.assert_array_equal(g, e, err_msg=output)


def test_the_async_client_shards_the_same_way(urls):
    args, hyper = _problem("conv_transpose_backward", 160, "float32", seed=2)

    async def both() -> tuple[tuple[np.ndarray, ...], tuple[np.ndarray, ...]]:
        async with AsyncConvClient(urls) as client:
            concurrent = await client.conv_transpose_backward(*args, shards=10, **hyper)
        with ConvClient(urls) as blocking:
            threaded = blocking.conv_transpose_backward(*args, shards=10, **hyper)
        return concurrent, threaded

    concurrent, threaded = anyio.run(both)
    for a, b in zip(concurrent, threaded, strict=True):
        assert a.tobytes() == b.tobytes()


class Delayed(httpx.HTTPTransport):
    """Answers held back by a random few milliseconds each: shards finish out of order."""

    def __init__(self, seed: int) -> None:
        super().__init__()
        self.random, self.lock = random.Random(seed), threading.Lock()
        self.finished: list[int] = []  # the first sample of each shard, as answers came

    def handle_request(self, request: httpx.Request) -> httpx.Response:
        response = super().handle_request(request)
        if request.method == "POST":
            response.read()
            with self.lock:
                delay = self.random.uniform(0, 0.08)
            time.sleep(delay)
            with np.load(io.BytesIO(request.content)) as sent:
                first = int(sent["x"][0, 0, 0, 0])
            with self.lock:
                self.finished.append(first)
        return response


@pytest.mark.parametrize("name", ["backward", "conv_transpose_backward"])
def test_the_same_bits_whatever_order_shards_finish_in(name, urls):
    args, hyper = _problem(name, 96, "float32", seed=1)
    answers, orders = [], []
    for seed in range(4):
        transport = Delayed(seed)
        with ConvClient(urls, transport=transport, concurrency=6) as client:
            answers.append(client.call(name, *args, shards=12, **hyper))
        orders.append(tuple(transport.finished))
    assert len(set(orders)) > 1, orders
    for answer in answers[1:]:
        for got, first in zip(answer, answers[0], strict=True):
            assert got.tobytes() == first.tobytes()
    with ConvClient(urls[0]) as alone:  # one replica, the same shards: the same bits
        for got, first in zip(alone.call(name, *args, shards=12, **hyper), answers[0], strict=True):
            assert got.tobytes() == first.tobytes()


def test_one_name_resolving_to_every_replica(replicas):
    port = replicas[0].port
    args, hyper = _problem("backward", 96, "float64")
    before = [_posts(_url(r, a)) for r, a in zip(replicas, ADDRESSES, strict=True)]
    looked_up: list[tuple[str, int]] = []

    def resolve(host: str, port: int) -> list[str]:  # what DNS says of a headless Service
        looked_up.append((host, port))
        return list(ADDRESSES)

    with ConvClient(f"http://convengine-pods:{port}", resolve=resolve) as client:
        got = client.backward(*args, **hyper)
    assert looked_up == [("convengine-pods", port)]
    served = [_posts(_url(r, a)) - b for r, a, b in zip(replicas, ADDRESSES, before, strict=True)]
    assert all(count >= 1 for count in served), served
    for g, e in zip(got, _engine("backward", args, hyper), strict=True):
        np.testing.assert_allclose(g, e, rtol=1e-12, atol=1e-12)


def test_one_replica_killed_mid_call(tmp_path):
    """SIGKILL to one of three replicas a third of the way through a 24-shard backward."""
    replicas = _start(tmp_path, free_port())
    urls = [_url(replica, address) for replica, address in zip(replicas, ADDRESSES, strict=True)]
    rng = np.random.default_rng(3)
    x = rng.standard_normal((96, 16, 32, 32))
    w = rng.standard_normal((32, 16, 3, 3))
    dout = rng.standard_normal((96, 32, 32, 32))
    victim = replicas[1]
    try:
        with ConvClient(urls) as client:
            client.backward(dout[:8], x[:8], w, padding=1)  # connections up, limits read
            undisturbed = []
            for _ in range(2):  # the first also warms every replica's buffers up
                started = time.monotonic()
                calm = client.backward(dout, x, w, padding=1, shards=24)
                undisturbed.append(time.monotonic() - started)

            def kill(done: int, total: int) -> None:
                if done == total // 3:
                    victim.process.send_signal(signal.SIGKILL)

            started = time.monotonic()
            hit = client.backward(dout, x, w, padding=1, shards=24, progress=kill)
            disturbed = time.monotonic() - started
        assert victim.process.wait(timeout=10) == -signal.SIGKILL
        for got, want in zip(hit, calm, strict=True):
            assert got.tobytes() == want.tobytes()  # the same shards: the same bits
        for got, want in zip(hit, ce.conv_backward(dout, x, w, padding=1), strict=True):
            np.testing.assert_allclose(got, want, rtol=1e-12, atol=1e-12)
        print(
            f"\n24-shard backward over 3 replicas: {undisturbed[0]:.2f} s and "
            f"{undisturbed[1]:.2f} s undisturbed, "
            f"{disturbed:.2f} s with one replica killed a third of the way in"
        )
        assert disturbed < 10 * max(undisturbed) + 10
    finally:
        for replica in replicas:
            if replica is not victim:
                replica.stop()


def test_replica_benchmark_smoke_run(tmp_path):
    """`python -m benchmarks.replicas --quick`: three replicas, the same bits at 1, 2 and 3."""
    out = tmp_path / "report.md"
    result = subprocess.run(
        [sys.executable, "-m", "benchmarks.replicas", "--quick", "--out", str(out)],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert result.returncode == 0, result.stderr[-3000:]
    rows = [line for line in out.read_text().splitlines() if line.startswith("| ")]
    assert [row.split("|")[1].strip() for row in rows[1:]] == [
        "1",
        "2",
        "3",
        "engine in-process, 1 thread",
    ]
