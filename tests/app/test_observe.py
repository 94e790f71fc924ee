"""Request ids, replica names, metrics and the JSON access log."""

from __future__ import annotations

import json
import logging

import httpx
import numpy as np
import pytest
from prometheus_client.parser import text_string_to_metric_families

import convengine
from app.config import Settings
from app.logs import JsonFormatter

from ..servers import start_service
from .conftest import serve

pytestmark = pytest.mark.anyio
BODY = {"x": [[[[1.0, 2.0], [3.0, 4.0]]]], "w": [[[[1.0]]]]}


def _samples(text: str) -> dict[tuple[str, frozenset[tuple[str, str]]], float]:
    return {
        (sample.name, frozenset(sample.labels.items())): sample.value
        for family in text_string_to_metric_families(text)
        for sample in family.samples
    }


def _value(samples, name: str, **labels: str) -> float:
    return samples.get((name, frozenset(labels.items())), 0.0)


async def test_request_id_is_echoed_or_made_and_replica_named():
    async with serve(Settings(replica="replica-7")) as client:
        given = await client.post("/forward", json=BODY, headers={"x-request-id": "abc-123"})
        made = await client.post("/forward", json=BODY)
        refused = await client.post(
            "/forward", content=b"x", headers={"content-type": "text/plain"}
        )
    assert given.headers["x-request-id"] == "abc-123"
    assert len(made.headers["x-request-id"]) == 32
    assert refused.headers["x-request-id"] and refused.headers["x-replica"] == "replica-7"
    assert given.headers["x-replica"] == "replica-7"


async def test_one_access_log_line_per_request(caplog):
    async with serve(Settings(replica="r1")) as client:
        with caplog.at_level(logging.INFO, logger="convengine.access"):
            await client.post(
                "/forward",
                content=json.dumps(BODY),
                headers={"x-request-id": "log-me", "content-type": "application/json"},
            )
    records = [r for r in caplog.records if r.name == "convengine.access"]
    assert len(records) == 1
    line = json.loads(JsonFormatter().format(records[0]))
    assert (line["level"], line["logger"], line["msg"]) == (
        "info",
        "convengine.access",
        "POST /forward 200",
    )
    assert line["operation"] == "forward"
    assert line["request_id"] == "log-me" and line["replica"] == "r1"
    assert (line["method"], line["route"], line["status"]) == ("POST", "/forward", 200)
    assert line["bytes_in"] == len(json.dumps(BODY)) and line["bytes_out"] > 10
    assert line["duration_ms"] > 0


async def test_metrics_count_requests_bytes_engine_time_and_refusals(client):
    before = _samples((await client.get("/metrics")).text)
    await client.post("/forward", json=BODY)
    await client.post("/backward", json={**BODY, "dout": BODY["x"]})
    await client.post("/forward", content=b"x", headers={"content-type": "text/plain"})
    await client.post("/forward", json={**BODY, "stride": 0})
    await client.post("/conv_transpose/forward", json=BODY)
    await client.post("/v2/models/conv_transpose2d/infer", json={"inputs": []})
    text = (await client.get("/metrics")).text
    after = _samples(text)

    def delta(name, **labels):
        return _value(after, name, **labels) - _value(before, name, **labels)

    def requests(route, operation, status):
        labels = {"route": route, "operation": operation, "method": "POST", "status": status}
        return delta("convengine_requests_total", **labels)

    assert requests("/forward", "forward", "200") == 1
    assert requests("/backward", "backward", "200") == 1
    assert requests("/forward", "forward", "415") == 1
    assert requests("/conv_transpose/forward", "conv_transpose", "200") == 1
    assert requests("/v2/models/{name}/infer", "conv_transpose2d", "400") == 1
    assert delta("convengine_refusals_total", status="415", reason="unsupported_media_type") == 1
    assert delta("convengine_refusals_total", status="422", reason="greater_than_equal") == 1
    assert delta("convengine_compute_seconds_count", operation="forward") == 1
    assert delta("convengine_compute_seconds_count", operation="backward") == 1
    assert delta("convengine_compute_seconds_count", operation="conv_transpose") == 1
    assert delta("convengine_queue_wait_seconds_count") == 3  # once per computed request
    assert delta("convengine_request_size_bytes_sum", route="/forward") > 0
    labels = {"route": "/forward", "operation": "forward", "method": "POST"}
    assert delta("convengine_request_duration_seconds_count", **labels) == 3
    assert _value(after, "convengine_computations_in_flight") == 0
    assert "_created" not in text


async def test_metrics_name_the_build_and_the_memory_budget():
    async with serve(Settings(memory_budget_mb=300)) as client:
        await client.post("/forward", json=BODY)
        samples = _samples((await client.get("/metrics")).text)
    (build,) = [dict(labels) for name, labels in samples if name == "convengine_build_info"]
    assert build["version"] == convengine.__version__ and build["python"].startswith("3.")
    assert build["numpy"] == np.__version__ and build["blas"] not in ("", "none")
    assert _value(samples, "convengine_memory_budget_bytes") == 300 << 20
    # The answer has been sent: everything reserved went back.
    assert _value(samples, "convengine_memory_reserved_bytes") == 0


async def test_metrics_name_the_replica_as_its_header_does():
    for name in ("pod-a", "convengine#x1y2z3@96ee9dfb"):  # a second app: only its name
        async with serve(Settings(replica=name)) as client:
            answer = await client.get("/metrics")
        named = [
            dict(labels) for n, labels in _samples(answer.text) if n == "convengine_replica_info"
        ]
        assert named == [{"replica": name}] and answer.headers["x-replica"] == name


def test_metrics_add_up_over_worker_processes(tmp_path, monkeypatch):
    monkeypatch.setenv("TMPDIR", str(tmp_path))  # where the service makes its metrics folder
    service = start_service(tmp_path, workers="2")  # info: wait_ready sees both workers start
    try:
        service.wait_ready(streak=5)
        for _ in range(20):  # a new connection each: the kernel spreads them over the workers
            response = httpx.post(f"{service.url}/forward", json=BODY, timeout=10)
            assert response.status_code == 200
        samples = _samples(httpx.get(f"{service.url}/metrics", timeout=10).text)
        labels = {"route": "/forward", "operation": "forward", "method": "POST", "status": "200"}
        assert _value(samples, "convengine_requests_total", **labels) == 20
        # Both workers' resident memory, added up: more than one process's baseline.
        assert _value(samples, "process_resident_memory_bytes") > 2 * 40e6
        assert _value(samples, "process_open_fds") > 0
        assert len(list(tmp_path.glob("convengine-metrics-*"))) == 1
    finally:
        service.stop()
    assert list(tmp_path.glob("convengine-metrics-*")) == []  # removed at shutdown


@pytest.mark.parametrize(
    ("path", "kwargs", "shape"),
    [
        ("/forward", {"json": {"x": [[[[1.0]]]], "w": [[[[1.0]]]]}}, "detail"),
        (
            "/v2/models/conv2d/infer",
            {"json": {"inputs": [{"name": "x", "shape": [1], "datatype": "FP32", "data": [1]}]}},
            "error",
        ),
    ],
)
async def test_a_bug_is_one_log_record_and_a_json_500_with_the_request_id(
    monkeypatch, caplog, path, kwargs, shape
):
    def broken(*args, **kw):
        raise RuntimeError("a bug")

    monkeypatch.setattr("app.pipeline.prepare", broken)
    monkeypatch.setattr("app.protocol.prepare", broken)
    caplog.set_level(logging.INFO)
    async with serve() as client:
        response = await client.post(path, headers={"x-request-id": "bug-42"}, **kwargs)
        assert response.status_code == 500
        assert response.headers["x-request-id"] == "bug-42"
        assert response.headers["content-type"] == "application/json"
        assert "bug-42" in str(response.json()[shape])
        assert (await client.get("/healthz")).status_code == 200
    errors = [r for r in caplog.records if r.levelno >= logging.ERROR]
    assert len(errors) == 1, [r.getMessage() for r in errors]
    assert "bug-42" in errors[0].getMessage() and errors[0].exc_info is not None
