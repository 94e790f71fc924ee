"""A 1x1 kernel with stride 1 and no padding: the image already is its im2col matrix.

No columns are copied: each chunk of images is one batched GEMM with the kernel's rows, and
the backward pass multiplies dout by x and by the kernel directly (no col2im either).
"""

from __future__ import annotations

from typing import cast

import numpy as np

from .._geometry import ConvGeometry
from . import im2col
from .layout import PATH_FUNCTIONS, batch_chunks

__all__ = [*PATH_FUNCTIONS]


def supports(geometry: ConvGeometry) -> bool:
    """A planar 1x1 kernel, stride 1, no padding."""
    g = geometry
    return g.kernel == (1, 1) and g.stride == (1, 1) and not g.is_padded


def work_elements(geometry: ConvGeometry) -> int:
    """At most what :func:`.im2col.work_elements` counts: its outputs, with no canvas and no
    columns besides (the bound is loose here, and kept one with the general path's)."""
    return im2col.work_elements(geometry)


def forward(
    x: np.ndarray, w: np.ndarray, b: np.ndarray | None, geometry: ConvGeometry
) -> np.ndarray:
    """x (N, C, H, W), w (F, C/groups, 1, 1), b (F,) or None -> out (N, F, H, W)."""
    g = geometry
    x = np.ascontiguousarray(x)
    w_rows = w.reshape(g.groups, g.f_per_group, g.col_rows)
    out = np.empty((g.n, g.groups, g.f_per_group, g.positions), dtype=x.dtype)
    for chunk in batch_chunks(g, x.dtype.itemsize):
        cols_rows = x[chunk].reshape(-1, g.groups, g.col_rows, g.positions)
        np.matmul(w_rows, cols_rows, out=out[chunk])
    if b is not None:
        out += b.reshape(g.groups, g.f_per_group, 1)
    return out.reshape(g.out_shape)


def backward(
    dout: np.ndarray, x: np.ndarray, w: np.ndarray, geometry: ConvGeometry, wide: bool = False
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """dout (N, F, H, W), x (N, C, H, W), w (F, C/groups, 1, 1) -> dx, dw, db.

    ``wide`` is ignored: the rows here are the image's own, with no junk columns.
    """
    x, dout = np.ascontiguousarray(x), np.ascontiguousarray(dout)
    dx, dw = _gradients(dout, x, w, geometry, input_gradient=True)
    return cast(np.ndarray, dx), dw, dout.sum(axis=(0, 2, 3))


def weight_gradient(
    dout: np.ndarray, x: np.ndarray, w: np.ndarray, geometry: ConvGeometry, wide: bool = False
) -> np.ndarray:
    """dw alone; shapes as in :func:`backward`."""
    x, dout = np.ascontiguousarray(x), np.ascontiguousarray(dout)
    return _gradients(dout, x, w, geometry, input_gradient=False)[1]


def input_gradient(
    dout: np.ndarray, w: np.ndarray, geometry: ConvGeometry, wide: bool = False
) -> np.ndarray:
    """dx alone: dout (N, F, H, W), w (F, C/groups, 1, 1) -> dx (N, C, H, W)."""
    g = geometry
    dout = np.ascontiguousarray(dout)
    w_cols = w.reshape(g.groups, g.f_per_group, g.col_rows).transpose(0, 2, 1)
    dout_groups = dout.reshape(g.n, g.groups, g.f_per_group, g.positions)
    dx = np.empty(g.x_shape, dtype=dout.dtype)
    for chunk in batch_chunks(g, dout.dtype.itemsize):
        n = chunk.stop - chunk.start
        np.matmul(w_cols, dout_groups[chunk], out=dx[chunk].reshape(n, g.groups, g.col_rows, -1))
    return dx


def _gradients(
    dout: np.ndarray, x: np.ndarray, w: np.ndarray, geometry: ConvGeometry, input_gradient: bool
) -> tuple[np.ndarray | None, np.ndarray]:
    """dx (None unless ``input_gradient``) and dw, for contiguous dout and x."""
    g = geometry
    dx = np.empty_like(x) if input_gradient else None
    w_cols = w.reshape(g.groups, g.f_per_group, g.col_rows).transpose(0, 2, 1)
    dout_rows = dout.reshape(g.n, g.groups, g.f_per_group, g.positions)
    x_rows = x.reshape(g.n, g.groups, g.col_rows, g.positions)
    dw_rows = np.zeros((g.groups, g.f_per_group, g.col_rows), dtype=x.dtype)
    dw_image = np.empty_like(dw_rows)
    for chunk in batch_chunks(g, x.dtype.itemsize):
        im2col.add_weight_gradient(dw_rows, dout_rows[chunk], x_rows[chunk], dw_image)
        if dx is not None:
            np.matmul(w_cols, dout_rows[chunk], out=dx[chunk].reshape(x_rows[chunk].shape))
    return dx, dw_rows.reshape(w.shape)
