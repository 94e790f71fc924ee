"""One call split along the batch over several replicas: planning, assembly, retries, /limits.

The replicas here are in-process apps behind one httpx transport that routes by host name,
delays answers and fails on request; tests/load/test_replicas.py does the same against real
uvicorn processes.
"""

from __future__ import annotations

import io
import time
from collections.abc import Callable

import anyio
import httpx
import numpy as np
import pytest

import convengine as ce
from app.config import Settings
from app.main import create_app
from convengine import OPERATIONS
from convengine._shards import Assembly, Limits, plan, request_bytes
from convengine.client import AsyncConvClient, ConvClient, ConvServiceError

from .conftest import serve

pytestmark = pytest.mark.anyio
HOSTS = ("a", "b", "c")
URLS = [f"http://{host}" for host in HOSTS]
ENGINE = {
    "forward": lambda x, w, dout, **h: (ce.conv(x, w, **h),),
    "backward": lambda x, w, dout, **h: ce.conv_backward(dout, x, w, **h),
    "conv_transpose": lambda x, w, dout, **h: (ce.conv_transpose(x, w, **h),),
    "conv_transpose_backward": lambda x, w, dout, **h: ce.conv_transpose_backward(dout, x, w, **h),
}


# --- the table ---------------------------------------------------------------------------------


@pytest.mark.parametrize("name", OPERATIONS)
def test_table_says_which_outputs_are_per_sample_and_which_are_sums(name):
    operation = OPERATIONS[name]
    outputs = set(operation.outputs)
    assert outputs == (operation.batched & outputs) | operation.summed
    assert not operation.batched & operation.summed
    assert operation.batched <= set(operation.arrays)
    for array in operation.batched:
        assert operation.arrays[array].axes.startswith("N,"), array
    for array in operation.summed:
        assert not operation.arrays[array].axes.startswith("N"), array
    assert "x" in operation.batched  # every operation has a batch to split


# --- planning ----------------------------------------------------------------------------------


def _problem(
    name: str, rng: np.random.Generator, n: int = 12, dtype: str = "float64", size: int = 6
):
    """Arrays (x, w, dout) and hyperparameters for ``name``, 2-D, with the batch marked:
    x[i, 0, 0, 0] = i, so a request tells which samples it carries."""
    transposed = name.startswith("conv_transpose")
    x = rng.standard_normal((n, 3, size, size - 1)).astype(dtype)
    x[:, 0, 0, 0] = np.arange(n)
    if transposed:
        w = rng.standard_normal((3, 4, 3, 3)).astype(dtype)
        hyper = {"stride": 2, "padding": 1, "output_padding": 1}
        out = ce.conv_transpose(x, w, **hyper)
    else:
        w = rng.standard_normal((4, 3, 3, 3)).astype(dtype)
        hyper = {"stride": 1, "padding": 1}
        out = ce.conv(x, w, **hyper)
    dout = rng.standard_normal(out.shape).astype(dtype)
    return x, w, dout, hyper


def _args(name, x, w, dout):
    return (dout, x, w) if name.endswith("backward") else (x, w)


def test_plan_splits_evenly_within_the_body_limit(rng):
    x, w, dout, hyper = _problem("backward", rng, n=10, size=16)
    arrays = {"dout": dout, "x": x, "w": w}
    operation = OPERATIONS["backward"]
    whole = request_bytes(operation, arrays, 10)
    parts = plan(operation, arrays, hyper, Limits(max_body_bytes=whole // 4))
    sizes = [part.stop - part.start for part in parts]
    assert sum(sizes) == 10 and max(sizes) - min(sizes) <= 1
    assert all(request_bytes(operation, arrays, n) <= whole // 4 for n in sizes)
    assert len(parts) == 5  # two samples a shard: three would not fit
    assert len(plan(operation, arrays, hyper, Limits(), shards=3)) == 3
    assert len(plan(operation, arrays, hyper, Limits(), shards=99)) == 10  # one sample each
    assert len(plan(operation, arrays, hyper, Limits(), max_request_bytes=whole // 2)) == 3
    assert plan(operation, arrays, hyper, Limits()) == [slice(None)]


def test_plan_keeps_work_and_arithmetic_within_limits(rng):
    x, w, _dout, hyper = _problem("forward", rng, n=8)
    operation = OPERATIONS["forward"]
    arrays = {"x": x, "w": w}
    cost = operation.cost(operation.plan({"x": x.shape, "w": w.shape}, hyper), np.float64)
    assert len(plan(operation, arrays, hyper, Limits(max_work_bytes=cost.work_bytes // 2))) >= 2
    gflop = cost.flops / 1e9
    assert len(plan(operation, arrays, hyper, Limits(max_gflop=gflop / 4))) == 4


def test_plan_sends_whole_what_the_service_will_refuse(rng):
    x, w, dout, hyper = _problem("backward", rng, n=6)
    arrays = {"dout": dout[:5], "x": x, "w": w}  # batches disagree: the service says so
    assert plan(OPERATIONS["backward"], arrays, hyper, Limits(), shards=3) == [slice(None)]
    # One sample over the limit: shards of one, which the service refuses with its reason.
    parts = plan(OPERATIONS["forward"], {"x": x, "w": w}, hyper, Limits(max_body_bytes=1024))
    assert len(parts) == 6


def test_sums_are_added_in_float64_in_shard_order():
    operation = OPERATIONS["backward"]
    pieces = [np.float32(v) for v in (1e8, 1.0, -1e8, 1.0)]

    def shard(i: int) -> dict[str, np.ndarray]:
        return {"dx": np.full((1, 1), i, np.float32), "dw": np.array([pieces[i]]), "db": pieces[i]}

    in_order, reversed_order = Assembly(operation, 4), Assembly(operation, 4)
    for i in range(4):
        in_order.add(i, shard(i))
    for i in reversed(range(4)):  # the same shards, finishing in the other order
        reversed_order.add(i, shard(i))
    a, b = in_order.result(), reversed_order.result()
    assert a["dw"].dtype == np.float32 and a["dw"][0] == 2.0  # float32 sums would give 0 or 1
    for name in ("dx", "dw", "db"):
        assert a[name].tobytes() == b[name].tobytes()
    np.testing.assert_array_equal(a["dx"].ravel(), [0, 1, 2, 3])


# --- /limits -----------------------------------------------------------------------------------


async def test_limits_says_what_one_request_may_be():
    settings = Settings(max_body_bytes=5000, max_concurrent=3, max_waiting=7)
    async with serve(settings) as http:
        limits = (await http.get("/limits")).json()
        schema = (await http.get("/openapi.json")).json()
    assert limits == {
        "max_body_bytes": 5000,
        "max_json_bytes": settings.max_json_bytes,
        "max_decoded_bytes": settings.max_decoded_bytes,
        "max_work_bytes": settings.max_work_bytes,
        "max_gflop": settings.max_gflop,
        "memory_budget_bytes": settings.memory_budget(),
        "max_concurrent": 3,
        "max_waiting": 7,
    }
    answer = schema["paths"]["/limits"]["get"]["responses"]["200"]
    assert answer["content"]["application/json"]["schema"] == {
        "$ref": "#/components/schemas/Limits"
    }
    assert "max_body_bytes" in schema["components"]["schemas"]["Limits"]["properties"]


@pytest.mark.parametrize("budget_mb", [200, 300])
async def test_limits_reports_the_memory_budget(budget_mb):
    async with serve(Settings(memory_budget_mb=budget_mb)) as http:
        assert (await http.get("/limits")).json()["memory_budget_bytes"] == budget_mb << 20


async def test_the_load_signal_is_exported():
    async with serve() as http:
        text = (await http.get("/metrics")).text
    assert "convengine_computations_admitted" in text
    assert "convengine_computations_in_flight" in text


# --- several in-process replicas ---------------------------------------------------------------


class Replicas(httpx.AsyncBaseTransport):
    """In-process apps by host name, with answers delayed, refused or lost on request."""

    def __init__(self, settings: Settings, delay: Callable[[], float] | None = None) -> None:
        self.apps = {host: create_app(settings) for host in HOSTS}
        self.transports = {host: httpx.ASGITransport(app=app) for host, app in self.apps.items()}
        self.delay = delay
        self.down: set[str] = set()
        self.busy: set[str] = set()
        self.finished: list[tuple[str, int]] = []  # (host, first sample), as answers came

    async def handle_async_request(self, request: httpx.Request) -> httpx.Response:
        host = request.url.host
        if host in self.down:
            raise httpx.ConnectError(f"{host} is down", request=request)
        if request.method == "POST" and host in self.busy:
            detail = [{"loc": [], "msg": "busy", "type": "overloaded"}]
            return httpx.Response(503, headers={"retry-after": "5"}, json={"detail": detail})
        response = await self.transports[host].handle_async_request(request)
        if request.method == "POST":
            await response.aread()
            if self.delay is not None:
                await anyio.sleep(self.delay())
            with np.load(io.BytesIO(request.content)) as sent:
                self.finished.append((host, int(sent["x"][0, 0, 0, 0])))
        return response

    def served(self) -> set[str]:
        return {host for host, _ in self.finished}


def _body_limit(name: str, x, w, dout) -> int:
    arrays = dict(zip(OPERATIONS[name].inputs, _args(name, x, w, dout), strict=False))
    return request_bytes(OPERATIONS[name], arrays, x.shape[0]) // 4


@pytest.mark.parametrize("name", OPERATIONS)
@pytest.mark.parametrize("dtype", ["float64", "float32"])
async def test_every_operation_sharded_over_replicas_equals_the_engine(name, dtype, rng):
    x, w, dout, hyper = _problem(name, rng, n=16, dtype=dtype)
    replicas = Replicas(Settings(max_body_bytes=_body_limit(name, x, w, dout)))
    async with AsyncConvClient(URLS, transport=replicas) as client:
        got = await client.call(name, *_args(name, x, w, dout), **hyper)
    got = got if isinstance(got, tuple) else (got,)
    want = ENGINE[name](x, w, dout, **hyper)
    assert len(replicas.finished) >= 4 and replicas.served() == set(HOSTS)
    for output, g, e in zip(OPERATIONS[name].outputs, got, want, strict=True):
        assert g.dtype == np.dtype(dtype) and g.shape == e.shape, output
        if dtype == "float64":
            np.testing.assert_allclose(g, e, rtol=1e-12, atol=1e-12, err_msg=output)
        elif output in OPERATIONS[name].summed:
            np.testing.assert_allclose(g, e, rtol=1e-5, atol=1e-5 * np.abs(e).max(), err_msg=output)
        else:
            np.testing.assert_array_equal(g, e, err_msg=output)  # per sample: the same sums


async def test_answers_are_bitwise_the_same_whatever_order_shards_finish_in(rng):
    x, w, dout, hyper = _problem("backward", rng, n=24, dtype="float32")
    delays = np.random.default_rng(7)
    replicas = Replicas(Settings(), delay=lambda: float(delays.uniform(0, 0.03)))
    answers, orders = [], []
    async with AsyncConvClient(URLS, transport=replicas, concurrency=8) as client:
        for _ in range(4):
            replicas.finished.clear()
            answers.append(await client.backward(dout, x, w, shards=8, **hyper))
            orders.append(tuple(first for _, first in replicas.finished))
    assert len(set(orders)) > 1, orders  # the shards did finish in different orders
    for answer in answers[1:]:
        for got, first in zip(answer, answers[0], strict=True):
            assert got.tobytes() == first.tobytes()
    # However many replicas: the same shards on one replica give the same bits.
    async with AsyncConvClient("http://a", transport=replicas) as client:
        alone = await client.backward(dout, x, w, shards=8, **hyper)
    for got, first in zip(alone, answers[0], strict=True):
        assert got.tobytes() == first.tobytes()


async def test_a_refusal_fails_the_whole_call_at_once_with_the_service_detail(rng):
    x, w, _dout, _hyper = _problem("forward", rng, n=12)
    replicas = Replicas(Settings(), delay=lambda: 0.05)
    started = time.monotonic()
    async with AsyncConvClient(URLS, transport=replicas, concurrency=2) as client:
        with pytest.raises(ConvServiceError) as info:
            await client.forward(x, w, shards=12, stride=2)  # 6 + 2 - 3 over 2: not whole
    assert info.value.status_code == 422
    assert info.value.detail[0]["loc"] == ["query", "stride"]
    assert "is not a whole number" in info.value.detail[0]["msg"]
    assert len(replicas.finished) <= 2 and time.monotonic() - started < 2


async def test_a_replica_down_or_busy_is_avoided_and_its_shards_retried(rng):
    x, w, dout, hyper = _problem("backward", rng, n=12)
    replicas = Replicas(Settings())
    replicas.down, replicas.busy = {"a"}, {"b"}
    started = time.monotonic()
    async with AsyncConvClient(URLS, transport=replicas) as client:
        got = await client.backward(dout, x, w, shards=6, **hyper)
    assert time.monotonic() - started < 4  # never waited out b's Retry-After of 5 s
    assert replicas.served() == {"c"}
    for g, e in zip(got, ENGINE["backward"](x, w, dout, **hyper), strict=True):
        np.testing.assert_allclose(g, e, rtol=1e-12, atol=1e-12)


async def test_retries_are_bounded(rng):
    x, w, _dout, hyper = _problem("forward", rng, n=4)
    replicas = Replicas(Settings())
    replicas.down = set(HOSTS)
    async with AsyncConvClient(URLS, transport=replicas, retries=2) as client:
        with pytest.raises(httpx.ConnectError):
            await client.forward(x, w, shards=2, **hyper)


async def test_progress_is_reported_per_shard(rng):
    x, w, _dout, hyper = _problem("forward", rng, n=6)
    seen: list[tuple[int, int]] = []
    async with AsyncConvClient(URLS, transport=Replicas(Settings())) as client:
        await client.forward(
            x, w, shards=3, progress=lambda done, total: seen.append((done, total)), **hyper
        )
        await client.forward(x, w, shards=2, progress=True, **hyper)  # a tqdm bar on stderr
    assert seen == [(1, 3), (2, 3), (3, 3)]


# --- the blocking client, and names resolving to several addresses ----------------------------


def _engine_server(seen: list[httpx.Request]) -> httpx.MockTransport:
    """A replica in a function: /limits, and forward by the engine (for the blocking client)."""

    def handle(request: httpx.Request) -> httpx.Response:
        seen.append(request)
        if request.url.path == "/limits":
            return httpx.Response(200, json={"max_body_bytes": 4096})
        with np.load(io.BytesIO(request.content)) as sent:
            x, w = sent["x"], sent["w"]
        stream = io.BytesIO()
        np.savez(stream, out=ce.conv(x, w, padding=int(request.url.params["padding"])))
        time.sleep(0.01 * (int(x[0, 0, 0, 0]) % 3))  # finish out of order
        return httpx.Response(200, content=stream.getvalue())

    return httpx.MockTransport(handle)


def test_blocking_client_spreads_over_every_address_of_a_name_keeping_its_host(rng):
    x, w, _dout, hyper = _problem("forward", rng, n=12)
    seen: list[httpx.Request] = []
    addresses = ["127.0.0.1", "127.0.0.2", "127.0.0.3"]
    with ConvClient(
        "http://convengine-pods:8000",
        resolve=lambda host, port: addresses if (host, port) == ("convengine-pods", 8000) else [],
        transport=_engine_server(seen),
    ) as client:
        out = client.forward(x, w, **hyper)  # split by the 4 KiB limit that /limits gives
    np.testing.assert_allclose(out, ce.conv(x, w, **hyper), rtol=1e-12, atol=1e-12)
    posts = [request for request in seen if request.method == "POST"]
    assert len(posts) >= 4
    assert {request.url.host for request in seen} == set(addresses)
    assert {request.url.port for request in seen} == {8000}
    assert {request.headers["host"] for request in seen} == {"convengine-pods:8000"}
    assert sum(request.url.path == "/limits" for request in seen) == 3  # once per replica


def test_the_default_resolver_finds_loopback():
    from convengine.client import resolve_addresses

    assert "127.0.0.1" in resolve_addresses("localhost", 80)
