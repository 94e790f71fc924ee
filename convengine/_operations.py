"""The table of operations: what each one takes, gives, costs, and which engine function runs it.

Everything that serves or calls operations reads this table: the HTTP routes, the inference
protocol's models, the OpenAPI document and the client's methods. Adding an operation is one
entry here plus its engine functions.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass
from functools import partial
from math import prod
from types import MappingProxyType
from typing import Any, Protocol

import numpy as np
from numpy.typing import DTypeLike

from . import _tensors
from ._dtypes import TensorType, answer_type, tensor_type
from ._geometry import ConvGeometry, TransposedGeometry
from ._hyperparameters import CONV_HYPERPARAMETERS, TRANSPOSED_HYPERPARAMETERS
from ._kernels import Pass, select
from ._public import (
    backward_kernel,
    forward_kernel,
    transposed_backward_kernel,
    transposed_kernel,
)
from ._tensors import TensorGeometry

__all__ = [
    "OPERATIONS",
    "RANKS",
    "ArrayDoc",
    "ArraySpec",
    "Cost",
    "Explanation",
    "Geometry",
    "Operation",
]

Shapes = Mapping[str, tuple[int, ...]]
Arrays = Mapping[str, np.ndarray]
RANKS = (1, 2, 3)
_SPATIAL = ("*spatial", "*kernel", "*out")


class Geometry(Protocol):
    """What the table asks of a layer's geometry: every array's shape, and what it costs."""

    @property
    def rank(self) -> int:
        """Spatial axes: 1, 2 or 3."""

    @property
    def out_shape(self) -> tuple[int, ...]:
        """The layer's output, (N, channels, *out), or (channels, *out) for one sample."""

    def shapes(self) -> dict[str, tuple[int, ...]]:
        """Every array of the layer by name: inputs, outputs and gradients."""

    def work_elements(self) -> int:
        """Array elements one pass allocates at most, besides its inputs and outputs."""

    def flops(self) -> int:
        """Floating-point operations of one GEMM-sized pass."""


@dataclass(frozen=True)
class ArrayDoc:
    """What an array is, and its axes: ``ArrayDoc("input", "N, C, *spatial")``.

    ``*spatial``, ``*kernel`` and ``*out`` stand for one axis per spatial dimension.
    """

    role: str
    axes: str

    def ndim(self, rank: int) -> int:
        parts = [part.strip() for part in self.axes.split(",")]
        return sum(rank if part in _SPATIAL else 1 for part in parts)

    def __str__(self) -> str:
        single = "," not in self.axes and self.axes not in _SPATIAL
        return f"{self.role}, ({self.axes}{',' if single else ''})"


@dataclass(frozen=True)
class Cost:
    """What one call holds and computes: its input arrays, its working memory at most and its
    output arrays, in bytes; the output arrays' elements; floating-point operations; the
    real numbers the outputs are written as in text (two per complex element)."""

    input_bytes: int
    work_bytes: int
    output_bytes: int
    output_elements: int
    flops: int
    output_numbers: int = 0

    @property
    def memory_bytes(self) -> int:
        """Everything the call holds at once, at most: inputs, working memory and outputs."""
        return self.input_bytes + self.work_bytes + self.output_bytes


@dataclass(frozen=True)
class ArraySpec:
    """An array's shape and dtype, without its numbers."""

    shape: tuple[int, ...]
    dtype: str


@dataclass(frozen=True)
class Explanation:
    """What one call answers and costs.

    ``outputs``: each output array's shape and dtype, by name; ``flops``: floating-point
    operations; ``memory_bytes``: what the call holds at most (its inputs, working memory and
    outputs); ``path``: the kernel the engine's selector would run (``convengine._kernels``),
    for finite data on this machine (a large batch is split in halves only where there are
    two cores).
    """

    operation: str
    outputs: Mapping[str, ArraySpec]
    flops: int
    memory_bytes: int
    path: str

    def to_dict(self) -> dict[str, Any]:
        """As JSON would carry it: shapes as lists."""
        return {
            "operation": self.operation,
            "outputs": {
                name: {"shape": list(spec.shape), "dtype": spec.dtype}
                for name, spec in self.outputs.items()
            },
            "flops": self.flops,
            "memory_bytes": self.memory_bytes,
            "path": self.path,
        }


@dataclass(frozen=True, eq=False)  # compared and hashed as itself: one record per operation
class Operation:
    """One operation the engine offers.

    ``inputs`` are in the order of the engine function's positional arguments; those in
    ``optional`` may be left out. ``hyperparameters`` are the keyword arguments it takes.
    ``arrays`` describes every input and output for people, by its axes; ``example`` is a
    small call (arrays as nested lists, and hyperparameters). ``plan`` checks the inputs'
    shapes against the hyperparameters and sizes the geometry, which gives every array's
    shape (:meth:`shapes`) and the cost (:meth:`cost`); ``run`` computes on arrays that fit
    it. ``model`` names it in the inference protocol, one model per rank.
    ``batched`` names the inputs and outputs whose first axis is the batch (one slice per
    sample; one sample may come without it, see ``_tensors``) and ``summed`` the outputs
    that are sums over the batch: a call split along the batch concatenates the one and adds
    up the other.
    """

    name: str  # the client's method
    path: str  # the REST route
    model: str  # with {rank}: "conv{rank}d"
    summary: str
    inputs: tuple[str, ...]
    optional: frozenset[str]
    outputs: tuple[str, ...]
    batched: frozenset[str]
    summed: frozenset[str]
    hyperparameters: frozenset[str]
    arrays: Mapping[str, ArrayDoc]
    plan: Callable[[Shapes, Mapping[str, Any]], Geometry]
    run: Callable[[Any, Arrays], dict[str, np.ndarray]]
    kernel: Callable[[Any, np.dtype], str]  # the path(s) the engine's selector would run
    passes: int  # GEMM-sized passes over the data, for the arithmetic cost
    example: Mapping[str, Any]

    @property
    def required(self) -> tuple[str, ...]:
        return tuple(name for name in self.inputs if name not in self.optional)

    def model_name(self, rank: int) -> str:
        return self.model.format(rank=rank)

    def shapes(self, geometry: Geometry) -> dict[str, tuple[int, ...]]:
        """The shape of each of this operation's inputs and outputs, by name."""
        every = geometry.shapes()
        return {name: every[name] for name in (*self.inputs, *self.outputs)}

    def cost(self, geometry: Geometry, dtype: DTypeLike | str) -> Cost:
        """What a call on arrays of ``dtype`` (x's: every array takes it; a name such as
        "bfloat16" will do) holds and computes.

        The optional inputs are counted as sent. Half-precision arrays are computed in
        float32, complex ones as four real products of their parts (see ``_tensors``):
        the work counts the kernels' in their computing dtype and the adaptation's."""
        kind = tensor_type(dtype, "x")
        shapes = self.shapes(geometry)
        inputs = sum(prod(shapes[name]) for name in self.inputs)
        outputs = sum(prod(shapes[name]) for name in self.outputs)
        kernels = geometry.work_elements() * kind.compute.itemsize
        adapting = _tensors.adaptation_bytes(kind, inputs, outputs) if kernels else 0
        return Cost(
            input_bytes=inputs * kind.itemsize,
            work_bytes=kernels + adapting,
            output_bytes=outputs * kind.itemsize,
            output_elements=outputs,
            flops=geometry.flops() * self.passes * kind.products,
            output_numbers=outputs * (2 if kind.complex else 1),
        )

    def answer_type(self, dtypes: Mapping[str, DTypeLike | str]) -> TensorType:
        """The dtype of the answer to inputs of these dtypes (by name): x's, which every
        array takes; DTypeError for a dtype the engine does not take, or a complex array
        beside a real x."""
        return answer_type(dtypes)

    def ndims(self, name: str, rank: int) -> tuple[int, ...]:
        """The numbers of axes array ``name`` may have in a layer of ``rank`` spatial axes:
        one fewer too for a batched array (one sample, without its batch axis)."""
        ndim = self.arrays[name].ndim(rank)
        return (ndim, ndim - 1) if name in _tensors.BATCHED else (ndim,)

    def explain(self, geometry: Geometry, dtype: DTypeLike | str) -> Explanation:
        """What a call on a planned geometry, with arrays of ``dtype``, answers and costs."""
        kind = tensor_type(dtype, "x")
        shapes = self.shapes(geometry)
        cost = self.cost(geometry, kind.name)
        return Explanation(
            operation=self.name,
            outputs={output: ArraySpec(shapes[output], kind.name) for output in self.outputs},
            flops=cost.flops,
            memory_bytes=cost.memory_bytes,
            # An empty batch runs no kernel; others run in their computing dtype.
            path=self.kernel(geometry, kind.compute) if cost.flops else "empty",
        )


def _convolution(geometry: TensorGeometry) -> ConvGeometry:
    """The kernels' convolution of a layer: its own, or a transposed layer's, whose input
    gradient the transposed layer is."""
    core = geometry.core
    return core.conv if isinstance(core, TransposedGeometry) else core


def _kernel_forward(geometry: TensorGeometry, dtype: np.dtype) -> str:
    return select(_convolution(geometry), Pass.FORWARD, dtype).name


def _kernel_backward(geometry: TensorGeometry, dtype: np.dtype) -> str:
    return select(_convolution(geometry), Pass.BACKWARD, dtype).name


def _kernel_transposed(geometry: TensorGeometry, dtype: np.dtype) -> str:
    return select(_convolution(geometry), Pass.INPUT_GRADIENT, dtype).name


def _kernel_transposed_backward(geometry: TensorGeometry, dtype: np.dtype) -> str:
    # dx is that convolution's forward pass, dw its weight gradient (roles exchanged).
    conv = _convolution(geometry)
    dx = select(conv, Pass.FORWARD, dtype).name
    dw = select(conv, Pass.WEIGHT_GRADIENT, dtype).name
    return f"dx: {dx}, dw: {dw}"


# Planned and run by the tensor layer (``_tensors``): one sample or an empty batch, and every
# dtype, on the strict kernels, which take batched float32/float64 arrays only.
_plan_conv = partial(_tensors.plan, "conv")
_plan_transposed = partial(_tensors.plan, "transposed")
_run_forward = partial(_tensors.run, forward_kernel, ("out",))
_run_backward = partial(_tensors.run, backward_kernel, ("dx", "dw", "db"))
_run_transposed = partial(_tensors.run, transposed_kernel, ("out",))
_run_transposed_backward = partial(_tensors.run, transposed_backward_kernel, ("dx", "dw", "db"))


_CONV = {
    "x": ArrayDoc("input", "N, C, *spatial"),
    "w": ArrayDoc("filters", "F, C/groups, *kernel"),
    "b": ArrayDoc("bias", "F"),
    "out": ArrayDoc("output", "N, F, *out"),
    "dout": ArrayDoc("gradient of the loss w.r.t. out", "N, F, *out"),
    "dx": ArrayDoc("gradient of the loss w.r.t. x", "N, C, *spatial"),
    "dw": ArrayDoc("gradient of the loss w.r.t. w", "F, C/groups, *kernel"),
    "db": ArrayDoc("gradient of the loss w.r.t. b", "F"),
}
_TRANSPOSED = {
    "x": ArrayDoc("input", "N, C_in, *spatial"),
    "w": ArrayDoc("filters", "C_in, C_out/groups, *kernel"),
    "b": ArrayDoc("bias", "C_out"),
    "out": ArrayDoc("output", "N, C_out, *out"),
    "dout": ArrayDoc("gradient of the loss w.r.t. out", "N, C_out, *out"),
    "dx": ArrayDoc("gradient of the loss w.r.t. x", "N, C_in, *spatial"),
    "dw": ArrayDoc("gradient of the loss w.r.t. w", "C_in, C_out/groups, *kernel"),
    "db": ArrayDoc("gradient of the loss w.r.t. b", "C_out"),
}


def _described(docs: Mapping[str, ArrayDoc], *names: str) -> Mapping[str, ArrayDoc]:
    return MappingProxyType({name: docs[name] for name in names})


OPERATIONS: Mapping[str, Operation] = MappingProxyType(
    {
        op.name: op
        for op in (
            Operation(
                name="forward",
                path="/forward",
                model="conv{rank}d",
                summary="Convolve x with w and add b: answers out, in the dtype of x. "
                "1, 2 or 3 spatial axes, from the rank of x.",
                inputs=("x", "w", "b"),
                optional=frozenset({"b"}),
                outputs=("out",),
                batched=frozenset({"x", "out"}),
                summed=frozenset(),
                hyperparameters=CONV_HYPERPARAMETERS,
                arrays=_described(_CONV, "x", "w", "b", "out"),
                plan=_plan_conv,
                run=_run_forward,
                kernel=_kernel_forward,
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
                path="/backward",
                model="conv{rank}d_backward",
                summary="Gradients of a loss w.r.t. x, w and b from dout, "
                "its gradient w.r.t. the output.",
                inputs=("dout", "x", "w"),
                optional=frozenset(),
                outputs=("dx", "dw", "db"),
                batched=frozenset({"dout", "x", "dx"}),
                summed=frozenset({"dw", "db"}),
                hyperparameters=CONV_HYPERPARAMETERS,
                arrays=_described(_CONV, "dout", "x", "w", "dx", "dw", "db"),
                plan=_plan_conv,
                run=_run_backward,
                kernel=_kernel_backward,
                passes=2,
                example={
                    "dout": [[[[1, 0], [0, 1]]]],
                    "x": [[[[1, 2], [3, 4]]]],
                    "w": [[[[2]]]],
                },
            ),
            Operation(
                name="conv_transpose",
                path="/conv_transpose/forward",
                model="conv_transpose{rank}d",
                summary="The transposed convolution of x with w, plus b (PyTorch's "
                "conv_transpose): answers out, in the dtype of x.",
                inputs=("x", "w", "b"),
                optional=frozenset({"b"}),
                outputs=("out",),
                batched=frozenset({"x", "out"}),
                summed=frozenset(),
                hyperparameters=TRANSPOSED_HYPERPARAMETERS,
                arrays=_described(_TRANSPOSED, "x", "w", "b", "out"),
                plan=_plan_transposed,
                run=_run_transposed,
                kernel=_kernel_transposed,
                passes=2,  # computed as a convolution's input gradient
                example={
                    "x": [[[[1, 2], [3, 4]]]],
                    "w": [[[[1, 1], [1, 1]]]],
                    "stride": 2,
                },
            ),
            Operation(
                name="conv_transpose_backward",
                path="/conv_transpose/backward",
                model="conv_transpose{rank}d_backward",
                summary="Gradients of a loss w.r.t. x, w and b of a transposed convolution, "
                "from dout, its gradient w.r.t. the output.",
                inputs=("dout", "x", "w"),
                optional=frozenset(),
                outputs=("dx", "dw", "db"),
                batched=frozenset({"dout", "x", "dx"}),
                summed=frozenset({"dw", "db"}),
                hyperparameters=TRANSPOSED_HYPERPARAMETERS,
                arrays=_described(_TRANSPOSED, "dout", "x", "w", "dx", "dw", "db"),
                plan=_plan_transposed,
                run=_run_transposed_backward,
                kernel=_kernel_transposed_backward,
                passes=3,  # a convolution's forward pass, and its backward for dw
                example={
                    "dout": [[[[1, 0, 0, 0], [0, 0, 0, 0], [0, 0, 1, 0], [0, 0, 0, 0]]]],
                    "x": [[[[1, 2], [3, 4]]]],
                    "w": [[[[1, 1], [1, 1]]]],
                    "stride": 2,
                },
            ),
        )
    }
)
