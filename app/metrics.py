"""Prometheus metrics of the service, correct with several worker processes.

With ``PROMETHEUS_MULTIPROC_DIR`` set (``python -m app`` sets it when it starts several
workers), every worker writes its samples there and ``/metrics`` adds them up; the workers'
``process_*`` figures (CPU, memory, open files) are added up too (:class:`WorkerProcesses`).
No ``_created`` series: they double the series count and nobody graphs them.
"""

from __future__ import annotations

import os
import platform
from collections.abc import Iterator
from functools import partial
from pathlib import Path

import numpy as np
from prometheus_client import (
    CONTENT_TYPE_LATEST,
    REGISTRY,
    CollectorRegistry,
    Counter,
    Gauge,
    Histogram,
    PlatformCollector,
    ProcessCollector,
    disable_created_metrics,
    generate_latest,
    multiprocess,
)
from prometheus_client.metrics_core import Metric
from prometheus_client.registry import Collector
from threadpoolctl import threadpool_info

import convengine

__all__ = [
    "ADMITTED",
    "BUILD_INFO",
    "COMPUTING",
    "CONTENT_TYPE_LATEST",
    "ENGINE_SECONDS",
    "KEY_REQUESTS",
    "MEMORY_BUDGET",
    "MEMORY_RESERVED",
    "MODEL_LAST_INFERENCE",
    "MODEL_SECONDS",
    "QUEUE_SECONDS",
    "REFUSALS",
    "REPLICA_INFO",
    "REQUESTS",
    "REQUEST_BYTES",
    "REQUEST_SECONDS",
    "RESPONSE_BYTES",
    "WorkerProcesses",
    "collect",
    "name_replica",
    "render",
]

disable_created_metrics()  # type: ignore[no-untyped-call]

_BYTES = (1e3, 1e4, 1e5, 1e6, 1e7, 1e8, 1e9)
_SECONDS = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60)

# operation: the table's operation name (/forward, ...), the model's name under /v2, or
# empty for the routes that compute nothing (/healthz, /metrics, ...).
REQUESTS = Counter(
    "convengine_requests_total",
    "HTTP requests answered",
    ["route", "operation", "method", "status"],
)
REQUEST_SECONDS = Histogram(
    "convengine_request_duration_seconds",
    "Time from the request's arrival to the end of its response",
    ["route", "operation", "method"],
    buckets=_SECONDS,
)
REQUEST_BYTES = Histogram(
    "convengine_request_size_bytes", "Request body sizes", ["route"], buckets=_BYTES
)
RESPONSE_BYTES = Histogram(
    "convengine_response_size_bytes", "Response body sizes", ["route"], buckets=_BYTES
)
ENGINE_SECONDS = Histogram(
    "convengine_compute_seconds",
    "Time in the convolution engine, by the table's operation",
    ["operation"],
    buckets=_SECONDS,
)
QUEUE_SECONDS = Histogram(
    "convengine_queue_wait_seconds",
    "Time a request waited for computation slots (to decode, then to compute), in total",
    buckets=_SECONDS,
)
COMPUTING = Gauge(
    "convengine_computations_in_flight",
    "Convolutions being computed now",
    multiprocess_mode="livesum",
)
ADMITTED = Gauge(
    "convengine_computations_admitted",
    "Requests holding a computation slot or waiting for one (computing + waiting): the load "
    "signal to scale replicas on",
    multiprocess_mode="livesum",
)
REFUSALS = Counter(
    "convengine_refusals_total", "Requests refused, by status and reason", ["status", "reason"]
)

MEMORY_BUDGET = Gauge(
    "convengine_memory_budget_bytes",
    "Memory that requests may reserve at once (CONVENGINE_MEMORY_BUDGET_MB or the container's)",
    multiprocess_mode="livesum",
)
MEMORY_RESERVED = Gauge(
    "convengine_memory_reserved_bytes",
    "Memory reserved now by requests: bodies, decoded arrays, work and answers",
    multiprocess_mode="livesum",
)


def _blas() -> str:
    found = [f"{pool['internal_api']} {pool['version']}" for pool in threadpool_info()]
    return ", ".join(sorted(set(found))) or "none"


BUILD_INFO = Gauge(
    "convengine_build_info",
    "Always 1: the versions this replica runs",
    ["version", "python", "numpy", "blas"],
    multiprocess_mode="max",
)
BUILD_INFO.labels(convengine.__version__, platform.python_version(), np.__version__, _blas()).set(1)

REPLICA_INFO = Gauge(
    "convengine_replica_info",
    "Always 1: this replica's name, as its X-Replica header says (a Ray replica's is its "
    "deployment, id and node)",
    ["replica"],
    multiprocess_mode="max",
)


def name_replica(replica: str) -> None:
    """``convengine_replica_info`` names ``replica``, and only it (an app made again in one
    process, as tests do, renames it; workers of one service share its name)."""
    if not os.environ.get("PROMETHEUS_MULTIPROC_DIR"):  # where clearing is not implemented
        REPLICA_INFO.clear()
    REPLICA_INFO.labels(replica).set(1)


KEY_REQUESTS = Counter(
    "convengine_key_requests_total",
    "Requests with a valid API key, by the key's id (the first 8 hex digits of its SHA-256)",
    ["key", "status"],
)

# Per model of the inference protocol, over REST and gRPC alike: the numbers behind its
# statistics extension (app.statistics). Phases: "success" and "fail" (a request from its
# arrival to its answer), "queue" (arrival to decoding: the body, a place, memory),
# "compute_input" (decoding and validation), "compute_infer" (the engine), "compute_output"
# (encoding).
MODEL_SECONDS = Histogram(
    "convengine_model_seconds",
    "Inference protocol requests per model, by phase: count and time",
    ["model", "phase"],
    buckets=_SECONDS,
)
MODEL_LAST_INFERENCE = Gauge(
    "convengine_model_last_inference_milliseconds",
    "When a model last answered an inference, in milliseconds since the epoch",
    ["model"],
    multiprocess_mode="max",
)


class WorkerProcesses(Collector):
    """The ``process_*`` metrics of every live worker that writes to ``folder``, added up
    (CPU seconds, memory, open files) or the earliest (start time)."""

    def __init__(self, folder: Path) -> None:
        self.folder = folder

    def pids(self) -> list[int]:
        found = {path.stem.rsplit("_", 1)[-1] for path in self.folder.glob("*.db")}
        return sorted(int(pid) for pid in found if pid.isdigit() and Path(f"/proc/{pid}").exists())

    def collect(self) -> Iterator[Metric]:
        families: dict[str, Metric] = {}
        for pid in self.pids():
            for family in ProcessCollector(pid=partial(int, pid), registry=None).collect():
                _add(families.setdefault(family.name, family), family)
        yield from families.values()


def _add(total: Metric, family: Metric) -> None:
    if total is family:
        return
    combine = min if total.name in ("process_start_time_seconds", "process_max_fds") else sum
    total.samples = [
        one._replace(value=combine((one.value, other.value)))
        for one, other in zip(total.samples, family.samples, strict=False)  # a worker gone mid-read
    ]


def _registry() -> CollectorRegistry:
    """The registry to read: with several workers, theirs added up (process metrics too)."""
    folder = os.environ.get("PROMETHEUS_MULTIPROC_DIR")
    if not folder:
        return REGISTRY
    registry = CollectorRegistry()
    multiprocess.MultiProcessCollector(registry)  # type: ignore[no-untyped-call]
    registry.register(WorkerProcesses(Path(folder)))
    PlatformCollector(registry)
    return registry


def render() -> bytes:
    """The exposition text of every metric, summed over worker processes if there are several."""
    return generate_latest(_registry())


def collect(metric: str) -> list[tuple[str, dict[str, str], float]]:
    """Every sample of ``metric`` (name, labels, value), summed over worker processes."""
    return [
        (sample.name, sample.labels, sample.value)
        for family in _registry().collect()
        if family.name == metric
        for sample in family.samples
    ]
