"""Admission by memory against a real uvicorn: concurrent near-limit bodies (.npz, JSON and
the inference protocol's binary tensors) against a small budget. Every answer is a 200 or a designed 503, the peak resident size stays within the
budget plus the baseline, and the resident size falls back near the baseline afterwards.

Figures are printed: run with -s to see them.
"""

from __future__ import annotations

import io
import time
from collections import Counter

import anyio
import httpx
import numpy as np
import orjson
import psutil

from ..servers import start_service

MiB = 1 << 20
BUDGET_MB = 1536
MAX_BODY = 64 * MiB
MAX_JSON = 8 * MiB
CLIENTS = 8
JSON_CLIENTS = 3
PROTOCOL_CLIENTS = 3
ROUNDS = 2


def _npz(**arrays: np.ndarray) -> bytes:
    stream = io.BytesIO()
    np.savez(stream, **arrays)
    return stream.getvalue()


def _status_kib(pid: int, key: str) -> int:
    with open(f"/proc/{pid}/status") as status:
        for line in status:
            if line.startswith(key + ":"):
                return int(line.split()[1]) * 1024
    raise AssertionError(key)


def test_near_limit_bodies_stay_within_the_memory_budget(tmp_path):
    service = start_service(
        tmp_path,
        log_level="warning",
        memory_budget_mb=str(BUDGET_MB),
        max_body_bytes=str(MAX_BODY),
        max_json_bytes=str(MAX_JSON),
        max_concurrent="2",
        max_waiting="32",
        memory_wait="30",
        body_timeout="60",
    )
    try:
        service.wait_ready()
        pid = service.process.pid
        x = np.random.default_rng(3).standard_normal((15, 4, 512, 512)).astype(np.float32)
        w = np.ones((4, 4, 1, 1), np.float32)
        body = _npz(x=x, w=w)
        assert MAX_BODY - 4 * MiB < len(body) <= MAX_BODY
        expected = np.einsum("fc,nchw->nfhw", w[:, :, 0, 0], x)
        headers = {"content-type": "application/x-npz", "accept": "application/x-npz"}
        small = httpx.post(f"{service.url}/forward", json={"x": [[[[1.0]]]], "w": [[[[2.0]]]]})
        assert small.status_code == 200
        baseline = psutil.Process(pid).memory_info().rss
        with open(f"/proc/{pid}/clear_refs", "w") as refs:
            refs.write("5")  # the peak resident size starts again from here
        statuses: Counter[int] = Counter()
        wrong: list[str] = []

        async def client() -> None:
            async with httpx.AsyncClient(base_url=service.url, timeout=120) as http:
                for _ in range(ROUNDS):
                    response = await http.post("/forward", content=body, headers=headers)
                    statuses[response.status_code] += 1
                    if response.status_code == 200:
                        with np.load(io.BytesIO(response.content)) as archive:
                            if not np.allclose(archive["out"], expected, atol=1e-4):
                                wrong.append("wrong numbers")
                    elif response.status_code == 503:
                        assert response.headers["retry-after"] == "1"
                        assert response.headers["x-request-id"]
                    else:
                        wrong.append(f"{response.status_code}: {response.text[:200]}")

        # A mix: JSON bodies near their limit (each reserves 32x its size) and the inference
        # protocol's binary tensors, beside the .npz bodies.
        rows = np.random.default_rng(4).standard_normal((1, 2, 512, 1000)).round(3)
        json_body = orjson.dumps({"x": rows.tolist(), "w": [[[[1.0]], [[2.0]]]]})
        assert MAX_JSON // 2 < len(json_body) <= MAX_JSON
        json_expected = rows[:, 0:1] + 2 * rows[:, 1:2]
        raw = x[:4].astype("<f4").tobytes()
        infer_header = orjson.dumps(
            {
                "inputs": [
                    {
                        "name": "x",
                        "shape": [4, 4, 512, 512],
                        "datatype": "FP32",
                        "parameters": {"binary_data_size": len(raw)},
                    },
                    {"name": "w", "shape": [4, 4, 1, 1], "datatype": "FP32", "data": [1.0] * 16},
                ],
                "outputs": [{"name": "out", "parameters": {"binary_data": True}}],
            }
        )

        async def json_client() -> None:
            async with httpx.AsyncClient(base_url=service.url, timeout=120) as http:
                for _ in range(ROUNDS):
                    response = await http.post(
                        "/forward", content=json_body, headers={"content-type": "application/json"}
                    )
                    statuses[response.status_code] += 1
                    if response.status_code == 200:
                        out = np.array(response.json()["out"])
                        if not np.allclose(out, json_expected):
                            wrong.append("wrong JSON numbers")
                    elif response.status_code != 503:
                        wrong.append(f"{response.status_code}: {response.text[:200]}")

        async def protocol_client() -> None:
            async with httpx.AsyncClient(base_url=service.url, timeout=120) as http:
                for _ in range(ROUNDS):
                    response = await http.post(
                        "/v2/models/conv2d/infer",
                        content=infer_header + raw,
                        headers={
                            "content-type": "application/octet-stream",
                            "inference-header-content-length": str(len(infer_header)),
                        },
                    )
                    statuses[response.status_code] += 1
                    if response.status_code not in (200, 503):
                        wrong.append(f"{response.status_code}: {response.text[:200]}")

        async def clients() -> None:
            async with anyio.create_task_group() as tasks:
                for _ in range(CLIENTS):
                    tasks.start_soon(client)
                for _ in range(JSON_CLIENTS):
                    tasks.start_soon(json_client)
                for _ in range(PROTOCOL_CLIENTS):
                    tasks.start_soon(protocol_client)

        started = time.monotonic()
        anyio.run(clients)
        elapsed = time.monotonic() - started
        peak = _status_kib(pid, "VmHWM")
        time.sleep(1.5)  # the trim after the last large request runs 0.2 s after it
        after = psutil.Process(pid).memory_info().rss
        print(
            f"\nmemory: {CLIENTS} clients x {ROUNDS} .npz bodies of {len(body) / MiB:.0f} MiB, "
            f"{JSON_CLIENTS} x {ROUNDS} JSON bodies of {len(json_body) / MiB:.1f} MiB and "
            f"{PROTOCOL_CLIENTS} x {ROUNDS} protocol bodies of {len(raw) / MiB:.0f} MiB in "
            f"{elapsed:.1f} s; statuses {dict(statuses)}; budget {BUDGET_MB} MiB; baseline "
            f"{baseline / MiB:.0f} MiB; peak {peak / MiB:.0f} MiB; after {after / MiB:.0f} MiB"
        )
        assert wrong == []
        assert set(statuses) <= {200, 503} and statuses[200] >= CLIENTS, statuses
        assert sum(statuses.values()) == ROUNDS * (CLIENTS + JSON_CLIENTS + PROTOCOL_CLIENTS)
        assert peak <= BUDGET_MB * MiB + baseline, f"peak {peak / MiB:.0f} MiB"
        assert after <= baseline + 128 * MiB, f"after {after / MiB:.0f} MiB"
        assert httpx.get(f"{service.url}/healthz").status_code == 200
    finally:
        service.stop()
