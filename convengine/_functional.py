"""The library's functions: ``conv2d`` and ``conv2d_backward``, and the checked entry points
``forward`` and ``backward`` for a geometry built once.

The im2col passes (``_conv``) compute core geometries only: zero padding, every padded pixel
read. Any other padding mode is applied to the input here first, and floor rounding crops
what no window reaches; the gradient is folded back and padded out to the input's shape.
"""

from __future__ import annotations

import numpy as np
from numpy.typing import ArrayLike

from ._conv import _backward, _forward, as_float_array
from ._geometry import ConvGeometry
from ._padding import fold, pad

__all__ = ["backward", "conv2d", "conv2d_backward", "forward"]


def conv2d(
    x: ArrayLike,
    w: ArrayLike,
    b: ArrayLike | None = None,
    *,
    stride: object = 1,
    padding: object = 0,
    dilation: object = 1,
    groups: object = 1,
    padding_mode: object = "zeros",
    rounding: object = "exact",
) -> np.ndarray:
    """The 2-D convolution (cross-correlation, as in deep-learning frameworks) of x with w.

    x (N, C, H, W), w (F, C/groups, KH, KW), b (F,) or None -> out (N, F, H_out, W_out)

    stride, dilation: an int or (h, w). padding: an int, (h, w), ((top, bottom), (left,
    right)), "valid", "same" (output ceil(H/stride), odd pixel at the end) or "same_lower".
    padding_mode: "zeros", "reflect", "replicate" or "circular" (PyTorch's). rounding: "exact"
    refuses an output size that is not whole, "floor" drops the last partial window.
    """
    x = as_float_array(x, "x")
    w = as_float_array(w, "w", x.dtype)
    geometry = ConvGeometry.build(
        x.shape,
        w.shape,
        stride=stride,
        padding=padding,
        dilation=dilation,
        groups=groups,
        padding_mode=padding_mode,
        rounding=rounding,
    )
    return forward(x, w, b, geometry)


def conv2d_backward(
    dout: ArrayLike,
    x: ArrayLike,
    w: ArrayLike,
    *,
    stride: object = 1,
    padding: object = 0,
    dilation: object = 1,
    groups: object = 1,
    padding_mode: object = "zeros",
    rounding: object = "exact",
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Gradients of a loss with respect to x, w and b, given its gradient dout w.r.t. the output.

    dout (N, F, H_out, W_out), x (N, C, H, W), w (F, C/groups, KH, KW)
    -> dx (N, C, H, W), dw (F, C/groups, KH, KW), db (F,)

    Hyperparameters as in :func:`conv2d`. Input pixels no window reads get a zero gradient;
    gradients that fall on padding fold back onto the pixels it was copied from.
    """
    x = as_float_array(x, "x")
    w = as_float_array(w, "w", x.dtype)
    dout = as_float_array(dout, "dout", x.dtype)
    geometry = ConvGeometry.build(
        x.shape,
        w.shape,
        stride=stride,
        padding=padding,
        dilation=dilation,
        groups=groups,
        padding_mode=padding_mode,
        rounding=rounding,
    )
    return backward(dout, x, w, geometry)


def forward(x: ArrayLike, w: ArrayLike, b: ArrayLike | None, geometry: ConvGeometry) -> np.ndarray:
    """:func:`conv2d` for a geometry already built: the arrays are checked against it, cheaply.

    For callers that validate a request once (the service) and must not size it twice.
    x (N, C, H, W), w (F, C/groups, KH, KW), b (F,) or None -> out (N, F, H_out, W_out)
    """
    x = as_float_array(x, "x")
    w = as_float_array(w, "w", x.dtype)
    geometry.check_shape("x", x.shape, geometry.x_shape)
    geometry.check_shape("w", w.shape, geometry.w_shape)
    if b is not None:
        b = as_float_array(b, "b", x.dtype)
        geometry.check_bias(b.shape)
    if geometry.is_core:
        return _forward(x, w, b, geometry)
    core, crop = geometry.core()
    return _forward(_core_input(x, geometry, crop), w, b, core)


def backward(
    dout: ArrayLike, x: ArrayLike, w: ArrayLike, geometry: ConvGeometry
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """:func:`conv2d_backward` for a geometry already built; the arrays are checked against it.

    dout (N, F, H_out, W_out), x (N, C, H, W), w (F, C/groups, KH, KW) -> dx, dw, db
    """
    x = as_float_array(x, "x")
    w = as_float_array(w, "w", x.dtype)
    dout = as_float_array(dout, "dout", x.dtype)
    geometry.check_shape("x", x.shape, geometry.x_shape)
    geometry.check_shape("w", w.shape, geometry.w_shape)
    geometry.check_dout(dout.shape)
    if geometry.is_core:
        return _backward(dout, x, w, geometry)
    core, crop = geometry.core()
    dx_core, dw, db = _backward(dout, _core_input(x, geometry, crop), w, core)
    return _full_dx(dx_core, geometry, crop), dw, db


def _core_input(x: np.ndarray, geometry: ConvGeometry, crop: tuple[int, int]) -> np.ndarray:
    """What the core geometry convolves: x padded by its mode if not zeros, then cropped."""
    source = x if geometry.padding_mode == "zeros" else pad(x, geometry)
    height, width = source.shape[2:]
    return source[:, :, : height - crop[0], : width - crop[1]]


def _full_dx(dx_core: np.ndarray, geometry: ConvGeometry, crop: tuple[int, int]) -> np.ndarray:
    """dx of the core input -> dx (N, C, H, W): cropped pixels zero, padding folded back."""
    g = geometry
    height, width = g.padded_hw if g.padding_mode != "zeros" else (g.height, g.width)
    if crop != (0, 0):
        full = np.zeros((g.n, g.c, height, width), dtype=dx_core.dtype)
        full[:, :, : height - crop[0], : width - crop[1]] = dx_core
        dx_core = full
    return dx_core if g.padding_mode == "zeros" else fold(dx_core, g)
