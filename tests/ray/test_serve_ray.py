"""The service on Ray Serve, for real: ``make serve-ray`` starts a Ray cluster of two nodes on
this machine (``ray start`` twice, a Serve proxy on each), requests reach replicas on both
nodes, a replica killed under load is replaced with no failed request, the deployment scales
from one replica to two under load and back, and ``make stop-ray`` leaves no Ray process.

One cluster for the module (starting one costs ~30 s on two cores); the tests run in order,
the last one stops it. Whatever fails, the module's finalizer stops every Ray process.
"""

from __future__ import annotations

import importlib.util
import os
import re
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

import anyio
import httpx
import numpy as np
import psutil
import pytest

import convengine as ce
from app.config import MiB, budget_within
from app.main import create_app
from convengine.client import AsyncConvClient, ConvClient

from ..servers import free_port

# Ray on two busy cores: the first test also starts the cluster (30-60 s), the others wait on
# replicas that Ray starts and stops.
pytestmark = pytest.mark.timeout(600)

ROOT = Path(__file__).resolve().parents[2]
VENV = Path(sys.executable).parent.parent  # make's VENV: this interpreter's
REPLICA = re.compile(r"convengine#(\w+)@([0-9a-f]{8})")
REPLICA_PROCESS = "ray::ServeReplica:convengine:convengine"


def ray_processes() -> list[psutil.Process]:
    """Ray's processes on this machine: its daemons, agents and actors (``ray::...``)."""
    found = []
    for process in psutil.process_iter(["name", "cmdline"]):
        cmdline = process.info["cmdline"] or []
        if process.info["name"] in ("raylet", "gcs_server") or (
            cmdline
            and (cmdline[0].startswith("ray::") or any("site-packages/ray/" in a for a in cmdline))
        ):
            found.append(process)
    return found


def replica_processes() -> list[psutil.Process]:
    return [
        p for p in ray_processes() if (p.info["cmdline"] or [""])[0].startswith(REPLICA_PROCESS)
    ]


def wait_for(condition: Callable[[], bool], timeout: float, what: str) -> float:
    """Seconds until ``condition`` holds, polled; fails after ``timeout``."""
    started = time.monotonic()
    while not condition():
        assert time.monotonic() - started < timeout, f"{what}: not within {timeout} s"
        time.sleep(0.25)
    return time.monotonic() - started


@dataclass
class Cluster:
    urls: list[str]  # the head node's proxy, the second node's
    env: dict[str, str]

    def run(self, *command: str, timeout: float = 420, **env: str) -> str:
        done = subprocess.run(
            command,
            cwd=ROOT,
            env={**self.env, **env},
            capture_output=True,
            text=True,
            timeout=timeout,
            check=False,
        )
        assert done.returncode == 0, f"{command}:\n{done.stdout}\n{done.stderr}"
        return done.stdout

    def replicas(self, url: str, requests: int = 12) -> set[str]:
        with httpx.Client(timeout=30) as client:
            return {client.get(f"{url}/readyz").headers["x-replica"] for _ in range(requests)}

    def node_ids(self) -> set[str]:
        status = self.run(sys.executable, "-m", "ray.scripts.scripts", "status",
                          f"--address=127.0.0.1:{self.env['CONVENGINE_RAY_GCS_PORT']}")  # fmt: skip
        active = status.split("Active:")[1].split("Pending:")[0]
        return set(re.findall(r"node_([0-9a-f]+)", active))


def stop_every_ray_process() -> None:
    subprocess.run(
        [sys.executable, "-m", "app.ray_serve", "stop"], cwd=ROOT, timeout=120, check=False
    )
    for process in ray_processes():
        process.kill()


@pytest.fixture(scope="module")
def cluster() -> Iterator[Cluster]:
    # The ray extra (make install has it): these tests fail, never skip, without it.
    assert importlib.util.find_spec("ray.serve") is not None, "make install adds the ray extra"
    port, worker_port, gcs_port = free_port(), free_port(), free_port()
    env = {
        **os.environ,
        "RAY_USAGE_STATS_ENABLED": "0",
        "CONVENGINE_PORT": str(port),
        "CONVENGINE_RAY_WORKER_PORT": str(worker_port),
        "CONVENGINE_RAY_GCS_PORT": str(gcs_port),
        "CONVENGINE_RAY_MIN_REPLICAS": "2",
        "CONVENGINE_RAY_MAX_REPLICAS": "2",
        "CONVENGINE_RAY_MAX_REPLICAS_PER_NODE": "1",  # one on each node, whatever Ray would pick
        "CONVENGINE_MAX_BODY_BYTES": str(4 * MiB),  # the driver's settings reach the replicas
    }
    urls = [f"http://127.0.0.1:{port}", f"http://127.0.0.1:{worker_port}"]
    try:
        cluster = Cluster(urls, env)
        cluster.run("make", "--no-print-directory", "serve-ray", f"VENV={VENV}")
        yield cluster
    finally:
        stop_every_ray_process()


def _problem(n: int, seed: int = 0) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    rng = np.random.default_rng(seed)
    x = rng.standard_normal((n, 8, 24, 24)).astype(np.float32)
    w = rng.standard_normal((16, 8, 3, 3)).astype(np.float32)
    dout = rng.standard_normal((n, 16, 24, 24)).astype(np.float32)
    return x, w, dout


def test_replicas_on_both_nodes_answer_forward_backward_and_v2(cluster: Cluster):
    import tritonclient.http as triton

    seen = {url: cluster.replicas(url) for url in cluster.urls}
    names = set().union(*seen.values())
    assert all(REPLICA.fullmatch(name) for name in names), names
    nodes = {REPLICA.fullmatch(name)[2] for name in names}  # type: ignore[index]
    assert len(names) >= 2 and len(nodes) == 2, seen
    # `ray status` reads the autoscaler's view, refreshed every few seconds
    wait_for(lambda: len(cluster.node_ids()) == 2, 60, "two nodes in ray status")
    assert nodes == {node[:8] for node in cluster.node_ids()}
    x, w, dout = _problem(2)
    for url in cluster.urls:
        with ConvClient(url) as client:
            assert client.forward(x, w, padding=1).tobytes() == ce.conv(x, w, padding=1).tobytes()
            for got, want in zip(client.backward(dout, x, w, padding=1),
                                 ce.conv_backward(dout, x, w, padding=1), strict=True):  # fmt: skip
                assert got.tobytes() == want.tobytes()
        protocol = triton.InferenceServerClient(url=url.removeprefix("http://"))
        assert protocol.is_server_ready() and protocol.is_model_ready("conv2d")
        inputs = [triton.InferInput("x", list(x.shape), "FP32"),
                  triton.InferInput("w", list(w.shape), "FP32")]  # fmt: skip
        inputs[0].set_data_from_numpy(x)
        inputs[1].set_data_from_numpy(w)
        out = protocol.infer("conv2d", inputs, parameters={"padding": 1}).as_numpy("out")
        assert out.tobytes() == ce.conv(x, w, padding=1).tobytes()
        protocol.close()


def test_each_replica_holds_the_limits_of_its_ray_resources(cluster: Cluster):
    with httpx.Client(timeout=30) as client:
        for url in cluster.urls:
            limits = client.get(f"{url}/limits")
            # 1 CPU and 1024 MiB of Ray memory per replica (the defaults)
            assert limits.json()["max_concurrent"] == 1
            assert limits.json()["memory_budget_bytes"] == budget_within(1024 * MiB, 1)
            metrics = client.get(f"{url}/metrics")
            named = re.findall(r'convengine_replica_info\{replica="([^"]+)"\} 1.0', metrics.text)
            assert named == [metrics.headers["x-replica"]]
            too_big = client.post(f"{url}/forward", content=b"x" * (5 * MiB),
                                  headers={"content-type": "application/x-npz"})  # fmt: skip
            assert too_big.status_code == 413 and "x-replica" in too_big.headers
            assert str(4 * MiB) in too_big.text


def test_the_client_sharded_over_both_proxies_gives_the_in_process_bits(cluster: Cluster):
    x, w, dout = _problem(16, seed=1)
    with ConvClient(cluster.urls) as client:
        served = (client.forward(x, w, padding=1, shards=8),
                  *client.backward(dout, x, w, padding=1, shards=8))  # fmt: skip

    async def in_process() -> tuple[np.ndarray, ...]:
        transport = httpx.ASGITransport(app=create_app())
        async with (
            httpx.AsyncClient(transport=transport, base_url="http://local") as local,
            AsyncConvClient("http://local", client=local) as alone,
        ):
            out = await alone.forward(x, w, padding=1, shards=8)
            return (out, *await alone.backward(dout, x, w, padding=1, shards=8))

    for got, want in zip(served, anyio.run(in_process), strict=True):
        assert got.tobytes() == want.tobytes()


class Counting(httpx.HTTPTransport):
    """Counts the answers that no replica signed (a proxy's 500 for a replica gone)."""

    def __init__(self, load: Load) -> None:
        super().__init__()
        self.load = load

    def handle_request(self, request: httpx.Request) -> httpx.Response:
        response = super().handle_request(request)
        if response.status_code >= 500 and "x-replica" not in response.headers:
            self.load.unsigned += 1
        return response


class Load:
    """Clients posting /forward over both proxies in threads until stopped; every answer
    checked against the engine, every failure kept, the proxies' own errors counted."""

    def __init__(self, urls: list[str], threads: int, **client: object) -> None:
        self.urls, self.client = urls, client
        self.failures: list[BaseException] = []
        self.answers = self.unsigned = 0
        self._stop = threading.Event()
        self._threads = [threading.Thread(target=self._run, args=(i,)) for i in range(threads)]

    def _run(self, index: int) -> None:
        # ~0.3 GFLOP a request: tens of milliseconds on the replica, beyond the proxies' own
        rng = np.random.default_rng(index)
        x = rng.standard_normal((8, 32, 48, 48)).astype(np.float32)
        w = rng.standard_normal((32, 32, 3, 3)).astype(np.float32)
        want = ce.conv(x, w, padding=1).tobytes()
        url = self.urls[index % len(self.urls)]
        transport = Counting(self)
        with ConvClient(url, retries=8, transport=transport, **self.client) as client:  # type: ignore[arg-type]
            while not self._stop.is_set():
                try:
                    assert client.forward(x, w, padding=1).tobytes() == want
                    self.answers += 1
                except BaseException as exc:
                    self.failures.append(exc)

    def __enter__(self) -> Load:
        for thread in self._threads:
            thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        for thread in self._threads:
            thread.join(timeout=120)


def test_a_replica_killed_under_load_is_replaced_and_no_request_fails(cluster: Cluster):
    before = {p.pid for p in replica_processes()}
    assert len(before) == 2
    with Load(cluster.urls, threads=4) as load:
        wait_for(lambda: load.answers >= 8, 60, "answers before the kill")
        killed = psutil.Process(min(before))
        killed.kill()
        started = time.monotonic()
        replaced = wait_for(
            lambda: (
                len({p.pid for p in replica_processes()} - before) == 1
                and len(replica_processes()) == 2
            ),
            120,
            "a new replica process",
        )
        seen = set()
        wait_for(lambda: len(seen.update(cluster.replicas(cluster.urls[0]))
                             or seen.update(cluster.replicas(cluster.urls[1])) or seen) >= 2,
                 120, "two replicas answering")  # fmt: skip
        answering = time.monotonic() - started
        answers_then = load.answers
        wait_for(lambda: load.answers >= answers_then + 8, 60, "answers after the replacement")
    assert load.failures == [], load.failures[:3]
    print(
        f"\nreplica killed: a new process in {replaced:.1f} s, two answering in "
        f"{answering:.1f} s; {load.unsigned} answers of a proxy retried"
    )


def test_it_scales_from_one_replica_to_two_under_load_and_back(cluster: Cluster, tmp_path: Path):
    keys = tmp_path / "keys"
    keys.write_text("ray-test-key\n")
    options = {
        "CONVENGINE_RAY_MIN_REPLICAS": "1",
        "CONVENGINE_RAY_MAX_REPLICAS": "2",
        "CONVENGINE_RAY_TARGET_ONGOING_REQUESTS": "1",
        "CONVENGINE_RAY_UPSCALE_DELAY_S": "1",
        "CONVENGINE_RAY_DOWNSCALE_DELAY_S": "5",
        "CONVENGINE_API_KEYS_FILE": str(keys),  # and the replicas ask for keys
    }
    cluster.run(sys.executable, "-m", "app.ray_serve", "deploy", **options)
    headers = {"authorization": "Bearer ray-test-key"}

    def answering() -> set[str]:  # the replicas that answer through either proxy
        with httpx.Client(timeout=30, headers=headers) as client:
            return {client.get(f"{url}/limits").headers["x-replica"]
                    for url in cluster.urls for _ in range(8)}  # fmt: skip

    wait_for(lambda: len(replica_processes()) == 1 and len(answering()) == 1, 120, "one replica")
    (first,) = answering()
    with httpx.Client(timeout=30) as client:
        for url in cluster.urls:
            assert client.get(f"{url}/limits").status_code == 401  # no key
    with Load(cluster.urls, threads=6, api_key="ray-test-key") as load:
        up = wait_for(lambda: len(answering()) == 2, 120, "a second replica answering under load")
        answers_then = load.answers
        wait_for(lambda: load.answers >= answers_then + 8, 60, "answers with two replicas")
        assert len(replica_processes()) == 2  # still two while the load lasts
    down = wait_for(lambda: len(replica_processes()) == 1 and len(answering()) == 1, 120,
                    "back to one replica")  # fmt: skip
    assert load.failures == [], load.failures[:3]
    assert first in answering() or len(answering()) == 1
    print(f"\nautoscaling: 1 -> 2 in {up:.1f} s under load, 2 -> 1 in {down:.1f} s after it")


def test_stop_ray_leaves_no_ray_process(cluster: Cluster):
    assert ray_processes()
    cluster.run("make", "--no-print-directory", "stop-ray", f"VENV={VENV}")
    assert [p.info["cmdline"] for p in ray_processes()] == []
    for url in cluster.urls:
        with pytest.raises(httpx.TransportError):
            httpx.get(f"{url}/readyz", timeout=5)
