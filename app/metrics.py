"""Prometheus metrics of the service, correct with several worker processes.

With ``PROMETHEUS_MULTIPROC_DIR`` set (``python -m app`` sets it when it starts several
workers), every worker writes its samples there and ``/metrics`` adds them up.
"""

from __future__ import annotations

import os

from prometheus_client import (
    CONTENT_TYPE_LATEST,
    REGISTRY,
    CollectorRegistry,
    Counter,
    Gauge,
    Histogram,
    generate_latest,
    multiprocess,
)

__all__ = [
    "ADMITTED",
    "COMPUTING",
    "CONTENT_TYPE_LATEST",
    "ENGINE_SECONDS",
    "KEY_REQUESTS",
    "REFUSALS",
    "REQUESTS",
    "REQUEST_BYTES",
    "REQUEST_SECONDS",
    "RESPONSE_BYTES",
    "render",
]

_BYTES = (1e3, 1e4, 1e5, 1e6, 1e7, 1e8, 1e9)
_SECONDS = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60)

REQUESTS = Counter(
    "convengine_requests_total", "HTTP requests answered", ["route", "method", "status"]
)
REQUEST_SECONDS = Histogram(
    "convengine_request_duration_seconds",
    "Time from the request's arrival to the end of its response",
    ["route", "method"],
    buckets=_SECONDS,
)
REQUEST_BYTES = Histogram(
    "convengine_request_size_bytes", "Request body sizes", ["route"], buckets=_BYTES
)
RESPONSE_BYTES = Histogram(
    "convengine_response_size_bytes", "Response body sizes", ["route"], buckets=_BYTES
)
ENGINE_SECONDS = Histogram(
    "convengine_engine_seconds", "Time in the convolution engine", ["pass"], buckets=_SECONDS
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

KEY_REQUESTS = Counter(
    "convengine_key_requests_total",
    "Requests with a valid API key, by the key's id (the first 8 hex digits of its SHA-256)",
    ["key", "status"],
)


def render() -> bytes:
    """The exposition text of every metric, summed over worker processes if there are several."""
    if os.environ.get("PROMETHEUS_MULTIPROC_DIR"):
        registry = CollectorRegistry()
        multiprocess.MultiProcessCollector(registry)  # type: ignore[no-untyped-call]
        return generate_latest(registry)
    return generate_latest(REGISTRY)
