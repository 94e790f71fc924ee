"""The convolution's forward and backward passes: im2col, one GEMM per chunk, col2im.

Dtype rule: the computation, the output and every gradient take x's dtype, float32 or
float64; w, b and dout are converted to it (float to float only). Any other dtype is a
DTypeError: the engine never guesses how an integer image should be scaled.
"""

from __future__ import annotations

import numpy as np
from numpy.typing import ArrayLike

from ._errors import DTypeError, ShapeError
from ._geometry import ConvGeometry
from ._im2col import batch_chunks, col2im_add, offsets, pad, windows, workspace

__all__ = ["as_float_array", "backward", "conv2d", "conv2d_backward", "forward"]

_FLOAT_DTYPES = (np.dtype(np.float32), np.dtype(np.float64))


def as_float_array(value: ArrayLike, field: str, dtype: np.dtype | None = None) -> np.ndarray:
    """``value`` as a float32 or float64 array, converted to ``dtype`` when one is given."""
    try:
        array = np.asarray(value)
    except (TypeError, ValueError) as exc:
        raise ShapeError(
            f"{field} is not a rectangular array of numbers: {exc}", field=field
        ) from exc
    if array.dtype not in _FLOAT_DTYPES:
        raise DTypeError(
            f"{field} has dtype {array.dtype}; the engine computes in float32 or float64: "
            f"convert {field} to one of them",
            field=field,
        )
    return array if dtype is None else array.astype(dtype, copy=False)


def conv2d(
    x: ArrayLike,
    w: ArrayLike,
    b: ArrayLike | None = None,
    *,
    stride: object = 1,
    padding: object = 0,
    dilation: object = 1,
    groups: object = 1,
) -> np.ndarray:
    """The 2-D convolution (cross-correlation, as in deep-learning frameworks) of x with w.

    x (N, C, H, W), w (F, C/groups, KH, KW), b (F,) or None -> out (N, F, H_out, W_out)
    """
    x = as_float_array(x, "x")
    w = as_float_array(w, "w", x.dtype)
    geometry = ConvGeometry.build(
        x.shape, w.shape, stride=stride, padding=padding, dilation=dilation, groups=groups
    )
    if b is not None:
        b = as_float_array(b, "b", x.dtype)
        geometry.check_bias(b.shape)
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
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Gradients of a loss with respect to x, w and b, given its gradient dout w.r.t. the output.

    dout (N, F, H_out, W_out), x (N, C, H, W), w (F, C/groups, KH, KW)
    -> dx (N, C, H, W), dw (F, C/groups, KH, KW), db (F,)
    """
    x = as_float_array(x, "x")
    w = as_float_array(w, "w", x.dtype)
    dout = as_float_array(dout, "dout", x.dtype)
    geometry = ConvGeometry.build(
        x.shape, w.shape, stride=stride, padding=padding, dilation=dilation, groups=groups
    )
    geometry.check_dout(dout.shape)
    return backward(dout, x, w, geometry)


def forward(
    x: np.ndarray, w: np.ndarray, b: np.ndarray | None, geometry: ConvGeometry
) -> np.ndarray:
    """The forward pass on checked arrays of one dtype.

    x (N, C, H, W), w (F, C/groups, KH, KW), b (F,) or None -> out (N, F, H_out, W_out)
    """
    if geometry.c_per_group == 1 and geometry.groups > 1:
        out = _depthwise_forward(x, w, geometry)
    else:
        out = _gemm_forward(x, w, geometry)
    if b is not None:
        out += b[:, None, None]
    return out


def backward(
    dout: np.ndarray, x: np.ndarray, w: np.ndarray, geometry: ConvGeometry
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """The backward pass on checked arrays of one dtype; shapes as in :func:`conv2d_backward`."""
    if geometry.c_per_group == 1 and geometry.groups > 1:
        dx, dw = _depthwise_backward(dout, x, w, geometry)
    else:
        dx, dw = _gemm_backward(dout, x, w, geometry)
    return dx, dw, dout.sum(axis=(0, 2, 3))


def _gemm_forward(x: np.ndarray, w: np.ndarray, geometry: ConvGeometry) -> np.ndarray:
    g = geometry
    fields = windows(pad(x, g), g)
    w_rows = w.reshape(g.groups, g.f_per_group, g.col_rows)
    # out: (N, groups, F/groups, H_out*W_out), which is NCHW once reshaped: no transpose.
    out = np.empty((g.n, g.groups, g.f_per_group, g.positions), dtype=x.dtype)
    for chunk in batch_chunks(g, x.dtype.itemsize):
        cols = workspace("cols", fields[chunk].shape, x.dtype)
        np.copyto(cols, fields[chunk])
        # cols: (n_chunk, groups, C/groups*KH*KW, H_out*W_out)
        cols_rows = cols.reshape(-1, g.groups, g.col_rows, g.positions)
        np.matmul(w_rows, cols_rows, out=out[chunk])
    return out.reshape(g.out_shape)


def _gemm_backward(
    dout: np.ndarray, x: np.ndarray, w: np.ndarray, geometry: ConvGeometry
) -> tuple[np.ndarray, np.ndarray]:
    g = geometry
    xp = pad(x, g)
    fields = windows(xp, g)
    w_cols = w.reshape(g.groups, g.f_per_group, g.col_rows).transpose(0, 2, 1)
    dout_rows = dout.reshape(g.n, g.groups, g.f_per_group, g.positions)
    dw_rows = np.zeros((g.groups, g.f_per_group, g.col_rows), dtype=x.dtype)
    dw_image = np.empty_like(dw_rows)
    dxp = np.zeros(xp.shape, dtype=x.dtype)
    for chunk in batch_chunks(g, x.dtype.itemsize):
        cols = workspace("cols", fields[chunk].shape, x.dtype)
        np.copyto(cols, fields[chunk])
        cols_rows = cols.reshape(-1, g.groups, g.col_rows, g.positions)
        for image, image_cols in zip(dout_rows[chunk], cols_rows, strict=True):
            np.matmul(image, image_cols.transpose(0, 2, 1), out=dw_image)
            dw_rows += dw_image
        # The columns are consumed: their buffer now receives the column gradients.
        np.matmul(w_cols, dout_rows[chunk], out=cols_rows)
        col2im_add(cols, dxp[chunk], g)
    return _crop(dxp, g), dw_rows.reshape(w.shape)


def _crop(dxp: np.ndarray, geometry: ConvGeometry) -> np.ndarray:
    """dxp (N, C, H_pad, W_pad) without its padding, as a contiguous (N, C, H, W) array."""
    if not geometry.is_padded:
        return dxp
    top, left = geometry.pad_h[0], geometry.pad_w[0]
    return dxp[:, :, top : top + geometry.h, left : left + geometry.w].copy()


def _per_filter_input(xp: np.ndarray, geometry: ConvGeometry) -> np.ndarray:
    """xp (N, C, H_pad, W_pad), each channel repeated for its F/groups filters -> (N, F, ...)."""
    if geometry.f_per_group == 1:
        return xp
    return np.repeat(xp, geometry.f_per_group, axis=1)


def _depthwise_forward(x: np.ndarray, w: np.ndarray, geometry: ConvGeometry) -> np.ndarray:
    # One input channel per group makes each GEMM a single row: multiply-adds over whole
    # feature maps, one per kernel offset, beat C tiny GEMMs.
    g = geometry
    fields = windows(_per_filter_input(pad(x, g), g), g)
    out = np.zeros(g.out_shape, dtype=x.dtype)
    term = np.empty_like(out)
    for i, j, _ in offsets(g):
        np.multiply(fields[:, :, i, j], w[:, 0, i, j, None, None], out=term)
        out += term
    return out


def _depthwise_backward(
    dout: np.ndarray, x: np.ndarray, w: np.ndarray, geometry: ConvGeometry
) -> tuple[np.ndarray, np.ndarray]:
    g = geometry
    xp = _per_filter_input(pad(x, g), g)
    fields = windows(xp, g)
    dxp = np.zeros(xp.shape, dtype=x.dtype)
    dw = np.empty_like(w)
    term = np.empty_like(dout)
    for i, j, (rows, cols) in offsets(g):
        np.multiply(dout, fields[:, :, i, j], out=term)
        dw[:, 0, i, j] = term.sum(axis=(0, 2, 3))
        np.multiply(dout, w[:, 0, i, j, None, None], out=term)
        dxp[:, :, rows, cols] += term
    if g.f_per_group > 1:
        dxp = dxp.reshape(g.n, g.c, g.f_per_group, *dxp.shape[2:]).sum(axis=2)
    return _crop(dxp, g), dw
