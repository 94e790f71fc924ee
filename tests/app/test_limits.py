"""Body size, concurrency and readiness limits."""

from __future__ import annotations

import gzip
import io
import re
import socket
import time

import anyio
import httpx
import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from app.config import Settings
from app.errors import InvalidInput, Overloaded
from app.limits import Gate
from app.limits.admission import CHUNK, _cut
from app.limits.memory import MemoryBudget, Reservation
from app.main import create_app
from benchmarks.payloads import read, request
from convengine import OPERATIONS

from ..servers import start_service
from .conftest import serve

MiB = 1 << 20

pytestmark = pytest.mark.anyio
SMALL = Settings(max_body_bytes=4096, max_json_bytes=2048)
X = [[[[1.0, 2.0], [3.0, 4.0]]]]


async def test_declared_body_over_the_limit_is_refused_unread():
    async with serve(SMALL) as client:
        response = await client.post(
            "/forward", content=b"0" * 5000, headers={"content-type": "application/x-npz"}
        )
        assert response.status_code == 413
        detail = response.json()["detail"][0]
        assert detail["loc"] == ["header", "content-length"]
        assert detail["msg"] == "the body of 5000 bytes is over the limit of 4096 bytes"


async def test_json_has_its_own_lower_limit():
    async with serve(SMALL) as client:
        response = await client.post("/forward", json={"x": X, "w": [[[[1.0]]]], "pad": "." * 3000})
        assert response.status_code == 413
        assert "JSON body of" in response.json()["detail"][0]["msg"]


async def test_streamed_body_is_cut_off_as_it_passes_the_limit():
    sent = 0

    async def chunks():
        nonlocal sent
        for _ in range(100):
            sent += 1000
            yield b"0" * 1000

    async with serve(SMALL) as client:
        response = await client.post(
            "/forward", content=chunks(), headers={"content-type": "application/x-npz"}
        )
        assert response.status_code == 413
        assert response.json()["detail"][0]["msg"] == "the body grew past the limit of 4096 bytes"
        assert sent < 10_000  # stopped reading early, not after buffering everything
        ok = await client.post("/forward", json={"x": X, "w": [[[[1.0]]]]})
        assert ok.status_code == 200


async def test_gate_refuses_beyond_slots_and_queue():
    gate = Gate(slots=1, waiting=1)
    async with gate.admit(), gate.admit():
        with pytest.raises(Overloaded) as info:
            async with gate.admit():
                pass
    assert info.value.headers == {"Retry-After": "1"}
    async with gate.admit():  # places are given back
        assert gate.admitted == 1


async def test_overloaded_service_answers_503_with_retry_after():
    async with serve(Settings(max_concurrent=1, max_waiting=0)) as client:
        gate = client._transport.app.state.gate  # type: ignore[attr-defined]
        async with gate.admit():
            response = await client.post("/forward", json={"x": X, "w": [[[[1.0]]]]})
            health = await client.get("/healthz")
        assert response.status_code == 503
        assert response.headers["retry-after"] == "1"
        assert response.json()["detail"][0]["type"] == "overloaded"
        assert health.status_code == 200
        assert (await client.post("/forward", json={"x": X, "w": [[[[1.0]]]]})).status_code == 200


async def test_computations_beyond_the_slots_wait_their_turn():
    """Two slots, four requests at once: all answered, never more than two in threads."""
    async with serve(Settings(max_concurrent=2, max_waiting=8)) as client:
        limiter = client._transport.app.state.gate.limiter  # type: ignore[attr-defined]
        peak = 0

        async def watch():
            nonlocal peak
            while True:
                peak = max(peak, limiter.borrowed_tokens)
                await anyio.sleep(0)

        body = {"x": [[[[1.0] * 64] * 64] * 8] * 4, "w": [[[[1.0] * 3] * 3] * 8] * 16}
        statuses = []

        async def call():
            statuses.append((await client.post("/forward", json=body)).status_code)

        async with anyio.create_task_group() as tasks:
            tasks.start_soon(watch)
            async with anyio.create_task_group() as calls:
                for _ in range(4):
                    calls.start_soon(call)
            tasks.cancel_scope.cancel()
        assert statuses == [200] * 4
        assert 1 <= peak <= 2


async def test_a_body_that_arrives_too_slowly_gets_408():
    async def dribble():
        for _ in range(20):
            await anyio.sleep(0.1)
            yield b"0" * 10

    async with serve(Settings(body_timeout=0.3)) as client:
        response = await client.post(
            "/forward", content=dribble(), headers={"content-type": "application/x-npz"}
        )
        assert response.status_code == 408
        assert response.json()["detail"][0]["msg"] == "the body did not arrive within 0.3 seconds"
        assert (await client.post("/forward", json={"x": X, "w": [[[[1.0]]]]})).status_code == 200


async def test_memory_budget_lets_in_what_fits_and_lines_up_the_rest():
    budget = MemoryBudget(100, waiting=1, wait_timeout=5)
    first, second, third = Reservation(budget), Reservation(budget), Reservation(budget)
    await first.resize(60, _never)
    granted = anyio.Event()

    async def wait_for_room():
        await second.resize(50, _never)
        granted.set()

    async with anyio.create_task_group() as tasks:
        tasks.start_soon(wait_for_room)
        await anyio.sleep(0.01)
        assert not granted.is_set() and budget.line_full
        with pytest.raises(Overloaded) as info:  # the line is full: 503 with Retry-After
            await third.resize(10, _never)
        assert info.value.headers == {"Retry-After": "1"}
        assert "line for memory" in info.value.detail[0]["msg"]
        first.release()
        await granted.wait()
    assert budget.used == 50 and second.held == 50
    second.release()
    assert budget.used == 0


async def test_a_request_holding_memory_never_waits_for_others_that_do():
    budget = MemoryBudget(100, waiting=4, wait_timeout=5)
    reading, growing = Reservation(budget), Reservation(budget)
    await reading.resize(50, _never)
    await growing.resize(40, _never)
    with pytest.raises(Overloaded):  # only unsettled holders: waiting could last for ever
        await growing.resize(70, _never)
    reading.settle()  # computing: it will give back, so waiting for it is worth it
    async with anyio.create_task_group() as tasks:
        tasks.start_soon(growing.resize, 70, _never)
        await anyio.sleep(0.01)
        reading.release()
    assert growing.held == 70 and budget.used == 70 and budget.settled == 0


async def test_a_reservation_larger_than_the_budget_is_refused_by_name():
    budget = MemoryBudget(100, waiting=4, wait_timeout=5)
    with pytest.raises(InvalidInput) as info:
        await Reservation(budget).resize(101, lambda n: InvalidInput(f"{n} bytes"))
    assert info.value.detail[0]["msg"] == "101 bytes" and budget.used == 0


async def test_waiting_for_memory_is_bounded_in_time():
    budget = MemoryBudget(100, waiting=4, wait_timeout=0.05)
    await Reservation(budget).resize(100, _never)
    with pytest.raises(Overloaded) as info:
        await Reservation(budget).resize(1, _never)
    assert "within 0.05 seconds" in info.value.detail[0]["msg"]
    assert not budget.line_full and budget.used == 100


def _never(nbytes: int) -> InvalidInput:
    raise AssertionError(f"{nbytes} bytes refused")


async def test_a_body_too_big_for_the_budget_is_413_and_readiness_follows_the_line():
    async with serve(Settings(memory_budget_mb=64, max_waiting=1)) as client:
        json_body = {"x": [[[[1.0] * 1000] * 1000]], "w": [[[[1.0]]]]}  # 5 MB of JSON: 160 MiB
        response = await client.post("/forward", json=json_body)
        assert response.status_code == 413
        assert response.json()["detail"][0]["loc"] == ["header", "content-length"]
        assert "memory budget of 64 MiB" in response.json()["detail"][0]["msg"]
        gate = client._transport.app.state.gate  # type: ignore[attr-defined]
        assert (await client.get("/readyz")).json() == {"status": "ready"}
        hold = Reservation(gate.memory)
        await hold.resize(gate.memory.total, _never)
        async with anyio.create_task_group() as tasks:
            tasks.start_soon(_post, client, {"x": X, "w": [[[[1.0]]]]})
            await anyio.sleep(0.05)  # that request waits in the one place in line
            ready = await client.get("/readyz")
            assert ready.status_code == 503 and ready.json() == {"status": "full"}
            assert (await client.get("/v2/health/ready")).status_code == 400
            assert (await client.get("/healthz")).status_code == 200
            hold.release()
        assert (await client.get("/readyz")).status_code == 200
        assert (await client.get("/v2/health/ready")).status_code == 200


async def _post(client, body) -> None:
    assert (await client.post("/forward", json=body)).status_code == 200


async def test_an_archive_inflating_beyond_the_budget_is_413_by_name():
    import io
    import zipfile

    from benchmarks.payloads import npy_bytes

    stream = io.BytesIO()
    with zipfile.ZipFile(stream, "w", compression=zipfile.ZIP_DEFLATED) as archive:
        archive.writestr("x.npy", npy_bytes(np.zeros((1, 1, 4096, 4096))))  # 128 MiB of zeros
        archive.writestr("w.npy", npy_bytes(np.ones((1, 1, 1, 1))))
    async with serve(Settings(memory_budget_mb=64)) as client:
        response = await client.post(
            "/forward", content=stream.getvalue(), headers={"content-type": "application/x-npz"}
        )
        assert response.status_code == 413, response.text
        detail = response.json()["detail"][0]
        assert detail["loc"] == ["body", "x"] and "memory budget of 64 MiB" in detail["msg"]
        assert (await client.post("/forward", json={"x": X, "w": [[[[1.0]]]]})).status_code == 200


@pytest.mark.parametrize("accept", ["application/x-npz", "application/x-npy", "application/json"])
@pytest.mark.parametrize("operation", ["forward", "conv_transpose"])
async def test_the_smallest_answer_fits_its_reservation(client, operation, accept):
    """A 1x1x1x1 layer's answer is mostly headers: its reservation counts them (it was a 500)."""
    one = np.ones((1, 1, 1, 1), np.float32)
    path = OPERATIONS[operation].path
    response = await client.post(path, **request("npz", {"x": one, "w": one}, {}, accept))
    assert response.status_code == 200, response.text
    assert read(response, ["out"])["out"].shape == (1, 1, 1, 1)


# --- admission that streams: memory reserved as the body arrives -----------------------------


@pytest.fixture(scope="module")
def budgeted(tmp_path_factory):
    """A real service on the README's 1,536 MiB budget, with a 20 s body timeout."""
    service = start_service(
        tmp_path_factory.mktemp("budget"), memory_budget_mb="1536", body_timeout="20"
    )
    try:
        service.wait_ready()
        yield service
    finally:
        service.stop()


def _stall(port: int, path: str, content_type: str) -> socket.socket:
    """A chunked upload that sends four bytes, then nothing."""
    sock = socket.create_connection(("127.0.0.1", port))
    sock.sendall(
        f"POST {path} HTTP/1.1\r\nhost: x\r\ncontent-type: {content_type}\r\n"
        'transfer-encoding: chunked\r\n\r\n4\r\n{"x"\r\n'.encode()
    )
    return sock


def test_a_stalled_upload_keeps_no_one_waiting(budgeted):
    stalled = [
        _stall(budgeted.port, "/forward", ct) for ct in ("application/json", "application/x-npz")
    ] * 3
    try:
        time.sleep(0.5)  # the stalled uploads are in
        assert httpx.get(f"{budgeted.url}/readyz").status_code == 200
        started = time.monotonic()
        response = httpx.post(
            f"{budgeted.url}/forward", json={"x": [[[[1.0, 2.0]]]], "w": [[[[3.0]]]]}
        )
        elapsed = time.monotonic() - started
        assert response.status_code == 200, response.text
        assert response.json()["out"] == [[[[3.0, 6.0]]]]
        assert elapsed < 5, f"a small request waited {elapsed:.1f} s behind stalled uploads"
        limits = httpx.get(f"{budgeted.url}/metrics").text
        reserved = float(
            re.search(r"^convengine_memory_reserved_bytes (\S+)$", limits, re.M).group(1)
        )
        assert reserved < 64 * MiB, f"stalled uploads of 4 bytes hold {reserved / MiB:.0f} MiB"
    finally:
        for sock in stalled:
            sock.close()


def test_a_small_compressed_body_is_reserved_by_what_it_inflates_to(budgeted):
    body = gzip.compress(b'{"x": [[[[1.0, 2.0]]]], "w": [[[[3.0]]]]}')
    response = httpx.post(
        f"{budgeted.url}/forward",
        content=body,
        headers={"content-type": "application/json", "content-encoding": "gzip"},
    )
    assert response.status_code == 200, response.text  # it was 413: "about 2,048 MiB"


def test_a_chunked_body_beyond_the_budget_is_a_413_once_it_is(tmp_path):
    service = start_service(tmp_path, memory_budget_mb="64", max_json_bytes=str(8 * MiB))
    try:
        service.wait_ready()

        def pieces():
            yield b'{"x": ['
            for _ in range(40):
                yield b"[[[" + b"1.0, " * 20_000 + b"1.0]]], "  # 100 kB: JSON holds 32 times that
            yield b'[[[1.0]]]], "w": [[[[1.0]]]]}'

        response = httpx.post(
            f"{service.url}/forward", content=pieces(), headers={"content-type": "application/json"}
        )
        assert response.status_code == 413, response.text
        assert (
            "more than this replica's memory budget of 64 MiB"
            in response.json()["detail"][0]["msg"]
        )
        assert httpx.get(f"{service.url}/readyz").status_code == 200
    finally:
        service.stop()


async def test_readiness_says_full_while_the_budget_is_reserved():
    gate = Gate(slots=1, waiting=1, memory=MemoryBudget(8 * MiB, 4, 1.0))
    assert gate.can_admit
    reservation = gate.reservation()
    await gate.grow(reservation, 8 * MiB)
    assert not gate.can_admit
    reservation.release()
    assert gate.can_admit


@settings(max_examples=200, deadline=None)
@given(st.lists(st.integers(0, 3 * CHUNK), max_size=8))
def test_an_answer_goes_out_in_messages_of_at_most_a_chunk_small_pieces_joined(sizes):
    pieces = [bytes([index % 251]) * size for index, size in enumerate(sizes)]
    messages = list(_cut(pieces))
    assert b"".join(messages) == b"".join(pieces)
    assert all(0 < len(message) <= CHUNK for message in messages)
    whole = sum(sizes)
    if 0 < whole <= CHUNK:  # a small answer is one message: one write
        assert len(messages) == 1
    # never more messages than the fewest chunks plus one per piece boundary crossed
    assert len(messages) <= -(-whole // CHUNK) + len(pieces)


async def test_a_tiny_answer_is_one_message():
    """A tiny .npz answer is three pieces (headers, data, directory): one body message, so
    one write, not three."""
    app = create_app(Settings())
    bodies: list[bytes] = []

    async def recording(scope, receive, send):
        async def sending(message):
            if message["type"] == "http.response.body":
                bodies.append(message["body"])
            await send(message)

        await app(scope, receive, sending)

    x, w = np.ones((1, 1, 8, 8), np.float32), np.ones((1, 1, 3, 3), np.float32)
    kwargs = request("npz", {"x": x, "w": w}, {"padding": 1}, "application/x-npz")
    async with app.router.lifespan_context(app):
        transport = httpx.ASGITransport(app=recording)
        async with httpx.AsyncClient(transport=transport, base_url="http://convengine") as client:
            response = await client.post("/forward", **kwargs)
    assert response.status_code == 200
    assert len(bodies) == 1
    with np.load(io.BytesIO(bodies[0])) as answer:
        assert answer["out"].shape == (1, 1, 8, 8)
