"""The library's functions: convolutions with 1, 2 or 3 spatial axes and transposed
convolutions, forward and backward, and the checked entry points for a geometry built once.

The paths (``_kernels``) compute core geometries: zero padding, every padded pixel read.
Any other padding mode is applied to the input here first, and floor rounding crops what no
window reaches; gradients are folded back and padded out to the input's shape. Which path
computes a pass is the selector's answer (``_kernels.select``), asked here once per call.
"""

from __future__ import annotations

from typing import Unpack

import numpy as np
from numpy.typing import ArrayLike

from ._arrays import as_float_array
from ._errors import ShapeError
from ._geometry import ConvGeometry, TransposedGeometry
from ._hyperparameters import ConvOptions
from ._kernels import Pass, Path, run, select
from ._padding import fold, pad

# Convolutions of batched float32/float64 arrays (the planar conv2d ones public as they are),
# and the checked entry points for a geometry built once, which convengine._public wraps for
# every tensor; transposed convolutions have only their entry points here.
__all__ = ["conv", "conv2d", "conv2d_backward", "conv_backward"]
__all__ += ["backward", "forward", "transposed_backward", "transposed_forward"]


def conv(
    x: ArrayLike,
    w: ArrayLike,
    b: ArrayLike | None = None,
    **options: Unpack[ConvOptions],
) -> np.ndarray:
    """The convolution (cross-correlation, as in deep-learning frameworks) of x with w.

    x (N, C, *spatial), w (F, C/groups, *kernel), b (F,) or None -> out (N, F, *out), with
    1, 2 or 3 spatial axes, the rank taken from x: (N, C, L), (N, C, H, W) or (N, C, D, H, W).

    stride, dilation: an int or one per axis. padding: an int, one per axis, one (begin,
    end) pair per axis, "valid", "same" (output ceil(size/stride), the odd pixel at the end)
    or "same_lower". padding_mode: "zeros", "reflect", "replicate" or "circular" (PyTorch's).
    rounding: "exact" refuses an output size that is not whole, "floor" drops the last
    partial window.
    """
    x = as_float_array(x, "x")
    w = as_float_array(w, "w", x.dtype)
    geometry = ConvGeometry.build(x.shape, w.shape, **options)
    return forward(x, w, b, geometry)


def conv_backward(
    dout: ArrayLike,
    x: ArrayLike,
    w: ArrayLike,
    **options: Unpack[ConvOptions],
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Gradients of a loss with respect to x, w and b, given its gradient dout w.r.t. the output.

    dout (N, F, *out), x (N, C, *spatial), w (F, C/groups, *kernel)
    -> dx (N, C, *spatial), dw (F, C/groups, *kernel), db (F,)

    Hyperparameters as in :func:`conv`. Input pixels no window reads get a zero gradient;
    gradients that fall on padding fold back onto the pixels it was copied from.
    """
    x = as_float_array(x, "x")
    w = as_float_array(w, "w", x.dtype)
    dout = as_float_array(dout, "dout", x.dtype)
    geometry = ConvGeometry.build(x.shape, w.shape, **options)
    return backward(dout, x, w, geometry)


def conv2d(
    x: ArrayLike,
    w: ArrayLike,
    b: ArrayLike | None = None,
    **options: Unpack[ConvOptions],
) -> np.ndarray:
    """:func:`conv` of planes: x (N, C, H, W), w (F, C/groups, KH, KW), b (F,) or None
    -> out (N, F, H_out, W_out). Hyperparameters as in :func:`conv`."""
    x = _planar(x)
    return conv(x, w, b, **options)


def conv2d_backward(
    dout: ArrayLike,
    x: ArrayLike,
    w: ArrayLike,
    **options: Unpack[ConvOptions],
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """:func:`conv_backward` of planes: dout (N, F, H_out, W_out), x (N, C, H, W),
    w (F, C/groups, KH, KW) -> dx (N, C, H, W), dw (F, C/groups, KH, KW), db (F,)."""
    x = _planar(x)
    return conv_backward(dout, x, w, **options)


def _planar(x: ArrayLike) -> np.ndarray:
    array = as_float_array(x, "x")
    if array.ndim != 4:
        raise ShapeError(
            f"x must be 4-D (N, C, H, W), got {array.ndim}-D shape {array.shape}: "
            "conv and conv_backward take 1-D and 3-D layers too",
            field="x",
        )
    return array


def _checked(
    x: ArrayLike, w: ArrayLike, geometry: ConvGeometry | TransposedGeometry
) -> tuple[np.ndarray, np.ndarray]:
    """x and w as float arrays of x's dtype, checked against the shapes ``geometry`` takes."""
    x = as_float_array(x, "x")
    w = as_float_array(w, "w", x.dtype)
    checker = geometry.conv if isinstance(geometry, TransposedGeometry) else geometry
    checker.check_shape("x", x.shape, geometry.x_shape)
    checker.check_shape("w", w.shape, geometry.w_shape)
    return x, w


def forward(x: ArrayLike, w: ArrayLike, b: ArrayLike | None, geometry: ConvGeometry) -> np.ndarray:
    """:func:`conv` for a geometry already built: the arrays are checked against it, cheaply.

    For callers that validate a request once (the service) and must not size it twice.
    x (N, C, *spatial), w (F, C/groups, *kernel), b (F,) or None -> out (N, F, *out)
    """
    x, w = _checked(x, w, geometry)
    if b is not None:
        b = as_float_array(b, "b", x.dtype)
        geometry.check_bias(b.shape)
    selection = select(geometry, Pass.FORWARD, x.dtype)
    if selection.path is Path.EMPTY:  # no window reads an input pixel: the bias alone
        out = np.zeros(geometry.out_shape, dtype=x.dtype)
        return out if b is None else out + b.reshape(-1, *(1,) * geometry.rank)
    core, crop = _core(geometry)
    return run.forward(selection, _core_input(x, geometry, crop), w, b, core)


def backward(
    dout: ArrayLike, x: ArrayLike, w: ArrayLike, geometry: ConvGeometry
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """:func:`conv_backward` for a geometry already built; the arrays are checked against it.

    dout (N, F, *out), x (N, C, *spatial), w (F, C/groups, *kernel) -> dx, dw, db
    """
    x, w = _checked(x, w, geometry)
    dout = as_float_array(dout, "dout", x.dtype)
    geometry.check_dout(dout.shape)
    selection = select(geometry, Pass.BACKWARD, x.dtype)
    if selection.path is Path.EMPTY:  # no window reads an input pixel: nothing flows back
        db = dout.sum(axis=(0, *range(2, dout.ndim)))
        return np.zeros_like(x), np.zeros_like(w), db
    core, crop = _core(geometry)
    dx_core, dw, db = run.backward(selection, dout, _core_input(x, geometry, crop), w, core)
    return _full_dx(dx_core, geometry, crop), dw, db


def _input_gradient(dout: np.ndarray, w: np.ndarray, geometry: ConvGeometry) -> np.ndarray:
    """dx alone of a zero-padded convolution, for arrays checked against its geometry."""
    selection = select(geometry, Pass.INPUT_GRADIENT, dout.dtype)
    if selection.path is Path.EMPTY:
        return np.zeros(geometry.x_shape, dtype=dout.dtype)
    core, crop = _core(geometry)
    return _full_dx(run.input_gradient(selection, dout, w, core), geometry, crop)


def _weight_gradient(
    dout: np.ndarray, x: np.ndarray, w: np.ndarray, geometry: ConvGeometry
) -> np.ndarray:
    """dw alone of a convolution, for arrays checked against its geometry."""
    selection = select(geometry, Pass.WEIGHT_GRADIENT, x.dtype)
    if selection.path is Path.EMPTY:
        return np.zeros_like(w)
    core, crop = _core(geometry)
    return run.weight_gradient(selection, dout, _core_input(x, geometry, crop), w, core)


def _core(geometry: ConvGeometry) -> tuple[ConvGeometry, tuple[int, ...] | None]:
    """The geometry the paths compute, and the trailing input pixels it leaves out (None:
    the layer's own, nothing left out)."""
    return (geometry, None) if geometry.is_core else geometry.core()


def _core_input(x: np.ndarray, geometry: ConvGeometry, crop: tuple[int, ...] | None) -> np.ndarray:
    """What the core geometry convolves: x padded by its mode if not zeros, then cropped."""
    if crop is None:
        return x
    source = x if geometry.padding_mode == "zeros" else pad(x, geometry)
    kept = tuple(slice(0, size - cut) for size, cut in zip(source.shape[2:], crop, strict=True))
    return source[(slice(None), slice(None), *kept)]


def _full_dx(
    dx_core: np.ndarray, geometry: ConvGeometry, crop: tuple[int, ...] | None
) -> np.ndarray:
    """dx of the core input -> dx (N, C, *spatial): cropped pixels zero, padding folded back."""
    if crop is None:
        return dx_core
    g = geometry
    sizes = g.padded if g.padding_mode != "zeros" else g.size
    if any(crop):
        full = np.zeros((g.n, g.c, *sizes), dtype=dx_core.dtype)
        full[
            (slice(None), slice(None), *(slice(0, s - c) for s, c in zip(sizes, crop, strict=True)))
        ] = dx_core
        dx_core = full
    return dx_core if g.padding_mode == "zeros" else fold(dx_core, g)


# --- transposed convolutions -----------------------------------------------------------------


def transposed_forward(
    x: ArrayLike, w: ArrayLike, b: ArrayLike | None, geometry: TransposedGeometry
) -> np.ndarray:
    """:func:`conv_transpose` for a geometry already built; the arrays are checked against it."""
    x, w = _checked(x, w, geometry)
    # The input gradient of the convolution whose output gradient is x.
    out = _input_gradient(x, w, geometry.conv)
    if b is not None:
        b = as_float_array(b, "b", x.dtype)
        geometry.check_bias(b.shape)
        out += b.reshape(-1, *(1,) * geometry.rank)
    return out


def transposed_backward(
    dout: ArrayLike, x: ArrayLike, w: ArrayLike, geometry: TransposedGeometry
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """:func:`conv_transpose_backward` for a geometry already built."""
    x, w = _checked(x, w, geometry)
    dout = as_float_array(dout, "dout", x.dtype)
    conv_geometry = geometry.conv
    geometry.check_dout(dout.shape)
    dx = forward(dout, w, None, conv_geometry)  # the convolution's own forward pass
    dw = _weight_gradient(x, dout, w, conv_geometry)  # its weight gradient, roles exchanged
    return dx, dw, dout.sum(axis=(0, *range(2, dout.ndim)))
