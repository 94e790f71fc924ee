"""Per-call cost of the blocking client on a tiny request: ``python -m benchmarks.client``.

One service on loopback answers a 1x1x4x4 forward. Three ways to send it, in interleaved
rounds: ``ConvClient`` (generated from ``AsyncConvClient`` by ``scripts/unasync.py``), the
same call through a blocking portal over ``AsyncConvClient`` (the other way to write the
client once, not taken), and a bare ``httpx.Client`` POST of the same ``.npz`` body (the
floor: HTTP and the service alone). Two figures per call: the wall time, which includes the
service's, and the client process's CPU time (every thread of it, the portal's too), which is
the client's own cost and barely moves with the machine's other work. The fastest round
says most on a shared machine.
"""

from __future__ import annotations

import argparse
import io
import statistics
import tempfile
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path

import httpx
import numpy as np
from anyio.from_thread import start_blocking_portal

from benchmarks.replicas import replicas
from convengine.client import AsyncConvClient, ConvClient

X, W = np.ones((1, 1, 4, 4)), np.ones((1, 1, 2, 2))


@contextmanager
def _contenders(url: str) -> Iterator[dict[str, Callable[[], object]]]:
    body = io.BytesIO()
    np.savez(body, x=X, w=W)
    npz = {"content-type": "application/x-npz", "accept": "application/x-npz"}
    with (
        ConvClient(url) as generated,
        start_blocking_portal() as portal,
        httpx.Client(base_url=url) as bare,
    ):
        wrapped = AsyncConvClient(url)
        try:
            yield {
                "ConvClient (generated)": lambda: generated.forward(X, W, padding=1),
                "portal over AsyncConvClient": lambda: portal.call(
                    lambda: wrapped.forward(X, W, padding=1)
                ),
                "bare httpx.Client POST": lambda: bare.post(
                    "/forward", content=body.getvalue(), params={"padding": "1"}, headers=npz
                ).raise_for_status(),
            }
        finally:
            portal.call(wrapped.aclose)


def _timed(call: Callable[[], object], calls: int) -> tuple[float, float]:
    """Microseconds per call over ``calls`` calls: wall time, and this process's CPU time."""
    wall, cpu = time.perf_counter(), time.process_time()
    for _ in range(calls):
        call()
    return (time.perf_counter() - wall) / calls * 1e6, (time.process_time() - cpu) / calls * 1e6


def _measure(url: str, rounds: int, calls: int) -> dict[str, list[tuple[float, float]]]:
    """(wall, CPU) microseconds per call of each contender, one pair per round."""
    with _contenders(url) as contenders:
        for call in contenders.values():
            _timed(call, 20)  # connections open, limits read
        times: dict[str, list[tuple[float, float]]] = {name: [] for name in contenders}
        for _ in range(rounds):
            for name, call in contenders.items():
                times[name].append(_timed(call, calls))
    return times


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=15, help="interleaved rounds")
    parser.add_argument("--calls", type=int, default=200, help="calls per contender per round")
    args = parser.parse_args(argv)
    with replicas(1, Path(tempfile.mkdtemp(prefix="convengine-bench-"))) as (url,):
        times = _measure(url, args.rounds, args.calls)
    print(f"{args.rounds} rounds of {args.calls} tiny forward calls to one local service\n")
    print(
        "| contender | wall us/call: fastest round | median | client CPU us/call: fastest | median |"
    )
    print("|---|---:|---:|---:|---:|")
    for name, each in times.items():
        wall, cpu = [pair[0] for pair in each], [pair[1] for pair in each]
        figures = (min(wall), statistics.median(wall), min(cpu), statistics.median(cpu))
        print(f"| {name} | " + " | ".join(f"{value:.0f}" for value in figures) + " |")


if __name__ == "__main__":
    main()
