"""The inference protocol over gRPC against REST .npz, on one `python -m app`, in one run.

``python -m benchmarks.transports [--calls 40] [--count 80]`` starts the service on free
127.0.0.1 ports (HTTP and gRPC), then for a small (x 1x1x8x8, w 1x1x3x3) and a mid
(x 16x32x56x56 float32, w 32x32x3x3, padding 1) forward pass measures: the median latency of
``--calls`` sequential calls, and the throughput of ``--count`` calls at concurrency 4 (each
worker its own client), over tritonclient.grpc (raw tensors) and over httpx posting .npz to
/forward with an .npz answer. Every answer is checked against the first. Prints one table.
"""

from __future__ import annotations

import argparse
import io
import statistics
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from functools import partial

import httpx
import numpy as np
import tritonclient.grpc as tgrpc

from benchmarks.payloads import request
from benchmarks.process import running_service

CASES = {
    "small 1x1x8x8": ((1, 1, 8, 8), (1, 1, 3, 3)),
    "mid 16x32x56x56": ((16, 32, 56, 56), (32, 32, 3, 3)),
}
CONCURRENCY = 4
Call = Callable[[], np.ndarray]


def _grpc_caller(target: str, x: np.ndarray, w: np.ndarray) -> Call:
    client = tgrpc.InferenceServerClient(target)

    def call() -> np.ndarray:
        inputs = []
        for name, array in (("x", x), ("w", w)):
            tensor = tgrpc.InferInput(name, list(array.shape), "FP32")
            tensor.set_data_from_numpy(array)
            inputs.append(tensor)
        result = client.infer("conv2d", inputs, parameters={"padding": 1})
        return np.asarray(result.as_numpy("out"))

    return call


def _rest_caller(url: str, x: np.ndarray, w: np.ndarray) -> Call:
    client = httpx.Client(base_url=url, timeout=120)
    body = request("npz", {"x": x, "w": w}, {"padding": 1}, "application/x-npz")

    def call() -> np.ndarray:
        response = client.post("/forward", **body)
        response.raise_for_status()
        with np.load(io.BytesIO(response.content), allow_pickle=False) as archive:
            return np.asarray(archive["out"])

    return call


def _measure(make: Callable[[], Call], calls: int, count: int) -> tuple[float, float, np.ndarray]:
    """Median latency (ms) of sequential calls, calls per second at concurrency 4, an answer."""
    call = make()
    answer = call()  # warm: connection, buffers
    times = []
    for _ in range(calls):
        started = time.perf_counter()
        call()
        times.append(time.perf_counter() - started)
    workers = [make() for _ in range(CONCURRENCY)]
    started = time.perf_counter()
    with ThreadPoolExecutor(CONCURRENCY) as pool:
        list(pool.map(lambda i: workers[i % CONCURRENCY](), range(count)))
    return statistics.median(times) * 1000, count / (time.perf_counter() - started), answer


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--calls", type=int, default=40)
    parser.add_argument("--count", type=int, default=80)
    args = parser.parse_args()
    with running_service(grpc=True) as service:
        rng = np.random.default_rng(0)
        print(f"{'case':18} {'transport':10} {'median ms':>10} {'calls/s at 4':>13}")
        for case, (x_shape, w_shape) in CASES.items():
            x = rng.standard_normal(x_shape).astype(np.float32)
            w = rng.standard_normal(w_shape).astype(np.float32)
            answers = []
            for transport, make in (
                ("gRPC", partial(_grpc_caller, service.grpc_target, x, w)),
                ("REST .npz", partial(_rest_caller, service.url, x, w)),
            ):
                median, rate, answer = _measure(make, args.calls, args.count)
                answers.append(answer)
                print(f"{case:18} {transport:10} {median:10.2f} {rate:13.1f}")
            np.testing.assert_array_equal(answers[0], answers[1])


if __name__ == "__main__":
    main()
