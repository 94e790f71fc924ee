"""Inference statistics per model (Triton's statistics extension), from the metrics' numbers.

A request to a model of the inference protocol, over REST or gRPC, is timed by a
:class:`Timing` that writes its phases into :data:`app.metrics.MODEL_SECONDS` (and the time of
its answer into :data:`app.metrics.MODEL_LAST_INFERENCE`); :func:`model_statistics` reads them
back from the metrics registry, so that ``/metrics``, ``GET /v2/models/stats`` and the
``ModelStatistics`` RPC give the same counts and times (summed over worker processes when
there are several).
"""

from __future__ import annotations

import time
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Any

from app import metrics

__all__ = ["PHASES", "Timing", "model_statistics"]

# Triton's InferStatistics, in its order: success and fail time a whole request; queue and
# compute_* the phases of a successful one. A convolution caches nothing: cache_* stay 0.
PHASES = (
    "success",
    "fail",
    "queue",
    "compute_input",
    "compute_infer",
    "compute_output",
    "cache_hit",
    "cache_miss",
)


@dataclass
class Timing:
    """The phases of one inference request to ``model``, timed from its arrival."""

    model: str
    arrived: int = field(default_factory=time.perf_counter_ns)
    phases: dict[str, int] = field(default_factory=dict)

    @contextmanager
    def phase(self, name: str) -> Iterator[None]:
        """Time ``name``; the queue is the time from the arrival to the first phase timed."""
        started = time.perf_counter_ns()
        self.phases.setdefault("queue", started - self.arrived)
        try:
            yield
        finally:
            self.phases[name] = time.perf_counter_ns() - started

    def done(self, ok: bool) -> None:
        """Record the request, and its phases if it succeeded (nothing before its model is
        known: a message that names none counts in the request metrics only)."""
        if not self.model:
            return
        total = time.perf_counter_ns() - self.arrived
        recorded = {**self.phases, "success": total} if ok else {"fail": total}
        for phase, ns in recorded.items():
            metrics.MODEL_SECONDS.labels(self.model, phase).observe(ns / 1e9)
        if ok:
            metrics.MODEL_LAST_INFERENCE.labels(self.model).set(time.time() * 1000)


def model_statistics(names: Sequence[str], version: str) -> list[dict[str, Any]]:
    """Triton's ModelStatistics of each model in ``names``, as the REST extension answers it
    (the gRPC answer is the same document as a message)."""
    counts: dict[tuple[str, str], dict[str, int]] = {}
    for sample, labels, value in metrics.collect("convengine_model_seconds"):
        kind = sample.rpartition("_")[2]  # count or sum
        if kind in ("count", "sum"):
            entry = counts.setdefault((labels["model"], labels["phase"]), {"count": 0, "ns": 0})
            entry["count" if kind == "count" else "ns"] += round(
                value if kind == "count" else value * 1e9
            )
    last = {
        labels["model"]: int(value)
        for _, labels, value in metrics.collect("convengine_model_last_inference_milliseconds")
    }

    def stats(name: str) -> dict[str, Any]:
        phases = {phase: counts.get((name, phase), {"count": 0, "ns": 0}) for phase in PHASES}
        succeeded = phases["success"]["count"]
        return {
            "name": name,
            "version": version,
            "last_inference": last.get(name, 0),
            # Each request is one inference and one execution: the models batch nothing.
            "inference_count": succeeded,
            "execution_count": succeeded,
            "inference_stats": phases,
            "batch_stats": [],
        }

    return [stats(name) for name in names]
