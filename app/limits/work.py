"""The work limits: what one computation may allocate, and how much arithmetic it may ask for."""

from __future__ import annotations

from dataclasses import dataclass

from pydantic_core import PydanticCustomError

from convengine import Cost

__all__ = ["WorkLimits", "check_cost"]

MiB = 1 << 20


@dataclass(frozen=True)
class WorkLimits:
    max_bytes: int
    max_gflop: float


def _refusal(message: str) -> PydanticCustomError:
    # No field to blame: the whole request is too big.
    return PydanticCustomError("work_limit", "{message}", {"message": message, "field": ""})


def check_cost(cost: Cost, out_shape: tuple[int, ...], limits: WorkLimits) -> None:
    """A validation error for a computation that needs more memory or arithmetic than allowed."""
    if cost.work_bytes > limits.max_bytes:
        raise _refusal(
            f"this convolution would need about {cost.work_bytes / MiB:,.0f} MiB of working "
            f"memory (output {out_shape}), over the "
            f"service's limit of {limits.max_bytes / MiB:,.0f} MiB: "
            "send a smaller batch, image or padding"
        )
    gflop = cost.flops / 1e9
    if gflop > limits.max_gflop:
        raise _refusal(
            f"this convolution would take {gflop:,.1f} GFLOP, over the service's limit of "
            f"{limits.max_gflop:,.1f} GFLOP: split the batch into several requests"
        )
