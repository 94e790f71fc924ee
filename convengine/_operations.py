"""The table of operations: what each one takes, gives, costs, and which engine function runs it.

Everything that serves or calls operations reads this table: the HTTP routes, the inference
protocol's models, the OpenAPI document and the client's methods. Adding an operation is one
entry here plus its engine functions.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass
from types import MappingProxyType
from typing import Any

import numpy as np

from ._functional import backward, forward
from ._geometry import ConvGeometry

__all__ = ["OPERATIONS", "ArrayDoc", "Cost", "Operation"]

Shapes = Mapping[str, tuple[int, ...]]
Arrays = Mapping[str, np.ndarray]


@dataclass(frozen=True)
class ArrayDoc:
    """What an array is, and its axes: ``ArrayDoc("input", "N, C, H, W")``."""

    role: str
    axes: str

    @property
    def ndim(self) -> int:
        return len(self.axes.split(","))

    def __str__(self) -> str:
        return f"{self.role}, ({self.axes}{',' if self.ndim == 1 else ''})"


@dataclass(frozen=True)
class Cost:
    """What one call needs at most: bytes of working memory and floating-point operations."""

    work_bytes: int
    flops: int


@dataclass(frozen=True, eq=False)  # compared and hashed as itself: one record per operation
class Operation:
    """One operation the engine offers.

    ``inputs`` are in the order of the engine function's positional arguments; those in
    ``optional`` may be left out. ``arrays`` describes every input and output for people, by
    its axes; ``example`` is a small call (arrays as nested lists, and hyperparameters).
    ``plan`` checks the inputs' shapes against the hyperparameters and sizes the geometry;
    ``run`` computes on arrays that fit it.
    """

    name: str  # how callers name it: the REST path, the client method
    model: str  # its name as a model of the inference protocol
    summary: str
    inputs: tuple[str, ...]
    optional: frozenset[str]
    outputs: tuple[str, ...]
    arrays: Mapping[str, ArrayDoc]
    plan: Callable[[Shapes, Mapping[str, Any]], ConvGeometry]
    run: Callable[[ConvGeometry, Arrays], dict[str, np.ndarray]]
    passes: int  # GEMM-sized passes over the data, for the arithmetic cost
    example: Mapping[str, Any]

    @property
    def required(self) -> tuple[str, ...]:
        return tuple(name for name in self.inputs if name not in self.optional)

    def cost(self, geometry: ConvGeometry, itemsize: int) -> Cost:
        return Cost(geometry.work_elements() * itemsize, geometry.flops() * self.passes)


def _plan_forward(shapes: Shapes, hyper: Mapping[str, Any]) -> ConvGeometry:
    geometry = ConvGeometry.build(shapes["x"], shapes["w"], **hyper)
    if "b" in shapes:
        geometry.check_bias(shapes["b"])
    return geometry


def _run_forward(geometry: ConvGeometry, arrays: Arrays) -> dict[str, np.ndarray]:
    return {"out": forward(arrays["x"], arrays["w"], arrays.get("b"), geometry)}


def _plan_backward(shapes: Shapes, hyper: Mapping[str, Any]) -> ConvGeometry:
    geometry = ConvGeometry.build(shapes["x"], shapes["w"], **hyper)
    geometry.check_dout(shapes["dout"])
    return geometry


def _run_backward(geometry: ConvGeometry, arrays: Arrays) -> dict[str, np.ndarray]:
    dx, dw, db = backward(arrays["dout"], arrays["x"], arrays["w"], geometry)
    return {"dx": dx, "dw": dw, "db": db}


_ARRAYS = {
    "x": ArrayDoc("input", "N, C, H, W"),
    "w": ArrayDoc("filters", "F, C/groups, KH, KW"),
    "b": ArrayDoc("bias", "F"),
    "out": ArrayDoc("output", "N, F, H_out, W_out"),
    "dout": ArrayDoc("gradient of the loss w.r.t. out", "N, F, H_out, W_out"),
    "dx": ArrayDoc("gradient of the loss w.r.t. x", "N, C, H, W"),
    "dw": ArrayDoc("gradient of the loss w.r.t. w", "F, C/groups, KH, KW"),
    "db": ArrayDoc("gradient of the loss w.r.t. b", "F"),
}


def _described(*names: str) -> Mapping[str, ArrayDoc]:
    return MappingProxyType({name: _ARRAYS[name] for name in names})


OPERATIONS: Mapping[str, Operation] = MappingProxyType(
    {
        op.name: op
        for op in (
            Operation(
                name="forward",
                model="conv2d",
                summary="Convolve x with w and add b: answers out, in the dtype of x.",
                inputs=("x", "w", "b"),
                optional=frozenset({"b"}),
                outputs=("out",),
                arrays=_described("x", "w", "b", "out"),
                plan=_plan_forward,
                run=_run_forward,
                passes=1,
                example={
                    "x": [[[[1, 2, 3], [4, 5, 6], [7, 8, 9]]]],
                    "w": [[[[0, 1], [1, 0]]]],
                    "b": [0.5],
                    "stride": 1,
                    "padding": 0,
                },
            ),
            Operation(
                name="backward",
                model="conv2d_backward",
                summary="Gradients of a loss w.r.t. x, w and b from dout, "
                "its gradient w.r.t. the output.",
                inputs=("dout", "x", "w"),
                optional=frozenset(),
                outputs=("dx", "dw", "db"),
                arrays=_described("dout", "x", "w", "dx", "dw", "db"),
                plan=_plan_backward,
                run=_run_backward,
                passes=2,
                example={
                    "dout": [[[[1, 0], [0, 1]]]],
                    "x": [[[[1, 2], [3, 4]]]],
                    "w": [[[[2]]]],
                },
            ),
        )
    }
)
