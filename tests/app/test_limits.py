"""Body size, concurrency and readiness limits."""

from __future__ import annotations

import anyio
import pytest

from app.config import Settings
from app.errors import Overloaded
from app.limits import Gate

from .conftest import serve

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
