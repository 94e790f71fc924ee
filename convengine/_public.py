"""The library's convolution functions on every tensor the engine takes (see ``_tensors``).

Each wraps its strict namesake of ``_functional`` (batched float32/float64 arrays) with the
tensor layer: one sample without its batch axis, an empty batch, float16, bfloat16,
complex64 and complex128. Their signatures are the strict functions'.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any, Unpack

import numpy as np
from numpy.typing import ArrayLike

from . import _functional as strict
from . import _tensors
from ._dtypes import answer_type
from ._errors import ShapeError
from ._geometry import ConvGeometry, TransposedGeometry
from ._hyperparameters import ConvOptions, TransposedOptions

__all__ = [
    "backward",
    "backward_kernel",
    "conv",
    "conv_backward",
    "conv_transpose",
    "conv_transpose_backward",
    "forward",
    "forward_kernel",
    "transposed_backward",
    "transposed_backward_kernel",
    "transposed_forward",
    "transposed_kernel",
]

_GRADIENTS = ("dx", "dw", "db")


def _arrays(**given: ArrayLike | None) -> dict[str, np.ndarray]:
    arrays = {}
    for name, value in given.items():
        if value is None:
            continue
        try:
            arrays[name] = np.asarray(value)
        except (TypeError, ValueError) as exc:
            raise ShapeError(
                f"{name} is not a rectangular array of numbers: {exc}", field=name
            ) from exc
    return arrays


def _layer(
    layer: _tensors.Layer,
    kernel: _tensors.Kernel,
    outputs: tuple[str, ...],
    arrays: dict[str, np.ndarray],
    options: Mapping[str, Any],
) -> dict[str, np.ndarray]:
    answer_type({name: array.dtype for name, array in arrays.items()})  # before any shape
    shapes = {name: array.shape for name, array in arrays.items()}
    geometry = _tensors.plan(layer, shapes, options)
    return _tensors.run(kernel, outputs, geometry, arrays)


# The kernels of each operation: its strict function on checked, batched, real arrays.


def forward_kernel(geometry: ConvGeometry, arrays: Mapping[str, np.ndarray]) -> dict[str, Any]:
    return {"out": strict.forward(arrays["x"], arrays["w"], arrays.get("b"), geometry)}


def backward_kernel(geometry: ConvGeometry, arrays: Mapping[str, np.ndarray]) -> dict[str, Any]:
    grads = strict.backward(arrays["dout"], arrays["x"], arrays["w"], geometry)
    return dict(zip(_GRADIENTS, grads, strict=True))


def transposed_kernel(
    geometry: TransposedGeometry, arrays: Mapping[str, np.ndarray]
) -> dict[str, Any]:
    return {"out": strict.transposed_forward(arrays["x"], arrays["w"], arrays.get("b"), geometry)}


def transposed_backward_kernel(
    geometry: TransposedGeometry, arrays: Mapping[str, np.ndarray]
) -> dict[str, Any]:
    grads = strict.transposed_backward(arrays["dout"], arrays["x"], arrays["w"], geometry)
    return dict(zip(_GRADIENTS, grads, strict=True))


def _gradients(result: dict[str, np.ndarray]) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    return result["dx"], result["dw"], result["db"]


def conv(
    x: ArrayLike,
    w: ArrayLike,
    b: ArrayLike | None = None,
    **options: Unpack[ConvOptions],
) -> np.ndarray:
    """The convolution (cross-correlation, as in deep-learning frameworks) of x with w.

    x (N, C, *spatial), w (F, C/groups, *kernel), b (F,) or None -> out (N, F, *out), with
    1, 2 or 3 spatial axes, the rank taken from w: x (N, C, L), (N, C, H, W) or
    (N, C, D, H, W), or one sample (C, *spatial) answered as (F, *out); N may be 0.

    dtypes: float16, bfloat16 (computed in float32), float32, float64, complex64, complex128;
    every array takes x's, and so does the answer.

    stride, dilation: an int or one per axis. padding: an int, one per axis, one (begin,
    end) pair per axis, "valid", "same" (output ceil(size/stride), the odd pixel at the end)
    or "same_lower". padding_mode: "zeros", "reflect", "replicate" or "circular" (PyTorch's).
    rounding: "exact" refuses an output size that is not whole, "floor" drops the last
    partial window.
    """
    arrays = _arrays(x=x, w=w, b=b)
    return _layer("conv", forward_kernel, ("out",), arrays, options)["out"]


def conv_backward(
    dout: ArrayLike,
    x: ArrayLike,
    w: ArrayLike,
    **options: Unpack[ConvOptions],
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Gradients of a loss with respect to x, w and b, given its gradient dout w.r.t. the output.

    dout (N, F, *out), x (N, C, *spatial), w (F, C/groups, *kernel)
    -> dx (N, C, *spatial), dw (F, C/groups, *kernel), db (F,); one sample without the
    batch axis, and N=0 (dw and db zero), as in :func:`conv`.

    Hyperparameters and dtypes as in :func:`conv`; complex gradients follow PyTorch's
    ``out.backward(dout)`` (see ``convengine._tensors``). Input pixels no window reads get a
    zero gradient; gradients that fall on padding fold back onto the pixels it was copied from.
    """
    arrays = _arrays(dout=dout, x=x, w=w)
    return _gradients(_layer("conv", backward_kernel, _GRADIENTS, arrays, options))


def conv_transpose(
    x: ArrayLike,
    w: ArrayLike,
    b: ArrayLike | None = None,
    **options: Unpack[TransposedOptions],
) -> np.ndarray:
    """The transposed convolution of x with w, as PyTorch's ``conv_transpose{1,2,3}d``.

    x (N, C_in, *spatial), w (C_in, C_out/groups, *kernel), b (C_out,) or None
    -> out (N, C_out, *out), out per axis ``(size - 1)*stride - pad_begin - pad_end +
    dilation*(K-1) + output_padding + 1``; one sample (C_in, *spatial) and N=0 as in
    :func:`conv`, and its dtypes. padding: an int, one per axis, or one (begin, end) pair per
    axis (ONNX's ConvTranspose pads).
    """
    arrays = _arrays(x=x, w=w, b=b)
    return _layer("transposed", transposed_kernel, ("out",), arrays, options)["out"]


def conv_transpose_backward(
    dout: ArrayLike,
    x: ArrayLike,
    w: ArrayLike,
    **options: Unpack[TransposedOptions],
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Gradients of a loss w.r.t. x, w and b of :func:`conv_transpose`, given dout w.r.t. out.

    dout (N, C_out, *out), x (N, C_in, *spatial), w (C_in, C_out/groups, *kernel)
    -> dx (N, C_in, *spatial), dw (C_in, C_out/groups, *kernel), db (C_out,)
    """
    arrays = _arrays(dout=dout, x=x, w=w)
    kernel = transposed_backward_kernel
    return _gradients(_layer("transposed", kernel, _GRADIENTS, arrays, options))


def _on_geometry(
    kernel: _tensors.Kernel,
    outputs: tuple[str, ...],
    geometry: ConvGeometry | TransposedGeometry | _tensors.TensorGeometry,
    arrays: dict[str, np.ndarray],
) -> dict[str, np.ndarray]:
    """``kernel`` on arrays of any dtype the engine takes, for a geometry already built: the
    kernels' own (batched), or the table's (:class:`~convengine._tensors.TensorGeometry`,
    which plans one sample and empty batches too)."""
    if isinstance(geometry, _tensors.TensorGeometry):
        return _tensors.run(kernel, outputs, geometry, arrays)
    kind = answer_type({name: array.dtype for name, array in arrays.items()})
    return _tensors.typed(kernel, geometry, arrays, kind)


def forward(x: ArrayLike, w: ArrayLike, b: ArrayLike | None, geometry: ConvGeometry) -> np.ndarray:
    """:func:`conv` for a geometry already built: the arrays are checked against it.

    For callers that validate a request once and must not size it twice (a geometry of the
    table's plans takes one sample and empty batches too); every dtype of :func:`conv`.
    x (N, C, *spatial), w (F, C/groups, *kernel), b (F,) or None -> out (N, F, *out)
    """
    return _on_geometry(forward_kernel, ("out",), geometry, _arrays(x=x, w=w, b=b))["out"]


def backward(
    dout: ArrayLike, x: ArrayLike, w: ArrayLike, geometry: ConvGeometry
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """:func:`conv_backward` for a geometry already built; the arrays are checked against it.

    dout (N, F, *out), x (N, C, *spatial), w (F, C/groups, *kernel) -> dx, dw, db
    """
    arrays = _arrays(dout=dout, x=x, w=w)
    return _gradients(_on_geometry(backward_kernel, _GRADIENTS, geometry, arrays))


def transposed_forward(
    x: ArrayLike, w: ArrayLike, b: ArrayLike | None, geometry: TransposedGeometry
) -> np.ndarray:
    """:func:`conv_transpose` for a geometry already built; the arrays are checked against it."""
    return _on_geometry(transposed_kernel, ("out",), geometry, _arrays(x=x, w=w, b=b))["out"]


def transposed_backward(
    dout: ArrayLike, x: ArrayLike, w: ArrayLike, geometry: TransposedGeometry
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """:func:`conv_transpose_backward` for a geometry already built."""
    arrays = _arrays(dout=dout, x=x, w=w)
    return _gradients(_on_geometry(transposed_backward_kernel, _GRADIENTS, geometry, arrays))
