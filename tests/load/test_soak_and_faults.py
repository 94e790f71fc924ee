"""A bounded soak above the compute bound, and misbehaving clients, against a real uvicorn.

Figures (peak RSS, open files) are printed: run with -s to see them.
"""

from __future__ import annotations

import io
import json
import random
import socket
import time
from collections import Counter
from collections.abc import Iterator

import anyio
import httpx
import numpy as np
import psutil
import pytest

from convengine import conv2d, conv2d_backward

from ..servers import Service, start_service

SOAK_SECONDS = 40
CONCURRENCY = 24  # far above the two computation slots: 503s are by design


@pytest.fixture(scope="module")
def service(tmp_path_factory) -> Iterator[Service]:
    service = start_service(
        tmp_path_factory.mktemp("soak"),
        log_level="warning",
        max_concurrent="2",
        max_waiting="6",
        body_timeout="2",
    )
    service.wait_ready()
    yield service
    service.stop()


def _npz(**arrays: np.ndarray) -> bytes:
    stream = io.BytesIO()
    np.savez(stream, **arrays)
    return stream.getvalue()


def _peak_rss_mib(pid: int) -> float:
    with open(f"/proc/{pid}/status") as status:
        for line in status:
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) / 1024
    raise AssertionError("no VmHWM")


def _make_cases() -> list[tuple[str, dict, int, object]]:
    """(path, request kwargs, expected status, check of the answer)."""
    rng = np.random.default_rng(7)
    x = rng.standard_normal((8, 16, 32, 32)).astype(np.float32)
    w = rng.standard_normal((32, 16, 3, 3)).astype(np.float32)
    dout = rng.standard_normal((8, 32, 32, 32)).astype(np.float32)
    out = conv2d(x, w, padding=1)
    dx = conv2d_backward(dout, x, w, padding=1)[0]
    small_x, small_w = rng.standard_normal((1, 2, 6, 6)), rng.standard_normal((3, 2, 3, 3))
    npz_headers = {"content-type": "application/x-npz", "accept": "application/x-npz"}
    return [
        (
            "/forward?padding=1",
            {"content": _npz(x=x, w=w), "headers": npz_headers},
            200,
            ("out", out),
        ),
        (
            "/backward?padding=1",
            {"content": _npz(x=x, w=w, dout=dout), "headers": npz_headers},
            200,
            ("dx", dx),
        ),
        (
            "/forward",
            {"json": {"x": small_x.tolist(), "w": small_w.tolist()}},
            200,
            ("json", conv2d(small_x, small_w)),
        ),
        (
            "/forward",
            {"json": {"x": small_x.tolist(), "w": small_w.tolist(), "stride": 4}},
            422,
            None,
        ),
        (
            "/forward",
            {"content": b"{not json", "headers": {"content-type": "application/json"}},
            400,
            None,
        ),
        ("/forward", {"content": b"hello", "headers": {"content-type": "text/plain"}}, 415, None),
        ("/forward", {"content": b"PK\x03\x04garbage", "headers": npz_headers}, 400, None),
    ]


def _correct(response: httpx.Response, check: object) -> bool:
    if check is None:
        return "detail" in response.json()
    name, expected = check
    if name == "json":
        return np.array_equal(np.array(response.json()["out"]), expected)
    with np.load(io.BytesIO(response.content)) as archive:
        return np.array_equal(archive[name], expected)


def test_soak_above_the_compute_bound(service):
    cases = _make_cases()
    statuses: Counter[int] = Counter()
    wrong: list[str] = []
    peak_samples: list[float] = []
    process = psutil.Process(service.process.pid)

    async def worker(seed: int, deadline: float) -> None:
        chooser = random.Random(seed)
        async with httpx.AsyncClient(base_url=service.url, timeout=60) as client:
            while anyio.current_time() < deadline:
                path, kwargs, expected, check = chooser.choice(cases)
                response = await client.post(path, **kwargs)
                statuses[response.status_code] += 1
                if response.status_code == 503:
                    assert response.headers["retry-after"] == "1"
                    await anyio.sleep(0.05)
                elif response.status_code != expected or not _correct(response, check):
                    wrong.append(f"{path}: {response.status_code} {response.text[:200]}")

    async def sample(deadline: float) -> None:
        while anyio.current_time() < deadline:
            peak_samples.append(process.memory_info().rss / 2**20)
            await anyio.sleep(0.5)

    async def run() -> None:
        deadline = anyio.current_time() + SOAK_SECONDS
        async with anyio.create_task_group() as tasks:
            tasks.start_soon(sample, deadline)
            for seed in range(CONCURRENCY):
                tasks.start_soon(worker, seed, deadline)

    started = time.monotonic()
    anyio.run(run)
    elapsed = time.monotonic() - started
    peak = _peak_rss_mib(service.process.pid)
    total = sum(statuses.values())
    print(
        f"\nsoak: {total} requests in {elapsed:.0f} s ({total / elapsed:.1f}/s) at concurrency "
        f"{CONCURRENCY}; statuses {dict(sorted(statuses.items()))}; peak RSS {peak:.0f} MiB"
    )
    assert elapsed < SOAK_SECONDS + 60
    assert wrong == []
    assert not [s for s in statuses if s >= 500 and s != 503], statuses
    assert statuses[200] > 50 and statuses[503] > 0  # the bound was reached, and shed
    assert peak < 2048, f"peak RSS {peak:.0f} MiB"
    # The load is gone: the service answers normally, and at once.
    started = time.monotonic()
    response = httpx.post(f"{service.url}/forward", json={"x": [[[[1.0]]]], "w": [[[[3.0]]]]})
    assert response.status_code == 200 and response.json()["out"] == [[[[3.0]]]]
    assert time.monotonic() - started < 1.0


def _raw(service: Service) -> socket.socket:
    sock = socket.create_connection(("127.0.0.1", service.port), timeout=10)
    sock.settimeout(10)
    return sock


def _head(path: str, length: int, content_type: str = "application/x-npz") -> bytes:
    return (
        f"POST {path} HTTP/1.1\r\nHost: t\r\nContent-Type: {content_type}\r\n"
        f"Content-Length: {length}\r\n\r\n"
    ).encode()


def test_misbehaving_clients_leak_nothing(service):
    process = psutil.Process(service.process.pid)
    body = _npz(x=np.ones((16, 32, 56, 56), np.float32), w=np.ones((64, 32, 3, 3), np.float32))
    # Warm up the path whose buffers the faults will exercise, then take the baseline.
    assert (
        httpx.post(
            f"{service.url}/forward?padding=1",
            content=body,
            headers={"content-type": "application/x-npz", "accept": "application/x-npz"},
            timeout=60,
        ).status_code
        == 200
    )
    fds_before, rss_before = process.num_fds(), process.memory_info().rss / 2**20

    for _ in range(20):  # dropped mid-upload
        with _raw(service) as sock:
            sock.sendall(_head("/forward?padding=1", len(body)) + body[: len(body) // 3])
    for _ in range(5):  # cancelled while computing: the whole request sent, the answer never read
        with _raw(service) as sock:
            sock.sendall(_head("/forward?padding=1", len(body)) + body)
            time.sleep(0.05)
    slow_answers = []
    for _ in range(3):  # slow senders: a byte every 0.3 s, cut off by the body timeout (2 s)
        with _raw(service) as sock:
            sock.sendall(_head("/forward", 1000))
            started = time.monotonic()
            answer = b""
            try:
                while time.monotonic() - started < 10 and not answer:
                    sock.sendall(b"0")
                    time.sleep(0.3)
                    sock.setblocking(False)
                    try:
                        answer = sock.recv(4096)
                    except BlockingIOError:
                        pass
                    finally:
                        sock.setblocking(True)
            except (BrokenPipeError, ConnectionResetError):
                pass
            slow_answers.append((answer.split(b"\r\n")[0], time.monotonic() - started))
    assert all(
        line == b"HTTP/1.1 408 Request Timeout" and 1.5 < t < 4 for line, t in slow_answers
    ), slow_answers

    time.sleep(2)  # let the cancelled computations finish
    response = httpx.post(f"{service.url}/forward", json={"x": [[[[2.0]]]], "w": [[[[3.0]]]]})
    assert response.status_code == 200 and response.json()["out"] == [[[[6.0]]]]
    fds_after, rss_after = process.num_fds(), process.memory_info().rss / 2**20
    print(
        f"\nfaults: open files {fds_before} -> {fds_after}; RSS {rss_before:.0f} -> {rss_after:.0f} MiB"
    )
    assert fds_after <= fds_before + 2
    assert rss_after < rss_before + 256
    assert json.loads(httpx.get(f"{service.url}/healthz").text) == {"status": "ok"}
