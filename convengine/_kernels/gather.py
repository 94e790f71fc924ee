"""Tiny layers: im2col as one gather by a cached index, col2im as one ``bincount``.

A tiny layer (the service's 1x1x8x8 example: 576 column elements) costs the NumPy calls
around its GEMM, not the GEMM: a canvas, its padding, strided views, a crop. Here the
columns of the whole batch are one ``take`` from x with a zero appended, by an index made
once per geometry: position (n, c, i, j, p) reads x's pixel, or the zero where the window
reads padding. The column gradients go back by ``bincount`` on the same index (the zero's
bin is dropped). No junk columns: any data, every planar geometry (strides, dilation,
groups). CPU times with one BLAS thread (float64), 1x1x8x8 3x3 padding 1: forward 4.5 us
against the small path's 13.5, backward 9.9 against 22; 2x3x12x12 (7776 column elements)
15.5 against 22.6 and 43 against 47; 1x8x25x25 3x3 stride 2 (12k) against im2col 24 against
32 and 56 against 98. Near 14k elements the small path is as fast, and ``bincount`` falls
far behind past that (55k: 459 us against 104).
"""

from __future__ import annotations

from functools import lru_cache

import numpy as np

from .._geometry import ConvGeometry
from .layout import PATH_FUNCTIONS

__all__ = [*PATH_FUNCTIONS, "MAX_COLUMN_ELEMENTS"]

# The largest column tensor (elements, whole batch) taken here. Its index is kept per
# geometry (at most INDEXES_KEPT of them: 64 x 8192 x 8 bytes, 4 MiB at most).
MAX_COLUMN_ELEMENTS = 1 << 13
INDEXES_KEPT = 64


def supports(geometry: ConvGeometry) -> bool:
    """A planar layer of at most ``MAX_COLUMN_ELEMENTS`` column elements."""
    return geometry.rank == 2 and geometry.cols_elements() <= MAX_COLUMN_ELEMENTS


def work_elements(geometry: ConvGeometry) -> int:
    """An upper bound on the array elements one pass allocates here: x with its zero, the
    columns or their gradients, each image's dw, the float64 bins of dx, and the outputs;
    the index (kept, an int64 per column element) is counted as one more set of columns."""
    g = geometry
    x = g.n * g.c * g.height * g.width + 1
    outputs = g.n * g.f * g.positions
    return 2 * x + 2 * g.cols_elements() + g.n * g.f * g.col_rows + outputs + x


def forward(
    x: np.ndarray, w: np.ndarray, b: np.ndarray | None, geometry: ConvGeometry
) -> np.ndarray:
    """x (N, C, H, W), w (F, C/groups, KH, KW), b (F,) or None -> out (N, F, H_out, W_out)."""
    g = geometry
    out: np.ndarray = np.matmul(_w_rows(w, g), _columns(x, g))
    if b is not None:
        out += b.reshape(g.groups, g.f_per_group, 1)
    return out.reshape(g.out_shape)


def backward(
    dout: np.ndarray, x: np.ndarray, w: np.ndarray, geometry: ConvGeometry, wide: bool = False
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """dout (N, F, H_out, W_out), x (N, C, H, W), w (F, C/groups, KH, KW) -> dx, dw, db.

    ``wide`` is ignored: there are no junk columns here.
    """
    dx = input_gradient(dout, w, geometry)
    return dx, weight_gradient(dout, x, w, geometry), dout.sum(axis=(0, 2, 3))


def input_gradient(
    dout: np.ndarray, w: np.ndarray, geometry: ConvGeometry, wide: bool = False
) -> np.ndarray:
    """dout (N, F, H_out, W_out), w (F, C/groups, KH, KW) -> dx (N, C, H, W)."""
    g = geometry
    w_cols = _w_rows(w, g).transpose(0, 2, 1)
    dcols = np.matmul(w_cols, dout.reshape(g.n, g.groups, g.f_per_group, g.positions))
    # Each pixel's column gradients summed in float64, in the index's order; the last bin
    # is the padding's.
    pixels = g.n * g.c * g.height * g.width
    bins = np.bincount(_index(g).reshape(-1), dcols.reshape(-1), minlength=pixels + 1)
    return bins[:pixels].astype(dout.dtype).reshape(g.x_shape)


def weight_gradient(
    dout: np.ndarray, x: np.ndarray, w: np.ndarray, geometry: ConvGeometry, wide: bool = False
) -> np.ndarray:
    """dw alone; shapes as in :func:`backward`."""
    g = geometry
    cols = _columns(x, g)
    dout_rows = dout.reshape(g.n, g.groups, g.f_per_group, g.positions)
    per_image = np.matmul(dout_rows, cols.transpose(0, 1, 3, 2))
    dw: np.ndarray = per_image.sum(axis=0).reshape(w.shape)
    return dw


def _w_rows(w: np.ndarray, g: ConvGeometry) -> np.ndarray:
    return w.reshape(g.groups, g.f_per_group, g.col_rows)


def _columns(x: np.ndarray, g: ConvGeometry) -> np.ndarray:
    """cols (N, groups, C/groups*KH*KW, H_out*W_out), gathered from x and one zero."""
    with_zero = np.concatenate((x.reshape(-1), np.zeros(1, x.dtype)))
    return with_zero.take(_index(g))


@lru_cache(maxsize=INDEXES_KEPT)
def _index(geometry: ConvGeometry) -> np.ndarray:
    """For each column element (N, groups, C/groups*KH*KW, H_out*W_out), the flat index of
    the pixel of x it reads, or N*C*H*W (the zero after x) where it reads padding. Kept per
    geometry, read-only."""
    g = geometry
    n, c, i, j, r, q = np.ogrid[: g.n, : g.c, : g.kernel[0], : g.kernel[1], : g.h_out, : g.w_out]
    rows = r * g.stride[0] + i * g.dilation[0] - g.pad_h[0]
    columns = q * g.stride[1] + j * g.dilation[1] - g.pad_w[0]
    inside = (rows >= 0) & (rows < g.height) & (columns >= 0) & (columns < g.width)
    pixel = ((n * g.c + c) * g.height + rows) * g.width + columns
    index = np.where(inside, pixel, g.n * g.c * g.height * g.width)
    index = index.reshape(g.n, g.groups, g.col_rows, g.positions)
    index.flags.writeable = False
    return index
