"""Throughput of one large sharded backward over 1, 2 and 3 replicas.

    python -m benchmarks.replicas [--quick] [--rounds N] [--out FILE]

Starts three replicas (``python -m app``) on 127.0.0.1, each with one BLAS thread
(OPENBLAS_NUM_THREADS=1) and one computation slot, and times the same call, split into the
same shards, with the client given the first 1, 2 and 3 of them; beside it, the engine alone
in this process on one thread (the floor of one replica). The answers of every round must be
the same bits. Medians of the rounds, the replica counts interleaved within each round.
"""

from __future__ import annotations

import argparse
import os
import platform
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

import httpx
import numpy as np

import convengine as ce
from convengine.client import ConvClient

ONE_THREAD = {"OPENBLAS_NUM_THREADS": "1", "OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1"}


@dataclass(frozen=True)
class Workload:
    n: int
    c: int
    size: int
    f: int
    shards: int

    def arrays(self) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        rng = np.random.default_rng(0)
        x = rng.standard_normal((self.n, self.c, self.size, self.size), dtype=np.float32)
        w = rng.standard_normal((self.f, self.c, 3, 3), dtype=np.float32)
        dout = rng.standard_normal((self.n, self.f, self.size, self.size), dtype=np.float32)
        return dout, x, w

    @property
    def gflop(self) -> float:
        geometry = ce.ConvGeometry.build(
            (self.n, self.c, self.size, self.size), (self.f, self.c, 3, 3), padding=1
        )
        return 2 * geometry.flops() / 1e9  # backward: two GEMM-sized passes

    @property
    def megabytes(self) -> float:
        """What one call moves: dout and x sent, dx, dw and db received."""
        return 4 * (self.n * (2 * self.c + self.f) * self.size**2 + 2 * self.f * self.c * 9) / 1e6

    def __str__(self) -> str:
        return (
            f"backward N{self.n} C{self.c} {self.size}x{self.size} F{self.f} 3x3 p1, float32, "
            f"{self.shards} shards"
        )


WORKLOADS = {
    # Many pixels, few channels: about 140 FLOP per byte sent and received.
    "wide": Workload(n=128, c=32, size=56, f=64, shards=16),
    # Few pixels, many channels: twice the arithmetic on a third less data.
    "deep": Workload(n=64, c=128, size=28, f=128, shards=16),
}
QUICK = Workload(n=16, c=8, size=16, f=8, shards=4)


def _free_port() -> int:
    import socket

    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


@contextmanager
def replicas(count: int, logs: Path) -> Iterator[list[str]]:
    """``count`` services on loopback, one BLAS thread and one computation slot each."""
    processes, urls = [], []
    try:
        for i in range(count):
            port = _free_port()
            env = {
                **os.environ,
                **ONE_THREAD,
                "CONVENGINE_PORT": str(port),
                "CONVENGINE_MAX_CONCURRENT": "1",
                "CONVENGINE_LOG_LEVEL": "warning",
                "CONVENGINE_REPLICA": f"r{i}",
                "CONVENGINE_GRPC_PORT": "0",  # HTTP only: the replicas would share 8001
            }
            with (logs / f"replica-{i}.log").open("wb") as log:
                processes.append(
                    subprocess.Popen([sys.executable, "-m", "app"], env=env, stdout=log, stderr=log)
                )
            urls.append(f"http://127.0.0.1:{port}")
        for url in urls:
            _wait_ready(url)
        yield urls
    finally:
        for process in processes:
            process.terminate()
        for process in processes:
            process.wait(timeout=60)


def _wait_ready(url: str, timeout: float = 60) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            if httpx.get(f"{url}/readyz", timeout=1).status_code == 200:
                return
        except httpx.TransportError:
            pass
        time.sleep(0.1)
    raise RuntimeError(f"{url} was not ready in {timeout} s")


def _engine_one_thread(workload: Workload, rounds: int) -> float:
    from threadpoolctl import threadpool_limits

    dout, x, w = workload.arrays()
    times = []
    with threadpool_limits(1):
        for _ in range(rounds):
            started = time.perf_counter()
            ce.conv_backward(dout, x, w, padding=1)
            times.append(time.perf_counter() - started)
    return statistics.median(times)


def measure(workload: Workload, rounds: int, urls: list[str]) -> dict[int, float]:
    """Median seconds of the call over the first 1, 2, 3 replicas; the answers' bits checked."""
    dout, x, w = workload.arrays()
    clients = {k: ConvClient(urls[:k]) for k in range(1, len(urls) + 1)}
    times: dict[int, list[float]] = {k: [] for k in clients}
    reference: tuple[np.ndarray, ...] | None = None
    try:
        for client in clients.values():  # connections up, limits read, buffers warm
            client.backward(dout, x, w, padding=1, shards=workload.shards)
        for round_ in range(rounds):
            order = list(clients) if round_ % 2 == 0 else list(reversed(clients))
            for k in order:
                started = time.perf_counter()
                answer = clients[k].backward(dout, x, w, padding=1, shards=workload.shards)
                times[k].append(time.perf_counter() - started)
                reference = reference or answer
                if any(a.tobytes() != r.tobytes() for a, r in zip(answer, reference, strict=True)):
                    raise AssertionError(f"{k} replicas gave other bits than the first call")
    finally:
        for client in clients.values():
            client.close()
    return {k: statistics.median(t) for k, t in times.items()}


def report(workload: Workload, rounds: int, seconds: dict[int, float], engine: float) -> str:
    cpus = len(os.sched_getaffinity(0))
    load = ", ".join(f"{v:.1f}" for v in os.getloadavg())
    lines = [
        f"{workload}; {workload.gflop:.1f} GFLOP and {workload.megabytes:.0f} MB moved a call",
        f"{cpus} CPUs ({platform.processor() or platform.machine()}), load average {load} "
        f"at the end; numpy {np.__version__}; medians of {rounds} rounds",
        "",
        "| replicas | s a call | samples/s | GFLOP/s | speed-up |",
        "|---:|---:|---:|---:|---:|",
    ]
    for k, s in seconds.items():
        lines.append(
            f"| {k} | {s:.2f} | {workload.n / s:.0f} | {workload.gflop / s:.1f} | "
            f"{seconds[1] / s:.2f}x |"
        )
    lines.append(
        f"| engine in-process, 1 thread | {engine:.2f} | {workload.n / engine:.0f} | "
        f"{workload.gflop / engine:.1f} | {seconds[1] / engine:.2f}x |"
    )
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="a small workload (for tests)")
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--replicas", type=int, default=3)
    parser.add_argument("--workload", choices=sorted(WORKLOADS), action="append")
    parser.add_argument("--out", type=Path)
    args = parser.parse_args(argv)
    workloads = [QUICK] if args.quick else [WORKLOADS[w] for w in args.workload or WORKLOADS]
    rounds = 1 if args.quick else args.rounds
    texts = []
    with (
        tempfile.TemporaryDirectory(prefix="convengine-replicas-") as logs,
        replicas(args.replicas, Path(logs)) as urls,
    ):
        for workload in workloads:
            seconds = measure(workload, rounds, urls)
            engine = _engine_one_thread(workload, rounds)
            texts.append(report(workload, rounds, seconds, engine))
            print(texts[-1], flush=True)
    text = "\n".join(texts)
    if args.out is not None:
        args.out.write_text(text)


if __name__ == "__main__":
    main()
