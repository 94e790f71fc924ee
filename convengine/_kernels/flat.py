"""Stride-1 volumes by shifted runs of a flat padded volume, one slab of columns per depth.

Flatten each zero-padded channel; plane offset (i, j) is then a constant shift
``i*dh*W_pad + j*dw`` of it, and the columns of one offset for a depth's outputs are one
contiguous run. The outputs are computed in wide rows (``H_out*W_pad`` positions per output
depth instead of ``H_out*W_out``): the extra positions are junk, cropped after the GEMM.

The columns are built per input depth (a *slab*: every plane offset of every channel), not
per output depth: output depth d reads kernel depth kd from input depth ``d + kd*dd``, so
its columns are KD consecutive slabs, viewed without a copy (:func:`_slabs`). Each input
depth is copied KD times fewer than columns of every kernel offset per output depth, and
each output depth is one GEMM on hot columns. CPU time on one thread, 2x16x16x32x32 3x3x3
padding 1, against such columns of whole offsets in blocks of output depths: float32
forward 12.9 against 13.7 ms, backward 30.5 against 37.9 (with dw transposed, see
:func:`backward`); float64 24.9 against 26.1 and 61.8 against 62.8. This is what volumes
use, whose depth slices otherwise copy the input once per kernel depth.

The input gradient is gathered, not scattered: it is the convolution of the output gradient,
padded by the kernel's reach, with the flipped and transposed kernel, which is this module's
own forward pass. One im2col copy instead of one read-modify-write add per kernel offset.
"""

from __future__ import annotations

import math
from collections.abc import Iterator
from dataclasses import replace

import numpy as np

from .._geometry import ConvGeometry, Sides
from .layout import PATH_FUNCTIONS, exchange_channels, workspace

__all__ = [*PATH_FUNCTIONS]

# Slabs of one block, in bytes: small enough for the GEMMs to read them back from the cache
# (:func:`work_elements` counts them).
BLOCK_BYTES = 4 << 20
# The padded grid may hold at most this many positions per real output position. Minimum
# times, float32, 3x3x3 padding 1, flat against depth slices: 16x32x32 planes (grid 1.13x the
# outputs) 11.2 against 14.5 ms forward, 34.4 against 38.5 backward; 12x6x6 (1.78x) 0.40
# against 0.58 and 0.90 against 1.38; 8x4x4 (2.25x) 0.04 against 0.15 and 0.12 against 0.41.
MAX_GRID_RATIO = 3.0


def supports(geometry: ConvGeometry) -> bool:
    """Whether a core volume of stride 1 can run here without too much junk.

    The backward pass also needs finite x and w: junk columns meet zeros in dout, and
    inf * 0 would leak NaN into the weight gradient.
    """
    g = geometry
    if g.rank != 3 or any(s != 1 for s in g.stride):
        return False
    grid = math.prod(g.padded[1:]) * g.out[0]
    return grid <= MAX_GRID_RATIO * g.positions


def work_elements(geometry: ConvGeometry) -> int:
    """An upper bound on the array elements one pass allocates here, forward or backward.

    Padded x and padded dout (the input gradient is gathered from it), one block of slabs,
    its wide output and wide dout, both results and dw's work. Sizes are taken at the larger
    of the layer and its input-gradient convolution, per axis, and in float32 elements (more
    of them fit a block than float64's).
    """
    g = geometry
    reach = [d * (k - 1) for d, k in zip(g.dilation, g.kernel, strict=True)]
    grid = [max(p, o + 2 * r) for p, o, r in zip(g.padded, g.out, reach, strict=True)]
    per_depth = math.prod(grid[1:])
    channels, plane_taps = max(g.c, g.f), math.prod(g.kernel[1:])
    slack = sum(r * math.prod(grid[axis + 1 :]) for axis, r in enumerate(reach) if axis > 0)
    canvases = g.n * (g.c + g.f) * math.prod(grid) + 2 * slack
    # A block's slabs fill BLOCK_BYTES, or are the kernel's depth of slabs where one more
    # would not fit; its wide output (and wide dout) has as many depths as it has slabs.
    slabs = max(BLOCK_BYTES // 4, g.kernel[0] * channels * plane_taps * per_depth)
    depths = max(1, BLOCK_BYTES // (4 * min(g.c, g.f) * plane_taps))
    wide = 2 * channels * max(per_depth, depths)
    results = g.n * (g.f * math.prod(g.out) + 2 * g.c * math.prod(g.size))
    return canvases + slabs + wide + results + 4 * g.f * g.c_per_group * math.prod(g.kernel)


def forward(
    x: np.ndarray, w: np.ndarray, b: np.ndarray | None, geometry: ConvGeometry
) -> np.ndarray:
    """x (N, C, D, H, W), w (F, C/groups, KD, KH, KW), b (F,) or None -> out (N, F, *out)."""
    g = geometry
    w_rows = _depth_major(w, g)
    out = np.empty(g.out_shape, dtype=x.dtype)
    row = _row(g)
    for n, depths, slabs in _slabs(x, g):
        wide = workspace("flat_out", (slabs.shape[0], g.groups, g.f_per_group, row), x.dtype)
        np.matmul(w_rows, slabs, out=wide)
        out[n, :, depths] = _crop(wide, g)
    if b is not None:
        out += b.reshape(-1, 1, 1, 1)
    return out


def backward(
    dout: np.ndarray, x: np.ndarray, w: np.ndarray, geometry: ConvGeometry, wide: bool = True
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """dout (N, F, *out), x (N, C, *size), w (F, C/groups, *kernel) -> dx, dw, db.

    For finite x and w only (see :func:`supports`); ``wide`` is ignored (every row here is
    wide: the selector takes this path for finite arrays only).
    """
    db = dout.sum(axis=(0, *range(2, dout.ndim)))
    g = geometry
    # dw transposed, (groups, KD*C/groups*KH*KW, F/groups): the slab is the GEMM's left
    # operand, as it is in the forward pass (float32, one thread: 86 GFLOP/s against 58 with
    # dout on the left; float64 about even).
    dw_cols = np.zeros((g.groups, g.col_rows, g.f_per_group), dtype=x.dtype)
    product = np.empty_like(dw_cols)
    for n, depths, slabs in _slabs(x, g):
        dout_wide = _widened(dout[n, :, depths], g)
        for dout_depth, slab in zip(dout_wide, slabs, strict=True):
            np.matmul(slab, dout_depth.transpose(0, 2, 1), out=product)
            dw_cols += product
    dw = _from_depth_major(dw_cols.transpose(0, 2, 1), g)
    return input_gradient(dout, w, g), dw, db


def weight_gradient(
    dout: np.ndarray, x: np.ndarray, w: np.ndarray, geometry: ConvGeometry, wide: bool = True
) -> np.ndarray:
    """dw alone (computed with dx); shapes as in :func:`backward`."""
    return backward(dout, x, w, geometry)[1]


def input_gradient(
    dout: np.ndarray, w: np.ndarray, geometry: ConvGeometry, wide: bool = True
) -> np.ndarray:
    """dx alone, gathered as a convolution: dout (N, F, *out), w -> dx (N, C, *size)."""
    gradient, dout = _input_gradient(geometry, dout)
    flipped = w[(slice(None), slice(None), *(slice(None, None, -1),) * geometry.rank)]
    return forward(dout, exchange_channels(flipped, geometry), None, gradient)


def _row(g: ConvGeometry) -> int:
    """Positions per output depth: H_out rows of W_pad (wide rows)."""
    return g.out[1] * g.padded[2]


def _depth_major(w: np.ndarray, g: ConvGeometry) -> np.ndarray:
    """w (F, C/groups, KD, KH, KW) -> (groups, F/groups, KD*C/groups*KH*KW), the slabs' order."""
    per_group = w.reshape(g.groups, g.f_per_group, g.c_per_group, *g.kernel)
    return per_group.transpose(0, 1, 3, 2, 4, 5).reshape(g.groups, g.f_per_group, -1)


def _from_depth_major(rows: np.ndarray, g: ConvGeometry) -> np.ndarray:
    """(groups, F/groups, KD*C/groups*KH*KW) -> (F, C/groups, KD, KH, KW)."""
    kd, kh, kw = g.kernel
    per_group = rows.reshape(g.groups, g.f_per_group, kd, g.c_per_group, kh, kw)
    return np.ascontiguousarray(per_group.transpose(0, 1, 3, 2, 4, 5)).reshape(g.w_shape)


def _slabs(x: np.ndarray, g: ConvGeometry) -> Iterator[tuple[int, slice, np.ndarray]]:
    """For each image and block of output depths: the block's columns, depth-major.

    -> (image, output depths (a slice), slabs (depths, groups, KD*C/groups*KH*KW, row)).
    One slab per input depth holds the columns of its KH*KW plane offsets, (groups,
    C/groups*KH*KW, row); output depth d reads kernel depth kd from input depth d + kd*dd, so
    its columns are KD slabs in a row when the slabs are of the input depths d, d + dd, ...:
    ``slabs`` views them, overlapping, with no copy. KD times less copying than columns of
    every offset per output depth, and one GEMM per output depth on hot columns. The
    output depths run by residue modulo dd, which keeps every block's input depths a row.
    slabs lives in a work buffer, overwritten by the next block.
    """
    flat = _canvas(x, g, "flat_x")
    (kd, kh, kw), dd = g.kernel, g.dilation[0]
    slab_bytes = g.c * kh * kw * _row(g) * x.dtype.itemsize
    step = max(1, BLOCK_BYTES // slab_bytes - (kd - 1))
    for n in range(g.n):
        for first in range(min(dd, g.out[0])):
            outputs = range(first, g.out[0], dd)
            for start in range(0, len(outputs), step):
                count = min(step, len(outputs) - start)
                cols = _copied_slabs(flat, g, n, first + dd * start, count + kd - 1)
                depths = slice(outputs[start], outputs[start + count - 1] + 1, dd)
                yield n, depths, _overlapping(cols, g, count)


def _copied_slabs(
    flat: np.ndarray, g: ConvGeometry, image: int, first: int, inputs: int
) -> np.ndarray:
    """The slabs of input depths ``first``, ``first + dd``, ... (``inputs`` of them) of one
    image, copied out of the flat canvas: (groups, inputs, C/groups*KH*KW, row)."""
    (_, kh, kw), (dd, dh, dw) = g.kernel, g.dilation
    itemsize, plane = flat.itemsize, g.padded[1] * g.padded[2]
    volume, row = g.padded[0] * plane, _row(g)
    cols = workspace("flat_cols", (g.groups, inputs, g.c_per_group * kh * kw, row), flat.dtype)
    # fields: (inputs, groups, C/groups, KH, KW, row), runs of the canvas
    steps = (dd * plane, g.c_per_group * volume, volume, dh * g.padded[2], dw, 1)
    fields = np.ndarray(
        (inputs, g.groups, g.c_per_group, kh, kw, row),
        flat.dtype,
        flat,
        offset=(image * g.c * volume + first * plane) * itemsize,
        strides=tuple(s * itemsize for s in steps),
    )
    target = cols.reshape(g.groups, inputs, g.c_per_group, kh, kw, row)
    np.copyto(target.transpose(1, 0, 2, 3, 4, 5), fields)
    return cols


def _overlapping(cols: np.ndarray, g: ConvGeometry, count: int) -> np.ndarray:
    """cols (groups, inputs, taps, row) -> the columns of ``count`` output depths, each the KD
    slabs from its own on: (count, groups, KD*taps, row), a view."""
    groups, inputs, taps, row = cols.shape
    steps = (taps * row, inputs * taps * row, row, 1)
    return np.ndarray(
        (count, groups, g.kernel[0] * taps, row),
        cols.dtype,
        cols,
        strides=tuple(s * cols.itemsize for s in steps),
    )


def _canvas(x: np.ndarray, g: ConvGeometry, slot: str) -> np.ndarray:
    """x zero-padded, flat, with slack for the runs of the last channel's junk positions."""
    volume = math.prod(g.padded)
    reach = sum(
        d * (k - 1) * math.prod(g.padded[axis + 1 :])
        for axis, (d, k) in enumerate(zip(g.dilation, g.kernel, strict=True))
        if axis > 0
    )
    flat = workspace(slot, (g.n * g.c * volume + reach,), x.dtype)
    flat.fill(0)
    image = flat[: g.n * g.c * volume].reshape(g.n, g.c, *g.padded)
    inside = tuple(
        slice(begin, begin + size) for (begin, _), size in zip(g.pads, g.size, strict=True)
    )
    image[(slice(None), slice(None), *inside)] = x
    return flat


def _crop(wide: np.ndarray, g: ConvGeometry) -> np.ndarray:
    """wide (depths, groups, F/groups, row) -> (F, depths, H_out, W_out), a view."""
    rows = wide.reshape(wide.shape[0], g.f, g.out[1], g.padded[2])
    return rows[..., : g.out[2]].transpose(1, 0, 2, 3)


def _widened(dout: np.ndarray, g: ConvGeometry) -> np.ndarray:
    """dout (F, depths, H_out, W_out) in wide rows, junk zero -> (depths, groups, F/groups, row)."""
    depths = dout.shape[1]
    wide = workspace("flat_dout", (depths, g.f, g.out[1], g.padded[2]), dout.dtype)
    wide[..., g.out[2] :] = 0
    wide[..., : g.out[2]] = dout.transpose(1, 0, 2, 3)
    return wide.reshape(depths, g.groups, g.f_per_group, -1)


def _input_gradient(g: ConvGeometry, dout: np.ndarray) -> tuple[ConvGeometry, np.ndarray]:
    """The convolution whose output is dx: dout padded by the kernel's reach less the layer's
    padding, on each side. Where the layer's padding exceeds the reach, the outputs there read
    only padding and send nothing back: dout is cropped instead.
    """
    pads: list[Sides] = []
    kept = []
    for (begin, end), k, d, o in zip(g.pads, g.kernel, g.dilation, g.out, strict=True):
        reach = d * (k - 1)
        pads.append((max(0, reach - begin), max(0, reach - end)))
        kept.append(slice(max(0, begin - reach), o - max(0, end - reach)))
    dout = dout[(slice(None), slice(None), *kept)]
    gradient = replace(
        g,
        c=g.f,
        f=g.c,
        size=dout.shape[2:],
        pads=tuple(pads),
        out=g.size,
    )
    return gradient, dout
