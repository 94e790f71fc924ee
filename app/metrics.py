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
    "MODEL_LAST_INFERENCE",
    "MODEL_SECONDS",
    "REFUSALS",
    "REQUESTS",
    "REQUEST_BYTES",
    "REQUEST_SECONDS",
    "RESPONSE_BYTES",
    "collect",
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


def _registry() -> CollectorRegistry:
    if os.environ.get("PROMETHEUS_MULTIPROC_DIR"):
        registry = CollectorRegistry()
        multiprocess.MultiProcessCollector(registry)  # type: ignore[no-untyped-call]
        return registry
    return REGISTRY


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
