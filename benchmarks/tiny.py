"""The per-request cost: tiny requests against ``/healthz``, as an ordinary client gets them.

    python -m benchmarks.tiny [--rounds 7] [--calls 300] [--cpu-calls 2000]

One ``python -m app`` with its default settings (gRPC off, so that no two processes contend
for its port; the access log written to a file, as an operator's collector would take it),
one ``httpx.Client`` with its default headers (``Accept-Encoding: gzip, deflate`` among
them), sequential round trips on one kept-alive connection. In each round the requests take
turns, ``--calls`` calls each; a row's figure is the median over rounds of the round's
median, and its ratio the median over rounds of the round's median / ``/healthz``'s in that
round, so that a slow stretch of a shared machine moves both sides of a ratio alike. Beside
it, the service process's CPU time per request (``/proc``; each request in a block of
``--cpu-calls``), which the machine's other work barely moves; and how long the event loop
is held by the forwards served on it (in this process).

Targets (issue 24): a tiny forward (1x1x8x8 x, 1x1x3x3 w) within 1.5x of ``/healthz`` in
``.npz`` and in JSON, a tiny backward within 1.8x.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import time
from collections.abc import Callable
from dataclasses import dataclass
from functools import partial
from pathlib import Path
from typing import Any

import httpx
import numpy as np
from threadpoolctl import threadpool_info

from app import pipeline
from app.config import Settings
from app.limits.memory import MemoryBudget, Reservation
from benchmarks.payloads import npz_bytes
from benchmarks.process import running_service
from convengine import OPERATIONS

__all__ = ["Tiny", "machine", "measure", "report"]

X_SHAPE, W_SHAPE = (1, 1, 8, 8), (1, 1, 3, 3)


@dataclass(frozen=True)
class Tiny:
    """One request of the table: its label, what it asks, and its target against /healthz."""

    label: str
    method: str
    path: str
    kwargs: dict[str, Any]
    target: float | None = None


def requests() -> list[Tiny]:
    """The rows: /healthz first (the floor), then the tiny requests."""
    rng = np.random.default_rng(0)
    x = rng.standard_normal(X_SHAPE, dtype=np.float32)
    w = rng.standard_normal(W_SHAPE, dtype=np.float32)
    dout = rng.standard_normal((1, 1, 8, 8), dtype=np.float32)  # padding 1: out is 8x8
    npz = {"content-type": "application/x-npz"}
    jsn = {"content-type": "application/json"}
    nested = {"x": x.tolist(), "w": w.tolist(), "dtype": "float32", "padding": 1}
    dry = {"operation": "forward", "x": {"shape": list(X_SHAPE)}, "w": {"shape": list(W_SHAPE)}}
    params = {"padding": "1"}
    return [
        Tiny("GET /healthz (floor)", "GET", "/healthz", {}),
        Tiny(
            "tiny forward .npz",
            "POST",
            "/forward",
            {"content": npz_bytes(False, x=x, w=w), "params": params, "headers": npz},
            1.5,
        ),
        Tiny(
            "tiny forward JSON",
            "POST",
            "/forward",
            {"content": json.dumps(nested).encode(), "headers": jsn},
            1.5,
        ),
        Tiny(
            "tiny backward .npz",
            "POST",
            "/backward",
            {"content": npz_bytes(False, x=x, w=w, dout=dout), "params": params, "headers": npz},
            1.8,
        ),
        Tiny(
            "tiny backward JSON",
            "POST",
            "/backward",
            {"content": json.dumps({**nested, "dout": dout.tolist()}).encode(), "headers": jsn},
            1.8,
        ),
        Tiny("dry run /explain", "POST", "/explain", {"content": json.dumps(dry).encode()}),
    ]


def _call(call: Callable[[], httpx.Response]) -> float:
    """One round trip, in seconds; an answer other than 200 stops the run."""
    started = time.perf_counter()
    response = call()
    seconds = time.perf_counter() - started
    if response.status_code != 200:
        raise SystemExit(f"{response.status_code}: {response.text[:300]}")
    return seconds


def measure(url: str, rounds: int, calls: int) -> dict[str, list[float]]:
    """Each request's median round trip per round, in milliseconds (healthz first). Within a
    round the requests take turns call by call, so that the machine's other work falls on
    every row alike."""
    with httpx.Client(base_url=url) as client:  # default headers: gzip, deflate accepted
        contenders = {
            each.label: partial(client.request, each.method, each.path, **each.kwargs)
            for each in requests()
        }
        for _ in range(30):  # the connection open, every path warm
            for call in contenders.values():
                _call(call)
        times: dict[str, list[float]] = {label: [] for label in contenders}
        for _ in range(rounds):
            taken: dict[str, list[float]] = {label: [] for label in contenders}
            for _ in range(calls):
                for label, call in contenders.items():
                    taken[label].append(_call(call))
            for label, each in taken.items():
                times[label].append(statistics.median(each) * 1e3)
    return times


def _cpu_seconds(pid: int) -> float:
    """User and system CPU time of process ``pid`` so far (Linux)."""
    fields = Path(f"/proc/{pid}/stat").read_text().rpartition(")")[2].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def service_cpu(url: str, pid: int, calls: int) -> dict[str, float]:
    """The service's CPU time per request, in microseconds, each request in a block of
    ``calls``: what the service spends, which the machine's other work barely moves."""
    spent = {}
    with httpx.Client(base_url=url) as client:
        for each in requests():
            call = partial(client.request, each.method, each.path, **each.kwargs)
            for _ in range(30):
                _call(call)
            before = _cpu_seconds(pid)
            for _ in range(calls):
                _call(call)
            spent[each.label] = (_cpu_seconds(pid) - before) / calls * 1e6
    return spent


def machine() -> str:
    """The CPU, the BLAS kernel and the load, to quote beside every figure."""
    blas = ", ".join(
        f"{pool['internal_api']} {pool['version']} {pool.get('architecture', '?')}"
        for pool in threadpool_info()
        if pool["user_api"] == "blas"
    )
    cpu = platform.processor() or platform.machine()
    info = Path("/proc/cpuinfo")
    for line in info.read_text().splitlines() if info.exists() else ():
        if line.startswith("model name"):
            cpu = line.split(":", 1)[1].strip()
            break
    load = ", ".join(f"{value:.2f}" for value in os.getloadavg())
    return f"{cpu}, {os.cpu_count()} CPUs; BLAS {blas or 'none'}; load average {load}"


def report(
    times: dict[str, list[float]], cpu: dict[str, float], rounds: int, calls: int, cpu_calls: int
) -> list[str]:
    """The table: each request's median, its ratio to /healthz, the target and whether met,
    and the service's CPU time per request."""
    floor = times[requests()[0].label]
    lines = [
        f"tiny requests, one client, sequential, kept alive: {rounds} rounds of {calls} calls "
        f"(service CPU: {cpu_calls} calls of each in a block)",
        "",
        "| request | median ms | / healthz | target | met | service CPU us |",
        "|---|---:|---:|---:|---|---:|",
    ]
    for each in requests():
        ms = times[each.label]
        ratio = statistics.median(t / f for t, f in zip(ms, floor, strict=True))
        target = "" if each.target is None else f"{each.target:.1f}x"
        met = "" if each.target is None else ("yes" if ratio <= each.target else "NO")
        lines.append(
            f"| {each.label} | {statistics.median(ms):.3f} | {ratio:.2f}x | {target} | {met} "
            f"| {cpu.get(each.label, float('nan')):.0f} |"
        )
    return lines


def _on_loop(arrays: dict[str, np.ndarray], calls: int) -> float:
    """Microseconds the event loop is held to serve a forward of ``arrays`` in .npz (padding
    1) there, in this process: decode, validate, compute and encode (median of ``calls``)."""
    settings, forward = Settings(), OPERATIONS["forward"]
    budget = MemoryBudget(1 << 40, 1, 1.0)
    body = npz_bytes(False, **arrays)
    times = []
    for _ in range(calls):
        started = time.perf_counter()
        reservation = Reservation(budget)
        prepared = pipeline.prepare(
            forward, body, reservation, "application/x-npz", None, {"padding": "1"}, settings
        )
        if not (len(body) <= pipeline.INLINE_BODY_BYTES and pipeline.tiny(prepared.cost)):
            raise SystemExit(f"{arrays['x'].shape} would not be served on the loop")
        prepared.finish()
        times.append(time.perf_counter() - started)
        reservation.release()
    return statistics.median(times) * 1e6


def held_loop(calls: int) -> list[str]:
    """How long the event loop is held by the tiny forward, and by the largest forwards
    served there (x 1x1x32x32: 18 kflop, 74 KiB; x 1x1x42x42: 31.8 kflop, 127 KiB; the
    bounds are 32 kflop and 128 KiB), with w 1x1x3x3."""
    rng = np.random.default_rng(1)
    w = rng.standard_normal(W_SHAPE, dtype=np.float32)
    held = []
    for shape in (X_SHAPE, (1, 1, 32, 32), (1, 1, 42, 42)):
        x = rng.standard_normal(shape, dtype=np.float32)
        side = "x".join(map(str, shape))
        held.append(f"{side} {_on_loop({'x': x, 'w': w}, calls):.0f} us")
    return ["event loop held by a forward served on it, in-process: " + ", ".join(held)]


def run(rounds: int, calls: int, cpu_calls: int = 2000) -> list[str]:
    """Start the service, measure, and the report with the machine it ran on."""
    with running_service(log_level="info") as service:  # the default level
        times = measure(service.url, rounds, calls)
        cpu = service_cpu(service.url, service.pid, cpu_calls)
    return [*report(times, cpu, rounds, calls, cpu_calls), "", *held_loop(calls), machine()]


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=7, help="rounds over every request")
    parser.add_argument("--calls", type=int, default=300, help="calls per request per round")
    parser.add_argument(
        "--cpu-calls", type=int, default=2000, help="calls per request timed for service CPU"
    )
    args = parser.parse_args(argv)
    print("\n".join(run(args.rounds, args.calls, args.cpu_calls)))


if __name__ == "__main__":
    main()
