"""Depthwise convolution of any stride as one multiply-add per kernel offset over whole planes.

One input channel per group makes each GEMM a single row: multiply-adds over whole feature
maps, one per kernel offset, beat C tiny GEMMs. The path for what :mod:`.depthwise`'s
shifted copies do not take: strides above 1, and the backward passes of non-finite arrays.
"""

from __future__ import annotations

import numpy as np

from .._geometry import ConvGeometry
from . import depthwise
from .im2col import widened
from .layout import PATH_FUNCTIONS, Canvas, row_width, workspace

__all__ = [*PATH_FUNCTIONS]

CHUNK_BYTES = 1 << 20


def supports(geometry: ConvGeometry) -> bool:
    """Every planar depthwise geometry (one input channel per group)."""
    return depthwise.is_depthwise(geometry)


def work_elements(geometry: ConvGeometry) -> int:
    """The bound of :func:`.depthwise.work_elements`: its canvases are the ones it counts for
    this path, its repeated input and planes cover the repeat and the chunks of terms here."""
    return depthwise.work_elements(geometry)


def forward(
    x: np.ndarray, w: np.ndarray, b: np.ndarray | None, geometry: ConvGeometry
) -> np.ndarray:
    """x (N, C, H, W), w (F, 1, KH, KW), b (F,) or None -> out (N, F, H_out, W_out)."""
    x, g = depthwise.as_depthwise(np.ascontiguousarray(x), geometry)
    width = row_width(g)
    fields = Canvas.of(x, g, "x", width).fields()
    out = np.empty((g.n, g.f, g.h_out, width), dtype=x.dtype)
    for chunk in _chunks(g, width, x.dtype.itemsize):
        out_chunk, chunk_fields = out[chunk], fields[chunk]
        term = workspace("term", out_chunk.shape, x.dtype)
        out_chunk.fill(0)
        for i in range(g.kernel[0]):
            for j in range(g.kernel[1]):
                np.multiply(chunk_fields[:, :, i, j], w[:, 0, i, j, None, None], out=term)
                out_chunk += term
    out = out if width == g.w_out else out[..., : g.w_out].copy()
    if b is not None:
        out += b[:, None, None]
    return out


def backward(
    dout: np.ndarray, x: np.ndarray, w: np.ndarray, geometry: ConvGeometry, wide: bool
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """dout (N, F, H_out, W_out), x (N, C, H, W), w (F, 1, KH, KW) -> dx, dw, db.

    wide: whether wide rows may be used (for finite x and w only: junk columns meet zeros).
    """
    x, dout = np.ascontiguousarray(x), np.ascontiguousarray(dout)
    width = row_width(geometry, wide=wide)
    repeated, g = depthwise.as_depthwise(x, geometry)
    fields = Canvas.of(repeated, g, "x", width).fields()
    dcanvas = Canvas.blank(g, x.dtype, "dx", width)
    dout_wide = widened(dout[:, :, None], g, width, "dout")[:, :, 0]
    dw = np.zeros_like(w)
    targets = dcanvas.targets()
    for chunk in _chunks(g, width, x.dtype.itemsize):
        dout_chunk, chunk_fields = dout_wide[chunk], fields[chunk]
        term = workspace("term", dout_chunk.shape, x.dtype)
        for i in range(g.kernel[0]):
            for j in range(g.kernel[1]):
                np.multiply(dout_chunk, chunk_fields[:, :, i, j], out=term)
                dw[:, 0, i, j] += term.sum(axis=(0, 2, 3))
                np.multiply(dout_chunk, w[:, 0, i, j, None, None], out=term)
                targets[chunk, :, i, j] += term
    dx = dcanvas.interior()
    if geometry.f_per_group > 1:
        dx = dx.reshape(g.n, geometry.c, geometry.f_per_group, g.height, g.width).sum(axis=2)
    else:
        dx = dx.copy()
    return dx, dw, dout.sum(axis=(0, 2, 3))


def input_gradient(
    dout: np.ndarray, w: np.ndarray, geometry: ConvGeometry, wide: bool
) -> np.ndarray:
    """dx alone (computed with dw, of a zero x): dout, w -> dx (N, C, H, W)."""
    dout = np.ascontiguousarray(dout)
    return backward(dout, np.zeros(geometry.x_shape, dtype=dout.dtype), w, geometry, wide)[0]


def weight_gradient(
    dout: np.ndarray, x: np.ndarray, w: np.ndarray, geometry: ConvGeometry, wide: bool
) -> np.ndarray:
    """dw alone (computed with dx); shapes as in :func:`backward`."""
    return backward(dout, x, w, geometry, wide)[1]


def _chunks(geometry: ConvGeometry, width: int, itemsize: int) -> list[slice]:
    # Each kernel offset makes a pass over the chunk's output: keeping that output in the L2
    # cache halved the time against whole-batch passes.
    per_image = geometry.f * geometry.h_out * width * itemsize
    step = max(1, CHUNK_BYTES // per_image)
    return [slice(start, start + step) for start in range(0, geometry.n, step)]
