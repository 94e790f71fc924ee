"""Throughput of the mid forward on Ray Serve with 1, 2 and 4 replicas.

    make serve-ray && python -m benchmarks.ray_serve [--replicas 1,2,4] [--seconds 20]

On the cluster ``make serve-ray`` started (its CONVENGINE_* and CONVENGINE_RAY_* variables),
redeploys with a fixed number of replicas (one CPU and one computation slot each) and drives
``POST /forward`` (the mid layer, ``.npz`` both ways) from ``--concurrency`` threads, half
through each node's proxy, for ``--seconds``; every answer must be the engine's bits. Beside
it, the engine alone in this process on one thread (the ceiling of one replica), and the same
load on ``python -m app`` with one worker and one slot (the service without Ray's proxies).
"""

from __future__ import annotations

import argparse
import io
import os
import socket
import statistics
import subprocess
import sys
import threading
import time
from dataclasses import dataclass, field

import httpx
import numpy as np
from threadpoolctl import threadpool_limits

import convengine as ce
from app.config import Settings
from app.ray_serve import RayOptions, deploy, wait_ready

X_SHAPE, W_SHAPE = (16, 32, 56, 56), (64, 32, 3, 3)  # the mid layer, padding 1


@dataclass
class Run:
    replicas: int
    seconds: float = 0.0
    latencies: list[float] = field(default_factory=list)
    served_by: set[str] = field(default_factory=set)

    @property
    def rps(self) -> float:
        return len(self.latencies) / self.seconds

    def ms(self, q: float) -> float:
        ordered = sorted(self.latencies)
        return ordered[min(len(ordered) - 1, int(q * len(ordered)))] * 1e3


def _body() -> tuple[bytes, bytes]:
    rng = np.random.default_rng(0)
    x = rng.standard_normal(X_SHAPE, dtype=np.float32)
    w = rng.standard_normal(W_SHAPE, dtype=np.float32)
    stream = io.BytesIO()
    np.savez(stream, x=x, w=w)
    return stream.getvalue(), ce.conv(x, w, padding=1).tobytes()


def engine_alone(repeats: int = 5) -> float:
    """Milliseconds of the mid forward in this process on one BLAS thread (median)."""
    rng = np.random.default_rng(0)
    x = rng.standard_normal(X_SHAPE, dtype=np.float32)
    w = rng.standard_normal(W_SHAPE, dtype=np.float32)
    times = []
    with threadpool_limits(1):
        for _ in range(repeats + 1):
            started = time.perf_counter()
            ce.conv(x, w, padding=1)
            times.append(time.perf_counter() - started)
    return statistics.median(times[1:]) * 1e3


def drive(urls: list[str], replicas: int, seconds: float, concurrency: int) -> Run:
    body, want = _body()
    run, lock = Run(replicas), threading.Lock()
    headers = {"content-type": "application/x-npz", "accept": "application/x-npz"}
    deadline = time.monotonic() + seconds

    def worker(url: str) -> None:
        with httpx.Client(base_url=url, timeout=300, headers=headers) as client:
            while time.monotonic() < deadline:
                started = time.perf_counter()
                answer = client.post("/forward?padding=1", content=body)
                elapsed = time.perf_counter() - started
                if answer.status_code != 200:
                    raise RuntimeError(f"{answer.status_code}: {answer.text[:200]}")
                with np.load(io.BytesIO(answer.content)) as arrays:
                    if arrays["out"].tobytes() != want:
                        raise RuntimeError("an answer differs from the engine's")
                with lock:
                    run.latencies.append(elapsed)
                    run.served_by.add(answer.headers["x-replica"])

    threads = [
        threading.Thread(target=worker, args=(urls[i % len(urls)],)) for i in range(concurrency)
    ]
    started = time.monotonic()
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    run.seconds = time.monotonic() - started
    return run


def _replicas_answering(urls: list[str]) -> set[str]:
    with httpx.Client(timeout=30) as client:
        return {client.get(f"{url}/readyz").headers["x-replica"] for url in urls for _ in range(16)}


def without_ray(seconds: float, concurrency: int) -> Run:
    """The same load on ``python -m app`` (one worker, one slot, one BLAS thread)."""
    env = dict(os.environ, CONVENGINE_PORT="0", CONVENGINE_GRPC_PORT="0")
    env.update(
        CONVENGINE_MAX_CONCURRENT="1", OPENBLAS_NUM_THREADS="1", CONVENGINE_LOG_LEVEL="warning"
    )
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        env["CONVENGINE_PORT"] = str(sock.getsockname()[1])
    url = f"http://127.0.0.1:{env['CONVENGINE_PORT']}"
    service = subprocess.Popen(
        [sys.executable, "-m", "app"], env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL
    )
    try:
        wait_ready(url, 120)
        drive([url], 1, 3, concurrency)  # warm up
        return drive([url], 1, seconds, concurrency)
    finally:
        service.terminate()
        service.wait(timeout=60)


def main(argv: list[str] | None = None) -> None:
    cli = argparse.ArgumentParser(prog="python -m benchmarks.ray_serve", description=__doc__)
    cli.add_argument("--replicas", default="1,2,4", help="replica counts, comma-separated")
    cli.add_argument("--seconds", type=float, default=20.0, help="of load per replica count")
    cli.add_argument("--concurrency", type=int, default=8, help="requests in flight")
    args = cli.parse_args(argv)
    os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")
    settings = Settings()
    alone = engine_alone()
    print(f"engine alone, one thread: {alone:.1f} ms a mid forward ({1e3 / alone:.1f}/s)")
    print("| replicas | requests/s | p50 ms | p95 ms | replicas that answered |")
    print("|---|---|---|---|---|")
    plain = without_ray(args.seconds, args.concurrency)
    print(f"| python -m app, 1 worker | {plain.rps:.1f} | {plain.ms(0.5):.0f} "
          f"| {plain.ms(0.95):.0f} | 1 |", flush=True)  # fmt: skip
    for count in (int(n) for n in args.replicas.split(",")):
        options = RayOptions(min_replicas=count, max_replicas=count)
        urls = deploy(options, settings)
        deadline = time.monotonic() + 300
        while len(_replicas_answering(urls)) < count and time.monotonic() < deadline:
            time.sleep(1)
        drive(urls, count, 3, args.concurrency)  # warm up
        run = drive(urls, count, args.seconds, args.concurrency)
        print(f"| {count} | {run.rps:.1f} | {run.ms(0.5):.0f} | {run.ms(0.95):.0f} "
              f"| {len(run.served_by)} |", flush=True)  # fmt: skip


if __name__ == "__main__":
    main()
