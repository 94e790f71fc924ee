"""Small stride-1 layers: columns as long runs of the flat padded images, and few NumPy calls.

A small layer's time is the calls around its GEMM, not the GEMM: im2col's copy in runs of
one output row (32 elements on a 32x32 image), its col2im's strided adds, its chunks and
views. Here each padded image is stored flat, row after row, so that with stride 1 kernel
offset (i, j) is a constant shift ``i*dilation_h*W_pad + j*dilation_w`` of it: the columns of
every offset are one run of the image, copied in one call, and multiplied in one batched GEMM.

- Forward: each run is ``(H_out-1)*W_pad + W_out`` long (the last offset's ends on the last
  padded pixel); the ``W_pad - W_out`` junk columns between output rows are skipped when the
  output is copied out. They never meet a real output: any data.
- Backward: runs a whole plane long, and the column gradients of all kernel offsets summed
  by one call over a view that reads each offset's shifted back (col2im without a loop of
  strided adds). The junk columns of dout are zeros and meet x's pixels (dw) and w (dx):
  finite x and w only, as for im2col's wide rows (the selector checks; ``wide`` False falls
  back to im2col).

A large batch runs in chunks of images (their columns in cache, the work buffers reused).
Interleaved CPU times with one BLAS thread, N2 C3 32x32 F8 3x3 padding 1, against im2col:
float64 forward 50 against 56 us, backward 118 against 172 us (col2im as a loop of adds:
153; the layer through the public API, 0.84x and 0.66x); float32 backward 0.6x.
"""

from __future__ import annotations

from dataclasses import replace
from typing import cast

import numpy as np

from .._geometry import ConvGeometry
from . import im2col
from .layout import PATH_FUNCTIONS, workspace

__all__ = [*PATH_FUNCTIONS, "CHUNK_ELEMENTS", "MAX_IMAGE_COLUMN_ELEMENTS"]

# The largest column tensor of one image (elements, with the ones row) taken here: past it
# the GEMM dominates and im2col's narrower columns (no junk) win back what its copies cost.
# A choice by the image, never by the batch, so that a sample's bits do not hang on the
# batch it came in (a shard, or a half of a split batch, takes the whole batch's path).
MAX_IMAGE_COLUMN_ELEMENTS = 1 << 16
# A larger batch runs in chunks of images whose columns hold at most this many elements
# (1 MiB of float64), so that its work buffers stay in cache and are reused.
CHUNK_ELEMENTS = 1 << 17


def supports(geometry: ConvGeometry) -> bool:
    """A small planar layer: stride 1, no groups, each image's columns at most
    ``MAX_IMAGE_COLUMN_ELEMENTS``."""
    g = geometry
    return (
        g.rank == 2
        and g.stride == (1, 1)
        and g.groups == 1
        and _image_columns(g) <= MAX_IMAGE_COLUMN_ELEMENTS
    )


def work_elements(geometry: ConvGeometry) -> int:
    """An upper bound on the array elements one pass allocates here: for a chunk of images,
    the padded input and its gradient (each with its shift of slack), the columns (with the
    ones row), the wide output or output gradient and dw per image; and the whole batch's
    answers (out, dx), with dw."""
    g = geometry
    n = min(g.n, _images_per_chunk(g))
    canvas = n * g.c * _plane(g) + _reach(g)
    wide = n * g.f * _plane(g)
    answers = g.n * g.f * g.positions + g.n * g.c * g.height * g.width + g.f * g.col_rows
    return 2 * canvas + n * _image_columns(g) + wide + n * g.f * g.col_rows + answers


def forward(
    x: np.ndarray, w: np.ndarray, b: np.ndarray | None, geometry: ConvGeometry
) -> np.ndarray:
    """x (N, C, H, W), w (F, C, KH, KW), b (F,) or None -> out (N, F, H_out, W_out)."""
    chunks = _chunks(geometry)
    if len(chunks) == 1:
        return _forward(x, w, b, geometry)
    out = np.empty(geometry.out_shape, x.dtype)
    for batch, piece in chunks:
        out[batch] = _forward(x[batch], w, b, piece)
    return out


def backward(
    dout: np.ndarray, x: np.ndarray, w: np.ndarray, geometry: ConvGeometry, wide: bool
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """dout (N, F, H_out, W_out), x (N, C, H, W), w (F, C, KH, KW) -> dx, dw, db.

    wide: whether x and w are finite (junk columns meet them); if not, im2col computes it.
    """
    if not wide:
        return im2col.backward(dout, x, w, geometry, wide)
    dx, dw = _by_chunks(dout, x, w, geometry)
    return cast(np.ndarray, dx), cast(np.ndarray, dw), dout.sum(axis=(0, 2, 3))


def input_gradient(
    dout: np.ndarray, w: np.ndarray, geometry: ConvGeometry, wide: bool
) -> np.ndarray:
    """dout (N, F, H_out, W_out), w (F, C, KH, KW) -> dx (N, C, H, W); wide: w is finite."""
    if not wide:
        return im2col.input_gradient(dout, w, geometry, wide)
    return cast(np.ndarray, _by_chunks(dout, None, w, geometry)[0])


def weight_gradient(
    dout: np.ndarray, x: np.ndarray, w: np.ndarray, geometry: ConvGeometry, wide: bool
) -> np.ndarray:
    """dw alone; shapes as in :func:`backward`. wide: x is finite."""
    if not wide:
        return im2col.weight_gradient(dout, x, w, geometry, wide)
    return cast(np.ndarray, _by_chunks(dout, x, w, geometry, input_gradient=False)[1])


def _image_columns(g: ConvGeometry) -> int:
    return (g.col_rows + 1) * _plane(g)


def _images_per_chunk(g: ConvGeometry) -> int:
    return max(1, CHUNK_ELEMENTS // _image_columns(g))


def _chunks(g: ConvGeometry) -> list[tuple[slice, ConvGeometry]]:
    """The chunks of the batch and each one's geometry (the layer's own for a single one)."""
    step = _images_per_chunk(g)
    if g.n <= step:
        return [(slice(0, g.n), g)]
    starts = range(0, g.n, step)
    return [(slice(i, min(i + step, g.n)), replace(g, n=min(step, g.n - i))) for i in starts]


def _forward(
    x: np.ndarray, w: np.ndarray, b: np.ndarray | None, geometry: ConvGeometry
) -> np.ndarray:
    """:func:`forward` of one chunk of images."""
    g = geometry
    _, w_pad = g.padded_hw
    run = (g.h_out - 1) * w_pad + g.w_out
    rows = g.col_rows
    # cols: (N, C*KH*KW (+1 row of ones for the bias), run)
    cols = workspace("small.cols", (g.n, rows + (b is not None), run), x.dtype)
    _copy_columns(_canvas(x, g, "small.x"), cols[:, :rows], g)
    w_rows = w.reshape(g.f, rows)
    if b is not None:
        cols[:, rows] = 1
        w_rows = np.concatenate([w_rows, b.reshape(g.f, 1)], axis=1)
    wide = workspace("small.out", (g.n, g.f, run), x.dtype)
    np.matmul(w_rows, cols, out=wide)
    # The real columns: H_out runs of W_out, W_pad apart.
    step = wide.itemsize
    real = np.ndarray(
        g.out_shape, wide.dtype, wide, strides=(g.f * run * step, run * step, w_pad * step, step)
    )
    return real.copy()


def _by_chunks(
    dout: np.ndarray,
    x: np.ndarray | None,
    w: np.ndarray,
    geometry: ConvGeometry,
    input_gradient: bool = True,
) -> tuple[np.ndarray | None, np.ndarray | None]:
    """dx (if ``input_gradient``) and dw (if x is given), a chunk of images at a time: dw is
    the chunks' sum, in batch order."""
    chunks = _chunks(geometry)
    if len(chunks) == 1:
        return _gradients(dout, x, w, geometry, input_gradient)
    dx = np.empty(geometry.x_shape, dout.dtype) if input_gradient else None
    dw = None if x is None else np.zeros(w.shape, dout.dtype)
    for batch, piece in chunks:
        part = None if x is None else x[batch]
        dx_part, dw_part = _gradients(dout[batch], part, w, piece, input_gradient)
        if dx is not None:
            dx[batch] = dx_part
        if dw is not None:
            dw += cast(np.ndarray, dw_part)
    return dx, dw


def _gradients(
    dout: np.ndarray,
    x: np.ndarray | None,
    w: np.ndarray,
    g: ConvGeometry,
    input_gradient: bool,
) -> tuple[np.ndarray | None, np.ndarray | None]:
    """dx (if ``input_gradient``) and dw (if x is given) of one chunk of images."""
    dout_rows = _wide_dout(dout, g)
    if x is None:
        cols = workspace("small.cols", (g.n, g.col_rows, _plane(g)), dout.dtype)
        dw = None
    else:
        cols = _plane_columns(x, g)
        dw = _weight_gradient(dout_rows, cols, w)
    # The columns are consumed: their buffer now receives the column gradients.
    dx = _input_gradient(dout_rows, w, g, cols) if input_gradient else None
    return dx, dw


def _plane(g: ConvGeometry) -> int:
    h_pad, w_pad = g.padded_hw
    return h_pad * w_pad


def _reach(g: ConvGeometry) -> int:
    """How far the last kernel offset is shifted: the slack past the last plane."""
    (kh, kw), (dh, dw) = g.kernel, g.dilation
    return (kh - 1) * dh * g.padded_hw[1] + (kw - 1) * dw


def _canvas(x: np.ndarray, g: ConvGeometry, slot: str) -> np.ndarray:
    """x zero-padded, flat: (N*C*H_pad*W_pad + the last shift's slack,), a work buffer."""
    h_pad, w_pad = g.padded_hw
    flat = workspace(slot, (g.n * g.c * h_pad * w_pad + _reach(g),), x.dtype)
    flat.fill(0)
    image = flat[: g.n * g.c * h_pad * w_pad].reshape(g.n, g.c, h_pad, w_pad)
    top, left = g.pad_h[0], g.pad_w[0]
    image[:, :, top : top + g.height, left : left + g.width] = x
    return flat


def _copy_columns(flat: np.ndarray, cols: np.ndarray, g: ConvGeometry) -> None:
    """cols (N, C*KH*KW, run) = the runs of the flat canvas at every kernel offset."""
    (kh, kw), (dh, dw) = g.kernel, g.dilation
    plane, w_pad, run, step = _plane(g), g.padded_hw[1], cols.shape[-1], flat.itemsize
    strides = (g.c * plane, plane, dh * w_pad, dw, 1)
    runs = np.ndarray(
        (g.n, g.c, kh, kw, run), flat.dtype, flat, strides=tuple(s * step for s in strides)
    )
    np.copyto(cols.reshape(g.n, g.c, kh, kw, run), runs)


def _plane_columns(x: np.ndarray, g: ConvGeometry) -> np.ndarray:
    """The backward's columns, a plane long: (N, C*KH*KW, H_pad*W_pad), a work buffer."""
    cols = workspace("small.cols", (g.n, g.col_rows, _plane(g)), x.dtype)
    _copy_columns(_canvas(x, g, "small.x"), cols, g)
    return cols


def _wide_dout(dout: np.ndarray, g: ConvGeometry) -> np.ndarray:
    """dout on the padded grid, zero elsewhere: (N, F, H_pad*W_pad), a work buffer."""
    h_pad, w_pad = g.padded_hw
    wide = workspace("small.dout", (g.n, g.f, h_pad, w_pad), dout.dtype)
    wide.fill(0)
    wide[:, :, : g.h_out, : g.w_out] = dout
    return wide.reshape(g.n, g.f, h_pad * w_pad)


def _weight_gradient(dout_rows: np.ndarray, cols: np.ndarray, w: np.ndarray) -> np.ndarray:
    """dw (F, C, KH, KW): the images' dout_rows @ cols.T, summed over the batch."""
    per_image = np.matmul(dout_rows, cols.transpose(0, 2, 1))
    dw: np.ndarray = per_image.sum(axis=0).reshape(w.shape)
    return dw


def _input_gradient(
    dout_rows: np.ndarray, w: np.ndarray, g: ConvGeometry, cols: np.ndarray
) -> np.ndarray:
    """dx (N, C, H, W) from the wide dout rows: the column gradients, computed into ``cols``
    with the kernel offsets outermost, (N, KH, KW, C*H_pad*W_pad), then summed over the
    offsets in one call, each read shifted back by its offset (see :func:`_shifted_back`)."""
    h_pad, w_pad = g.padded_hw
    # w's rows in the order (KH, KW, C): each offset's column gradients one contiguous block.
    w_cols = w.transpose(2, 3, 1, 0).reshape(g.col_rows, g.f)
    np.matmul(w_cols, dout_rows, out=cols)
    dcanvas: np.ndarray = np.sum(_shifted_back(cols, g), axis=(1, 2))
    image = dcanvas.reshape(g.n, g.c, h_pad, w_pad)
    top, left = g.pad_h[0], g.pad_w[0]
    return image[:, :, top : top + g.height, left : left + g.width].copy()


def _shifted_back(dcols: np.ndarray, g: ConvGeometry) -> np.ndarray:
    """dcols (N, KH*KW*C, plane) -> (N, KH, KW, C*plane), a view in which offset (i, j) is
    read ``i*dilation_h*W_pad + j*dilation_w`` elements earlier: position q of the sum over
    the offsets is then the gradient of padded pixel q (col2im without a loop).

    A shifted read starts in the block of the offset before, on the last channel's last
    columns: junk columns (past the last output row, or right of the last output column),
    zero for finite w, as the selector ensures.
    """
    (kh, kw), (dh, dw) = g.kernel, g.dilation
    w_pad = g.padded_hw[1]
    block = g.c * _plane(g)
    strides = (kh * kw * block, kw * block - dh * w_pad, block - dw, 1)
    step = dcols.itemsize
    return np.ndarray(
        (g.n, kh, kw, block), dcols.dtype, dcols, strides=tuple(s * step for s in strides)
    )
