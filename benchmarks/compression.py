"""The mid forward request as plain and gzipped JSON and .npz: bytes on the wire and latency.

    python -m benchmarks.compression [--rounds 5] [--block 8]

Starts ``python -m app`` on 127.0.0.1 (the production settings), then sends x 16x32x56x56 and
w 64x32x3x3 (float32, padding 1) in each form: as a default httpx client does (its own
Accept-Encoding, which offers gzip among others), plain (identity) and gzipped both ways (the
body at level 1, as ``ConvClient(compress=True)`` does; the answer at the service's level). The variants
take turns within each round, in the opposite order every other round, so that drift and what
one request leaves the next hit all alike; the table has medians. Latency is
measured on loopback, where bytes cost almost nothing: the last column adds what the bytes
would take on a 100 Mbit/s link, computed, not measured.

Then the target of issue 24, base64 JSON within 1.3x of ``.npz`` for a client with default
headers, measured twice: in the interleaved rounds above, where every request follows one of
another kind (a gzipped or nested-list request leaves the heap trimmed, and the next pays for
fresh memory), and one kind of request at a time, as a client that sends one kind (a training
loop) gets them: ``--block`` requests of one form, then of the other, the order turning round
by round, the first request of each block untimed (it pays for the switch).
"""

from __future__ import annotations

import argparse
import gzip
import statistics
import time
from typing import Any

import httpx
import numpy as np

from benchmarks.payloads import request
from benchmarks.process import running_service

LINK_BITS_PER_SECOND = 100e6
B64_TARGET = 1.3  # issue 24: base64 JSON / .npz, default headers
B64, NPZ = "JSON b64, default headers", ".npz, default headers"


FORMS = {"JSON nested lists": "nested", "JSON b64": "b64", ".npz": "npz"}


def mid_arrays() -> dict[str, np.ndarray]:
    rng = np.random.default_rng(0)
    return {
        "x": rng.standard_normal((16, 32, 56, 56), dtype=np.float32),
        "w": rng.standard_normal((64, 32, 3, 3), dtype=np.float32),
    }


# A variant's label -> (its httpx keywords, the seconds its body took to gzip).
Variants = dict[str, tuple[dict[str, Any], float]]


def variants() -> Variants:
    """Each variant's httpx keywords, and the seconds the client spent gzipping its body."""
    arrays = mid_arrays()
    out: Variants = {}
    for label, form in FORMS.items():
        accept = "application/x-npz" if form == "npz" else None
        plain = request(form, arrays, {"padding": 1}, accept)
        body = plain["content"].encode() if isinstance(plain["content"], str) else plain["content"]
        plain["content"] = body
        out[f"{label}, default headers"] = ({**plain, "headers": dict(plain["headers"])}, 0.0)
        plain["headers"] = {**plain["headers"], "accept-encoding": "identity"}
        out[f"{label}, plain"] = (plain, 0.0)
        started = time.perf_counter()
        squeezed = gzip.compress(body, compresslevel=1)
        seconds = time.perf_counter() - started
        headers = {**plain["headers"], "content-encoding": "gzip", "accept-encoding": "gzip"}
        out[f"{label}, gzip"] = ({**plain, "content": squeezed, "headers": headers}, seconds)
    return out


def measure(url: str, rounds: int, cases: Variants) -> list[str]:
    times: dict[str, list[float]] = {label: [] for label in cases}
    wire: dict[str, tuple[int, int]] = {}
    with httpx.Client(base_url=url, timeout=300) as client:
        for round_ in range(rounds + 1):  # round 0 warms up
            # The order turns round by round: a variant that follows a gzipped one finds the
            # heap the service trimmed after it (app.limits.memory.give_back) and pays for
            # fresh memory, which the one after it does not.
            order = list(cases.items())
            for label, (kwargs, _) in order[::-1] if round_ % 2 else order:
                seconds, received = _forward(client, kwargs)
                if round_:
                    times[label].append(seconds)
                wire[label] = (len(kwargs["content"]), received)
    lines = [
        f"mid forward, medians of {rounds} interleaved rounds; MB = 10^6 bytes",
        "",
        "| form | request MB | answer MB | client gzip ms | p50 ms (loopback) | spread ms "
        "| vs .npz, default headers | p50 + client gzip + bytes at 100 Mbit/s, ms |",
        "|---|---:|---:|---:|---:|---:|---:|---:|",
    ]
    baseline = statistics.median(times[".npz, default headers"])
    for label, (_, gzip_seconds) in cases.items():
        sent, received = wire[label]
        p50 = statistics.median(times[label]) * 1e3
        spread = (max(times[label]) - min(times[label])) * 1e3
        link = (sent + received) * 8 / LINK_BITS_PER_SECOND * 1e3
        lines.append(
            f"| {label} | {sent / 1e6:.1f} | {received / 1e6:.1f} | {gzip_seconds * 1e3:.0f} "
            f"| {p50:.0f} | {spread:.0f} | {p50 / baseline / 1e3:.2f}x "
            f"| {p50 + gzip_seconds * 1e3 + link:.0f} |"
        )
    ratio = statistics.median(times[B64]) / baseline
    lines += ["", f"{B64}, interleaved: {ratio:.2f}x {NPZ}, {_verdict(ratio)}"]
    return lines


def _forward(client: httpx.Client, kwargs: dict[str, Any]) -> tuple[float, int]:
    """One forward, its answer read whole (and inflated if gzipped, as a client must): the
    seconds it took and the answer's bytes on the wire."""
    started = time.perf_counter()
    with client.stream("POST", "/forward", **kwargs) as response:
        raw = b"".join(response.iter_raw())
    if response.headers.get("content-encoding") == "gzip":
        gzip.decompress(raw)
    seconds = time.perf_counter() - started
    assert response.status_code == 200, response.text[:300]
    return seconds, len(raw)


def _verdict(ratio: float) -> str:
    return f"target {B64_TARGET}x: {'met' if ratio <= B64_TARGET else 'missed'}"


def measure_blocks(url: str, rounds: int, block: int, cases: Variants) -> list[str]:
    """Base64 JSON against .npz, default headers, one kind of request at a time: each
    round, ``block`` timed requests of one form after an untimed one, then of the other."""
    contenders = {label: cases[label][0] for label in (B64, NPZ)}
    medians: dict[str, list[float]] = {label: [] for label in contenders}
    with httpx.Client(base_url=url, timeout=300) as client:
        for round_ in range(rounds + 1):  # round 0 warms up
            order = list(contenders.items())
            for label, kwargs in order[::-1] if round_ % 2 else order:
                _forward(client, kwargs)  # the switch from the other form, untimed
                taken = [_forward(client, kwargs)[0] for _ in range(block)]
                if round_:
                    medians[label].append(statistics.median(taken))
    ratios = [b64 / npz for b64, npz in zip(medians[B64], medians[NPZ], strict=True)]
    ratio = statistics.median(ratios)
    return [
        f"one kind of request at a time: blocks of {block} after an untimed one, "
        f"{rounds} rounds, the order turning",
        "",
        "| form | p50 ms (loopback) | round medians ms | vs .npz, default headers |",
        "|---|---:|---:|---:|",
        *(
            f"| {label} | {statistics.median(each) * 1e3:.1f} "
            f"| {min(each) * 1e3:.1f}-{max(each) * 1e3:.1f} "
            f"| {statistics.median(each) / statistics.median(medians[NPZ]):.2f}x |"
            for label, each in medians.items()
        ),
        "",
        f"{B64}, one kind at a time: {ratio:.2f}x {NPZ} (median of the rounds' ratios, "
        f"{min(ratios):.2f}-{max(ratios):.2f}), {_verdict(ratio)}",
    ]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--block", type=int, default=8, help="requests of a form in a row")
    args = parser.parse_args()
    with running_service() as service:
        cases = variants()  # made once: the bodies gzipped, nested lists and all
        lines = measure(service.url, args.rounds, cases)
        lines += ["", *measure_blocks(service.url, args.rounds, args.block, cases)]
        print("\n".join(lines))


if __name__ == "__main__":
    main()
