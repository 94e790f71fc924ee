"""Tiny layers: im2col as one gather by a cached index, col2im as one ``bincount``.

A tiny layer (the service's 1x1x8x8 example: 576 column elements) costs the NumPy calls
around its GEMM, not the GEMM: a canvas, its padding, strided views, a crop. Here the
columns of the whole batch are one ``take`` from its images, each with a zero appended, by
one image's index, made once per image geometry: position (c, i, j, p) reads the image's
pixel, or the zero where the window reads padding. The column gradients go back by one
``bincount`` on that index shifted image by image (each image's zero bin is dropped). No
junk columns: any data, every planar geometry (strides, dilation, groups).

CPU times with one BLAS thread (float64), 1x1x8x8 3x3 padding 1: forward 4.5 us against
the small path's 13.5, backward 9.9 against 22; 2x3x12x12 (3888 column elements an image)
15.5 against 22.6 and 43 against 47; 1x8x25x25 3x3 stride 2 (12k) against im2col 24
against 32 and 56 against 98. Near 14k elements an image the small path is as fast, and
``bincount`` falls far behind past that (2x3x32x32: 459 us against 104); the bound is kept
below, at 8192.
"""

from __future__ import annotations

from functools import lru_cache

import numpy as np

from .._geometry import ConvGeometry
from .layout import PATH_FUNCTIONS

__all__ = [*PATH_FUNCTIONS, "MAX_IMAGE_COLUMN_ELEMENTS"]

# The largest column tensor of one image (elements) taken here: a choice by the image, never
# by the batch, so that a sample's bits do not hang on the batch it came in (a shard of a
# batch is computed as the whole batch's samples are). Its index is kept per image geometry
# (at most INDEXES_KEPT of them: 64 x 8192 x 8 bytes, 4 MiB at most).
MAX_IMAGE_COLUMN_ELEMENTS = 1 << 13
INDEXES_KEPT = 64


def supports(geometry: ConvGeometry) -> bool:
    """A planar layer of at most ``MAX_IMAGE_COLUMN_ELEMENTS`` column elements per image."""
    g = geometry
    return g.rank == 2 and g.col_rows * g.groups * g.positions <= MAX_IMAGE_COLUMN_ELEMENTS


def work_elements(geometry: ConvGeometry) -> int:
    """An upper bound on the array elements one pass allocates here: x with a zero per image,
    the columns or their gradients, the batch's index and float64 bins of dx, each image's
    dw, and the outputs; the kept index (one image's) counts as another image's columns."""
    g = geometry
    pixels = g.n * (g.c * g.height * g.width + 1)
    columns = g.cols_elements()
    return 3 * pixels + 3 * columns + g.n * g.f * g.col_rows + g.n * g.f * g.positions


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
    # Each pixel's column gradients summed in float64, in the index's order (an image's own
    # order, whatever the batch); the last bin of each image is its padding's.
    image = g.c * g.height * g.width + 1
    index = _index(_image_key(g)).reshape(-1)
    if g.n > 1:
        index = (index + np.arange(0, g.n * image, image)[:, None]).reshape(-1)
    bins = np.bincount(index, dcols.reshape(-1), minlength=g.n * image)
    return bins.reshape(g.n, image)[:, :-1].astype(dout.dtype).reshape(g.x_shape)


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
    """cols (N, groups, C/groups*KH*KW, H_out*W_out), gathered from each image and a zero."""
    pixels = g.c * g.height * g.width
    with_zero = np.empty((g.n, pixels + 1), x.dtype)
    with_zero[:, :pixels] = x.reshape(g.n, pixels)
    with_zero[:, pixels] = 0
    return with_zero.take(_index(_image_key(g)), axis=1)


Sizes = tuple[int, ...]
# c, size, kernel, stride, dilation, pads, groups, out
ImageKey = tuple[int, Sizes, Sizes, Sizes, Sizes, tuple[tuple[int, int], ...], int, Sizes]


def _image_key(g: ConvGeometry) -> ImageKey:
    """What one image's index depends on: every size but the batch."""
    return g.c, g.size, g.kernel, g.stride, g.dilation, g.pads, g.groups, g.out


@lru_cache(maxsize=INDEXES_KEPT)
def _index(key: ImageKey) -> np.ndarray:
    """For each column element of one image (groups, C/groups*KH*KW, H_out*W_out), the flat
    index of the pixel it reads, or C*H*W (the zero after the image) where it reads padding.
    Kept per image geometry, read-only."""
    c, (height, width), kernel, stride, dilation, pads, groups, (h_out, w_out) = key
    channel, i, j, r, q = np.ogrid[:c, : kernel[0], : kernel[1], :h_out, :w_out]
    rows = r * stride[0] + i * dilation[0] - pads[0][0]
    columns = q * stride[1] + j * dilation[1] - pads[1][0]
    inside = (rows >= 0) & (rows < height) & (columns >= 0) & (columns < width)
    pixel = (channel * height + rows) * width + columns
    index: np.ndarray = np.where(inside, pixel, c * height * width)
    index = index.reshape(groups, -1, h_out * w_out)
    index.flags.writeable = False
    return index
