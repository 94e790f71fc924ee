"""Every tensor PyTorch's convolutions take, on kernels that take batched real float32/float64.

One layer above the kernels, which stay strict: it plans and runs a call on

- **one sample without its batch axis**: x ``(C, *spatial)``, as PyTorch's modules take it.
  The rank comes from w (``spatial + 2`` axes), so x of ``spatial + 1`` axes is one sample:
  planned and computed as N=1, and every batched array (x, out, dout, dx) answered without
  the batch axis;
- **an empty batch** (N=0): planned and checked as N=1, its shapes with N=0, its work and
  flops 0; it answers empty outputs and zero dw, db without computing anything. Empty channel
  and spatial axes are refused, naming the axis;
- **float16 and bfloat16**: computed in float32 (each array first rounded to x's type, as it
  would be stored), answered in x's dtype, rounded to nearest even;
- **complex64 and complex128**: four real products of the real and imaginary parts, in
  float32 or float64. The forward pass is the complex convolution ``out = x ⋆ w + b``. The
  backward pass follows PyTorch: ``out.backward(dout)`` for complex tensors gives, for the
  real loss ``L = Re Σ conj(dout)·out``, the gradients ``dz = ∂L/∂Re z + i ∂L/∂Im z`` (the
  conjugate Wirtinger derivative, times two), which for a layer linear in each input are
  ``dx = Bᵀ(dout, conj w)``, ``dw = Gᵀ(dout, conj x)`` and ``db = Σ dout``: the real
  backward pass applied to the conjugated partner. The tests check both PyTorch's answers
  and central differences of that real loss (tests/engine/test_tensors.py). Three products
  (Gauss's trick, ``(xr + xi) ⋆ (wr + wi)`` for the imaginary part) were measured on an
  8x32x32x32 layer with 3x3 kernels: a quarter faster, but 1.7 times the error in complex64
  (8.6e-7 against 5.1e-7 of the largest value), its imaginary part a difference of larger
  sums; four are kept, and the cost counts four.

:class:`TensorGeometry` wraps the kernels' geometry and implements the table's ``Geometry``;
:func:`plan` and :func:`run` are what the table's operations plan and run with.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any, Literal

import numpy as np

from ._dtypes import TensorType, answer_type
from ._errors import ShapeError
from ._geometry import ConvGeometry, TransposedGeometry
from ._kernels import work_elements

__all__ = ["BATCHED", "TensorGeometry", "adaptation_bytes", "plan", "run", "typed"]

Shapes = Mapping[str, tuple[int, ...]]
Arrays = Mapping[str, np.ndarray]
Core = ConvGeometry | TransposedGeometry
Kernel = Callable[[Any, Arrays], dict[str, np.ndarray]]
Layer = Literal["conv", "transposed"]

# The arrays whose first axis is the batch, in every operation (each Operation.batched is
# a part of it): one sample's have no batch axis, an empty batch's have N=0.
BATCHED = frozenset({"x", "out", "dout", "dx"})
_SPATIAL = {1: "L", 2: "H, W", 3: "D, H, W"}
_KERNEL = {1: "K", 2: "KH, KW", 3: "KD, KH, KW"}
_OUTPUT = {1: "L_out", 2: "H_out, W_out", 3: "D_out, H_out, W_out"}
# Per kind of layer: w's leading axes, and the input's and output's channels.
_AXES = {"conv": ("F, C/groups", "C", "F"), "transposed": ("C_in, C_out/groups", "C_in", "C_out")}


@dataclass(frozen=True)
class TensorGeometry:
    """A layer as sent: the kernels' geometry ``core`` (batched, N at least 1), the batch as
    sent, ``batch`` (None for one sample without the batch axis; 0 for an empty batch), and
    the kind of ``layer``."""

    core: Core
    batch: int | None
    layer: Layer = "conv"

    @property
    def rank(self) -> int:
        return self.core.rank

    @property
    def out_shape(self) -> tuple[int, ...]:
        """The output as answered: (N, channels, *out), or (channels, *out) for one sample."""
        return self._as_sent(self.core.out_shape)

    def shapes(self) -> dict[str, tuple[int, ...]]:
        """Every array of the layer by name, as sent and answered."""
        every = self.core.shapes()
        return {
            name: self._as_sent(shape) if name in BATCHED else shape
            for name, shape in every.items()
        }

    def work_elements(self) -> int:
        return 0 if self.batch == 0 else work_elements(self.core)

    def flops(self) -> int:
        return 0 if self.batch == 0 else self.core.flops()

    def check_dout(self, shape: tuple[int, ...]) -> None:
        expected = self.shapes()["dout"]
        if tuple(shape) != expected:
            axes = f"{_AXES[self.layer][2]}, {_OUTPUT[self.rank]}"
            axes = axes if self.batch is None else f"N, {axes}"
            raise ShapeError(
                f"dout must have the forward output's shape ({axes}) = {expected}, "
                f"got {tuple(shape)}",
                field="dout",
            )

    def _as_sent(self, shape: tuple[int, ...]) -> tuple[int, ...]:
        return shape[1:] if self.batch is None else (self.batch, *shape[1:])


def plan(layer: Layer, shapes: Shapes, hyper: Mapping[str, Any]) -> TensorGeometry:
    """The geometry of a ``layer`` ("conv" or "transposed") with inputs of these shapes,
    checked by the kernels' geometry as a batch of at least one; b and dout checked if sent.
    """
    x, w = tuple(shapes["x"]), tuple(shapes["w"])
    lead, channels, _ = _AXES[layer]
    batch = _batch(x, w, lead, channels)
    _check_axes(x, batch, channels)
    lifted = (1, *x) if batch is None else (max(batch, 1), *x[1:])
    build = ConvGeometry.transposed if layer == "transposed" else ConvGeometry.build
    try:
        core: Core = build(lifted, w, **hyper)
    except ShapeError as exc:
        if batch is not None:
            raise
        # Say how x was read: a batch one axis short of w's rank reads as one sample.
        note = (
            f" (x of shape {x} is read as one sample, without the batch axis: w has {len(w)} axes)"
        )
        raise ShapeError(exc.message + note, field=exc.field) from exc
    if "b" in shapes:
        core.check_bias(shapes["b"])
    geometry = TensorGeometry(core, batch, layer)
    if "dout" in shapes:
        geometry.check_dout(shapes["dout"])
    return geometry


def _batch(x: tuple[int, ...], w: tuple[int, ...], lead: str, channels: str) -> int | None:
    """N, or None for one sample: the rank is w's, x has one more axis or none more."""
    if not 3 <= len(w) <= 5:
        wanted = " or ".join(f"{r + 2}-D ({lead}, {_KERNEL[r]})" for r in (1, 2, 3))
        raise ShapeError(f"w must be {wanted}, got {len(w)}-D shape {w}", field="w")
    rank = len(w) - 2
    if len(x) == rank + 2:
        return x[0]
    if len(x) == rank + 1:
        return None
    raise ShapeError(
        f"x must be {rank + 2}-D (N, {channels}, {_SPATIAL[rank]}) or {rank + 1}-D "
        f"({channels}, {_SPATIAL[rank]}) for one sample, as w of {len(w)} axes "
        f"({lead}, {_KERNEL[rank]}) makes a {rank}-D layer; got {len(x)}-D shape {x}",
        field="x",
    )


def _check_axes(x: tuple[int, ...], batch: int | None, channels: str) -> None:
    """Only the batch may be empty: an empty channel or spatial axis is refused by name."""
    rank = len(x) - (1 if batch is None else 2)
    names = [channels, *_SPATIAL[rank].split(", ")]
    sample = x if batch is None else x[1:]
    for name, size in zip(names, sample, strict=True):
        if size == 0:
            axes = ", ".join(names if batch is None else ["N", *names])
            raise ShapeError(
                f"x has an empty axis {name}: shape {x} ({axes}); only the batch axis N may "
                f"be empty",
                field="x",
            )


def run(
    kernel: Kernel, outputs: tuple[str, ...], geometry: TensorGeometry, arrays: Arrays
) -> dict[str, np.ndarray]:
    """``kernel(core, arrays)``'s outputs for arrays as sent (checked against ``geometry``):
    one sample lifted to a batch of one, an empty batch answered without computing, every
    dtype adapted (:func:`typed`)."""
    kind = answer_type({name: array.dtype for name, array in arrays.items()})
    expected = geometry.shapes()
    for name, array in arrays.items():
        if array.shape != expected[name]:
            raise ShapeError(
                f"{name} has shape {array.shape} but this geometry was built for {expected[name]}",
                field=name,
            )
    answer = arrays["x"].dtype.newbyteorder("=")
    if geometry.batch == 0:  # nothing to compute: empty outputs, zero dw and db
        return {name: np.zeros(expected[name], dtype=answer) for name in outputs}
    if geometry.batch is not None:
        return typed(kernel, geometry.core, arrays, kind)
    lifted = {name: a[None] if name in BATCHED else a for name, a in arrays.items()}
    results = typed(kernel, geometry.core, lifted, kind)
    return {name: r[0] if name in BATCHED else r for name, r in results.items()}


def typed(kernel: Kernel, core: Core, arrays: Arrays, kind: TensorType) -> dict[str, np.ndarray]:
    """``kernel(core, arrays)`` for arrays of x's type ``kind``, on real arrays of its
    computing dtype, answered in x's dtype."""
    dtype = arrays["x"].dtype.newbyteorder("=")
    if kind.complex:
        return _complex(kernel, core, {n: a.astype(dtype, copy=False) for n, a in arrays.items()})
    if not kind.half:
        return kernel(core, arrays)
    computed = {name: _rounded(a, dtype).astype(np.float32) for name, a in arrays.items()}
    return {name: result.astype(dtype) for name, result in kernel(core, computed).items()}


def _rounded(array: np.ndarray, dtype: np.dtype) -> np.ndarray:
    # w, b or dout of another float dtype are rounded to x's half type, as stored in it.
    return array.astype(dtype, copy=False)


def _complex(kernel: Kernel, core: Core, arrays: Arrays) -> dict[str, np.ndarray]:
    """The complex layer from four real passes on the real and imaginary parts."""
    real = {name: np.ascontiguousarray(a.real) for name, a in arrays.items()}
    imag = {name: np.ascontiguousarray(a.imag) for name, a in arrays.items()}
    if "dout" in arrays:
        return _complex_backward(kernel, core, real, imag)
    return _complex_forward(kernel, core, real, imag)


def _complex_forward(
    kernel: Kernel, core: Core, real: Arrays, imag: Arrays
) -> dict[str, np.ndarray]:
    """out = (xr ⋆ wr + br - xi ⋆ wi) + i (xr ⋆ wi + bi + xi ⋆ wr)."""

    def product(x: np.ndarray, w: np.ndarray, b: np.ndarray | None) -> np.ndarray:
        return kernel(core, {"x": x, "w": w} if b is None else {"x": x, "w": w, "b": b})["out"]

    out_real = product(real["x"], real["w"], real.get("b"))
    out_real -= product(imag["x"], imag["w"], None)
    out_imag = product(real["x"], imag["w"], imag.get("b"))
    out_imag += product(imag["x"], real["w"], None)
    return {"out": _joined(out_real, out_imag)}


def _complex_backward(
    kernel: Kernel, core: Core, real: Arrays, imag: Arrays
) -> dict[str, np.ndarray]:
    """PyTorch's complex gradients: dx = Bᵀ(dout, conj w), dw = Gᵀ(dout, conj x), db = Σ dout.

    With dout = dr + i di: the real parts are pass(dr, xr, wr) + pass(di, xi, wi) and the
    imaginary parts pass(di, xr, wr) - pass(dr, xi, wi), for dx and dw; db is Σdr + i Σdi.
    """

    def gradients(dout: np.ndarray, x: np.ndarray, w: np.ndarray) -> dict[str, np.ndarray]:
        return kernel(core, {"dout": dout, "x": x, "w": w})

    first = gradients(real["dout"], real["x"], real["w"])
    second = gradients(imag["dout"], imag["x"], imag["w"])
    for name in ("dx", "dw"):
        first[name] += second[name]
    del second
    third = gradients(imag["dout"], real["x"], real["w"])
    fourth = gradients(real["dout"], imag["x"], imag["w"])
    for name in ("dx", "dw"):
        third[name] -= fourth[name]
    return {name: _joined(first[name], third[name]) for name in ("dx", "dw", "db")}


def _joined(real: np.ndarray, imag: np.ndarray) -> np.ndarray:
    complex_type = np.result_type(real.dtype, np.complex64)
    out = np.empty(real.shape, dtype=complex_type)
    out.real, out.imag = real, imag
    return out


def adaptation_bytes(kind: TensorType, inputs: int, outputs: int) -> int:
    """Memory the adaptation to ``kind`` holds besides the kernels' work, at most, for
    ``inputs`` and ``outputs`` elements: half-precision arrays rounded to x's type and
    widened to float32, and the float32 results; complex numbers' parts and the real passes'
    results (three sets at once, counted as four)."""
    real = kind.compute.itemsize
    if kind.complex:
        return 2 * inputs * real + 4 * outputs * real
    if kind.half:
        return inputs * (kind.itemsize + real) + outputs * real
    return 0
