"""The compose topology on loopback: Debian's nginx with the deployment's own configuration,
in front of two real replicas on different 127.0.0.1 ports."""

from __future__ import annotations

import io
import shutil
import signal
import socket
import subprocess
import tempfile
import threading
import time
from collections import Counter
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path

import grpc
import httpx
import numpy as np
import pytest
from grpc_health.v1 import health_pb2, health_pb2_grpc
from prometheus_client.parser import text_string_to_metric_families
from tritonclient.grpc import service_pb2, service_pb2_grpc

from benchmarks.payloads import REQUEST_FORMS, read, request
from convengine import conv2d, conv2d_backward

from ..servers import Service, free_port, start_service

ROOT = Path(__file__).resolve().parents[2]
NGINX_CONF = """daemon off;
worker_processes 2;
worker_rlimit_nofile 16384;
pid {work}/nginx.pid;
error_log {work}/error.log warn;
events {{ worker_connections 4096; }}
http {{
    access_log {work}/access.log;
    client_body_temp_path {work}/client_body;
    proxy_temp_path {work}/proxy;
    fastcgi_temp_path {work}/fastcgi;
    uwsgi_temp_path {work}/uwsgi;
    scgi_temp_path {work}/scgi;
    include {root}/deploy/nginx/convengine.conf;
    include {root}/deploy/nginx/grpc.conf;
}}
"""


@dataclass
class Topology:
    url: str
    grpc_target: str
    replicas: dict[str, Service]
    nginx: subprocess.Popen[bytes]
    work: Path


def _wait_for(url: str, process: subprocess.Popen[bytes], seconds: float = 20) -> None:
    deadline = time.monotonic() + seconds
    while True:
        assert process.poll() is None, "nginx exited"
        try:
            if httpx.get(url, timeout=1).status_code == 200:
                return
        except httpx.TransportError:
            pass
        assert time.monotonic() < deadline, f"{url} did not answer in {seconds} s"
        time.sleep(0.1)


@pytest.fixture(scope="module")
def topology() -> Iterator[Topology]:
    nginx = shutil.which("nginx") or pytest.fail("nginx is not installed: `make test` installs it")
    # nginx's workers run unprivileged: their temp folders must be reachable (not pytest's 0700).
    work = Path(tempfile.mkdtemp(prefix="convengine-topology-"))
    work.chmod(0o755)
    replicas = {
        name: start_service(work, replica=name, log_level="warning", shutdown_timeout="20")
        for name in ("a", "b")
    }
    for replica in replicas.values():
        replica.wait_ready()
    port = free_port()
    upstreams = "".join(
        f"server 127.0.0.1:{r.port} max_fails=1 fail_timeout=5s;\n" for r in replicas.values()
    )
    (work / "upstreams.conf").write_text(upstreams)
    (work / "listen.conf").write_text(f"listen 127.0.0.1:{port};\n")
    grpc_port = free_port()
    grpc_upstreams = "".join(
        f"server {r.grpc_target} max_fails=1 fail_timeout=5s;\n" for r in replicas.values()
    )
    (work / "grpc_upstreams.conf").write_text(grpc_upstreams)
    # Debian's nginx (1.22) spells HTTP/2 on the listen line; the compose one `http2 on`.
    (work / "grpc_listen.conf").write_text(f"listen 127.0.0.1:{grpc_port} http2;\n")
    (work / "nginx.conf").write_text(NGINX_CONF.format(work=work, root=ROOT))
    process = subprocess.Popen([nginx, "-p", str(work), "-c", str(work / "nginx.conf")])
    url = f"http://127.0.0.1:{port}"
    try:
        _wait_for(f"{url}/healthz", process)
        yield Topology(url, f"127.0.0.1:{grpc_port}", replicas, process, work)
    finally:
        process.send_signal(signal.SIGQUIT)  # graceful stop
        process.wait(timeout=30)
        for replica in replicas.values():
            replica.stop()
        shutil.rmtree(work, ignore_errors=True)


def _arrays(rng: np.random.Generator, dtype: str = "float32"):
    x = rng.standard_normal((2, 4, 12, 12)).astype(dtype)
    w = rng.standard_normal((6, 4, 3, 3)).astype(dtype)
    return x, w


def _requests_total(service: Service) -> float:
    text = httpx.get(f"{service.url}/metrics", timeout=5).text
    return sum(
        sample.value
        for family in text_string_to_metric_families(text)
        for sample in family.samples
        if sample.name == "convengine_requests_total" and sample.labels["route"] != "/metrics"
    )


def test_every_form_through_the_balancer_reaches_both_replicas(topology):
    rng = np.random.default_rng(0)
    served = Counter()
    hyper = {"stride": 1, "padding": 1}
    with httpx.Client(base_url=topology.url, timeout=30) as client:
        for _ in range(3):
            for form in REQUEST_FORMS:
                x, w = _arrays(rng)
                forward = client.post("/forward", **request(form, {"x": x, "w": w}, hyper))
                assert forward.status_code == 200, forward.text
                np.testing.assert_array_equal(read(forward, ["out"])["out"], conv2d(x, w, **hyper))
                dout = rng.standard_normal((2, 6, 12, 12)).astype("float32")
                accept = "application/x-npz"
                backward = client.post(
                    "/backward", **request(form, {"x": x, "w": w, "dout": dout}, hyper, accept)
                )
                assert backward.status_code == 200, backward.text
                got = read(backward, ["dx", "dw", "db"])
                for name, want in zip(["dx", "dw", "db"], conv2d_backward(dout, x, w, **hyper)):
                    np.testing.assert_array_equal(got[name], want)
                served.update([forward.headers["x-replica"], backward.headers["x-replica"]])
                assert forward.headers["x-request-id"]
    assert set(served) == {"a", "b"}, served


def test_grpc_through_the_balancer_reaches_both_replicas(topology):
    """tritonclient's messages over grpc_pass (HTTP/2) to both replicas' gRPC ports (before
    the test that stops replica a)."""
    rng = np.random.default_rng(8)
    served = Counter()
    with grpc.insecure_channel(topology.grpc_target) as channel:
        stub = service_pb2_grpc.GRPCInferenceServiceStub(channel)
        for attempt in range(12):
            x, w = _arrays(rng)
            request = service_pb2.ModelInferRequest(model_name="conv2d")
            for name, array in (("x", x), ("w", w)):
                request.inputs.add(name=name, datatype="FP32", shape=array.shape)
                request.raw_input_contents.append(array.tobytes())
            request.parameters["padding"].int64_param = 1
            response, call = stub.ModelInfer.with_call(
                request, metadata=[("x-request-id", f"through-nginx-{attempt}")], timeout=30
            )
            out = np.frombuffer(response.raw_output_contents[0], np.float32)
            np.testing.assert_array_equal(
                out.reshape(response.outputs[0].shape), conv2d(x, w, padding=1)
            )
            initial = dict(call.initial_metadata())
            assert initial["x-request-id"] == f"through-nginx-{attempt}"
            served[initial["x-replica"]] += 1
        with pytest.raises(grpc.RpcError) as caught:  # refusals pass through unchanged
            stub.ModelInfer(service_pb2.ModelInferRequest(model_name="resnet50"), timeout=30)
        assert caught.value.code() == grpc.StatusCode.NOT_FOUND
        health = health_pb2_grpc.HealthStub(channel)
        status = health.Check(health_pb2.HealthCheckRequest(), timeout=30).status
        assert status == health_pb2.HealthCheckResponse.SERVING
    assert set(served) == {"a", "b"}, served


def test_request_id_travels_through_the_balancer(topology):
    response = httpx.get(f"{topology.url}/healthz", headers={"x-request-id": "trace-42"})
    assert response.headers["x-request-id"] == "trace-42"
    made = httpx.get(f"{topology.url}/healthz").headers["x-request-id"]
    assert len(made) == 32  # nginx's $request_id, passed on to the replica and echoed


def test_body_over_the_limit_is_refused_by_nginx_before_any_replica(topology):
    before = [_requests_total(r) for r in topology.replicas.values()]
    host, port = topology.url.removeprefix("http://").split(":")
    with socket.create_connection((host, int(port)), timeout=10) as sock:
        head = (
            "POST /forward HTTP/1.1\r\nHost: convengine\r\nContent-Type: application/x-npz\r\n"
            f"Content-Length: {300 << 20}\r\n\r\n"
        )
        sock.sendall(head.encode() + b"\0" * 65536)
        answer = sock.recv(4096).decode("latin-1")
    assert answer.startswith("HTTP/1.1 413"), answer[:200]
    assert "x-replica" not in answer.lower()
    assert [_requests_total(r) for r in topology.replicas.values()] == before


def test_sigterm_to_one_replica_under_load_fails_no_request(topology):
    """400 requests at concurrency 8; replica a gets SIGTERM a third of the way in."""
    rng = np.random.default_rng(1)
    x = rng.standard_normal((4, 16, 32, 32)).astype("float32")
    w = rng.standard_normal((32, 16, 3, 3)).astype("float32")
    dout = rng.standard_normal((4, 32, 32, 32)).astype("float32")
    expected_out = conv2d(x, w, padding=1)
    expected_dx = conv2d_backward(dout, x, w, padding=1)[0]
    total, done, lock = 400, 0, threading.Lock()
    killed = threading.Event()
    local = threading.local()
    clients: list[httpx.Client] = []

    def one(i: int) -> tuple[int, str, bool]:
        nonlocal done
        client = getattr(local, "client", None)
        if client is None:
            client = local.client = httpx.Client(base_url=topology.url, timeout=60)
            with lock:
                clients.append(client)
        arrays = {"x": x, "w": w} if i % 2 else {"x": x, "w": w, "dout": dout}
        response = client.post(
            "/forward" if i % 2 else "/backward",
            **request("npz", arrays, {"padding": 1}, "application/x-npz"),
        )
        correct = False
        if response.status_code == 200:
            with np.load(io.BytesIO(response.content)) as result:
                correct = (
                    np.array_equal(result["out"], expected_out)
                    if i % 2
                    else np.array_equal(result["dx"], expected_dx)
                )
        with lock:
            done += 1
            if done == total // 3:
                topology.replicas["a"].process.send_signal(signal.SIGTERM)
                killed.set()
        return response.status_code, response.headers.get("x-replica", ""), correct

    started = time.monotonic()
    try:
        with ThreadPoolExecutor(max_workers=8) as pool:
            results = list(pool.map(one, range(total), timeout=240))
    finally:
        for client in clients:
            client.close()
    assert killed.is_set()
    assert time.monotonic() - started < 240
    statuses = Counter(status for status, _, _ in results)
    assert statuses == {200: total}, statuses
    assert all(correct for _, _, correct in results)
    assert Counter(replica for _, replica, _ in results[-(total // 3) :]) == {"b": total // 3}
    log = topology.replicas["a"].stop()  # exited by itself, cleanly
    assert topology.replicas["a"].process.returncode is not None, log


def test_slow_clients_behind_nginx_cannot_starve_the_rest(topology):
    """1,100 unfinished header blocks and 50 stalled uploads at nginx: /healthz and /forward
    through it keep succeeding, and nginx closes the header blocks after its header timeout."""
    host, port = topology.url.removeprefix("http://").split(":")

    def connect(data: bytes) -> socket.socket:
        sock = socket.create_connection((host, int(port)), timeout=10)
        sock.sendall(data)
        return sock

    started = time.monotonic()
    floods = [connect(b"GET /healthz HTTP/1.1\r\nHost: flood\r\nX-Slow: ") for _ in range(1100)]
    stalled = [
        connect(
            b"POST /forward HTTP/1.1\r\nHost: t\r\nContent-Type: application/x-npz\r\n"
            b"Content-Length: 1000000\r\n\r\nPK"
        )
        for _ in range(50)
    ]
    try:
        statuses: Counter[int] = Counter()
        with httpx.Client(base_url=topology.url, timeout=10) as client:
            for _ in range(40):
                statuses[client.get("/healthz").status_code] += 1
                body = {"x": [[[[1.0, 2.0], [3.0, 4.0]]]], "w": [[[[2.0]]]]}
                statuses[client.post("/forward", json=body).status_code] += 1
        assert statuses == Counter({200: 80})
        closed = 0
        for sock in floods:  # nginx's client_header_timeout is 10 s
            sock.settimeout(max(0.1, 14 - (time.monotonic() - started)))
            try:
                sock.recv(4096)  # an end of file (or a reset) once nginx gives up on it
                closed += 1
            except ConnectionResetError:
                closed += 1
            except TimeoutError:
                pass
        print(
            f"\nbehind nginx: {closed}/1100 header blocks closed by {time.monotonic() - started:.1f} s"
        )
        assert closed == 1100
    finally:
        for sock in floods + stalled:
            sock.close()
