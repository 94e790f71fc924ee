"""Stride-1 convolutions of any rank by shifted runs of a flat padded image.

Flatten each zero-padded channel; kernel offset (a, i, j) is then a constant shift
``a*dd*H_pad*W_pad + i*dh*W_pad + j*dw`` of it, and the columns of one offset for a block of
outputs are one contiguous run. The outputs are computed on the padded grid (``H_pad*W_pad``
positions per output depth instead of ``H_out*W_out``): the extra positions are junk, cropped
after the GEMM. This is :mod:`.layout`'s wide rows in every spatial axis; it is what volumes
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

# Columns of one block, in bytes: small enough for the GEMM to read them back from the cache
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

    Padded x and padded dout (the input gradient is gathered from it), one block of
    columns with its wide output and wide dout, both results and dw's work. Sizes are
    taken at the larger of the layer and its input-gradient convolution, per axis.
    """
    g = geometry
    reach = [d * (k - 1) for d, k in zip(g.dilation, g.kernel, strict=True)]
    grid = [max(p, o + 2 * r) for p, o, r in zip(g.padded, g.out, reach, strict=True)]
    depths, per_depth = max(g.out[0], g.size[0]), math.prod(grid[1:])
    channels, taps = max(g.c, g.f), math.prod(g.kernel)
    # Counted in float32 elements, more of them per block than float64 fits.
    block = min(depths, max(1, BLOCK_BYTES // (4 * channels * taps * per_depth)))
    slack = sum(r * math.prod(grid[axis + 1 :]) for axis, r in enumerate(reach) if axis > 0)
    canvases = g.n * (g.c + g.f) * math.prod(grid) + 2 * slack
    blocks = (channels * taps + 2 * channels) * block * per_depth
    results = g.n * (g.f * math.prod(g.out) + 2 * g.c * math.prod(g.size))
    return canvases + blocks + results + 4 * g.f * g.c_per_group * taps


def forward(
    x: np.ndarray, w: np.ndarray, b: np.ndarray | None, geometry: ConvGeometry
) -> np.ndarray:
    """x (N, C, *size), w (F, C/groups, *kernel), b (F,) or None -> out (N, F, *out)."""
    g = geometry
    w_rows = w.reshape(g.groups, g.f_per_group, g.col_rows)
    out = np.empty(g.out_shape, dtype=x.dtype)
    grid = _grid(g)
    for n, depths, cols in _columns(x, g, "flat_x"):
        wide = workspace("flat_out", (g.groups, g.f_per_group, cols.shape[-1]), x.dtype)
        np.matmul(w_rows, cols, out=wide)
        out[n, :, depths] = _crop(wide, g, grid)
    if b is not None:
        out += b.reshape(-1, *(1,) * g.rank)
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
    grid = _grid(g)
    dw_rows = np.zeros((g.groups, g.f_per_group, g.col_rows), dtype=x.dtype)
    product = np.empty_like(dw_rows)
    for n, depths, cols in _columns(x, g, "flat_x"):
        dout_wide = _widened(dout[n, :, depths], g, grid)
        np.matmul(dout_wide, cols.transpose(0, 2, 1), out=product)
        dw_rows += product
    return input_gradient(dout, w, g), dw_rows.reshape(w.shape), db


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


def _grid(g: ConvGeometry) -> tuple[int, ...]:
    """The padded grid the outputs are computed on: (H_pad, W_pad) past the depth axis."""
    return g.padded[1:]


def _columns(x: np.ndarray, g: ConvGeometry, slot: str) -> Iterator[tuple[int, slice, np.ndarray]]:
    """For each image and block of output depths: the block's columns.

    -> (image, depths, cols (groups, C/groups*prod(kernel), depths*prod(grid))). cols lives
    in a work buffer, overwritten by the next block.
    """
    flat = _canvas(x, g, slot)
    itemsize = x.dtype.itemsize
    grid = _grid(g)
    run_per_depth = math.prod(grid)
    volume = g.padded[0] * run_per_depth
    per_depth = g.c * math.prod(g.kernel) * run_per_depth * itemsize
    step = max(1, BLOCK_BYTES // per_depth)
    # Element strides of one kernel offset's shift, per spatial axis, and of a channel.
    axis_strides = [math.prod(g.padded[k + 1 :]) for k in range(g.rank)]
    tap_strides = tuple(d * s for d, s in zip(g.dilation, axis_strides, strict=True))
    for n in range(g.n):
        for start in range(0, g.out[0], step):
            depths = slice(start, min(start + step, g.out[0]))
            run = (depths.stop - depths.start) * run_per_depth
            cols = workspace("flat_cols", (g.c, *g.kernel, run), x.dtype)
            offset = (n * g.c * volume + start * run_per_depth) * itemsize
            fields = np.ndarray(
                cols.shape,
                x.dtype,
                flat,
                offset=offset,
                strides=tuple(s * itemsize for s in (volume, *tap_strides, 1)),
            )
            np.copyto(cols, fields)
            yield n, depths, cols.reshape(g.groups, g.col_rows, run)


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


def _crop(wide: np.ndarray, g: ConvGeometry, grid: tuple[int, ...]) -> np.ndarray:
    """wide (groups, F/groups, depths*prod(grid)) -> (F, depths, *out[1:]), a view."""
    blocks = wide.reshape(g.f, -1, *grid)
    return blocks[(slice(None), slice(None), *(slice(0, o) for o in g.out[1:]))]


def _widened(dout: np.ndarray, g: ConvGeometry, grid: tuple[int, ...]) -> np.ndarray:
    """dout (F, depths, *out[1:]) on the padded grid, junk zero -> (groups, F/groups, run)."""
    wide = workspace("flat_dout", (g.f, dout.shape[1], *grid), dout.dtype)
    wide.fill(0)
    wide[(slice(None), slice(None), *(slice(0, o) for o in g.out[1:]))] = dout
    return wide.reshape(g.groups, g.f_per_group, -1)


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
