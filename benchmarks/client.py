"""Per-call cost of the blocking client on a tiny request: ``python -m benchmarks.client``.

One service on loopback answers a 1x1x4x4 forward. Three ways to send it, in interleaved
rounds: ``ConvClient`` (generated from ``AsyncConvClient`` by ``scripts/unasync.py``), the
same call through a blocking portal over ``AsyncConvClient`` (the other way to write the
client once, not taken), and a bare ``httpx.Client`` POST of the same ``.npz`` body (the
floor: HTTP and the service alone). The fastest round says most on a shared machine.
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


def _timed(call: Callable[[], object], calls: int) -> float:
    """Microseconds per call, over ``calls`` calls."""
    start = time.perf_counter()
    for _ in range(calls):
        call()
    return (time.perf_counter() - start) / calls * 1e6


def _measure(url: str, rounds: int, calls: int) -> dict[str, list[float]]:
    """Microseconds per call of each contender, one figure per round."""
    with _contenders(url) as contenders:
        for call in contenders.values():
            _timed(call, 20)  # connections open, limits read
        times: dict[str, list[float]] = {name: [] for name in contenders}
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
    print("| contender | us/call, fastest round | us/call, median round |")
    print("|---|---:|---:|")
    for name, each in times.items():
        print(f"| {name} | {min(each):.0f} | {statistics.median(each):.0f} |")


if __name__ == "__main__":
    main()
