"""Depthwise convolution (one input channel per filter, stride 1) as small matrix-vector products.

Each filter sees one channel, so its "GEMM" would be a single row: a matrix product over the
channels buys nothing. Within one plane, though, a kernel row is a product of a (KW,) vector of
taps with a (KW, H_out*R) matrix whose rows are the plane shifted by 0, d, 2d... columns, if
those shifted copies lie a whole plane apart (BLAS needs a row stride at least a row long).
So each plane is copied KW times, shifted (one flat copy each: rows are R long on both sides,
so a shift of columns is a shift of the flat plane, and the columns it wraps are zeroed), and
then kernel row i is the same matrix read i*dilation rows further on. One ``np.matmul`` does
every kernel row of a group of planes (a BLAS gemv each, which reads each copy once and keeps
its running sum in L1) and one ``np.add.reduce`` sums the kernel rows.

Against one multiply and one add per tap over a padded plane (17 ufunc passes for 3x3, each
reading or writing the group once more), interleaved runs on this machine's kind (8x64x56x56,
3x3, float32, fastest calls on a loaded machine) took 2.7 against 4.0 ms forward and 5.1
against 8.0 ms backward. The weight gradient is the same copies of x times dout:
one gemv per kernel row and plane. The input gradient is the correlation of dout, shifted the
other way, with the flipped kernel.

One thread: sharing the groups out among two threads gained nothing, neither with the former
multiply-adds (4.1 against 4.4 ms at best, worse at the median) nor with these gemvs (2.64
against 2.56 ms at best, 2.84 against 2.69 ms at the median, on a machine shared with others).
Nor did grouping the planes by channel, so that one gemv spans every image of a channel
(forward 3.5 against 2.75 ms CPU at best: the copies then read planes a batch apart).
"""

from __future__ import annotations

from dataclasses import dataclass, replace

import numpy as np

from .._geometry import ConvGeometry
from . import im2col
from .layout import PATH_FUNCTIONS, workspace

__all__ = [*PATH_FUNCTIONS, "as_depthwise", "is_depthwise"]

# Bytes of the work buffers of one group of planes (KW shifted copies and KH kernel-row sums
# per plane). Forward CPU time on this machine's kind (8x64x56x56, 3x3, one thread, best of
# 15), float32: 0.5 MiB 3.1 ms, 1 MiB 2.6 ms, 2 MiB 3.3 ms, 4 MiB 4.0 ms; float64: 0.5 MiB
# 7.5 ms, 1 MiB 6.5 ms, 2 MiB 8.4 ms. At 1 MiB the buffers stay in the 2 MiB L2, and a
# group has few enough calls for their overhead not to count.
GROUP_BYTES = 1 << 20


def is_depthwise(geometry: ConvGeometry) -> bool:
    """One input channel per group: each filter sees one channel (the depthwise paths)."""
    return geometry.c_per_group == 1 and geometry.groups > 1


def supports(geometry: ConvGeometry) -> bool:
    """Whether this path computes ``geometry``: one channel per filter, stride 1.

    The backward passes also need finite x and w (the selector's to check): padding zeros
    meet the taps and dout, and inf * 0 would leak NaN into real pixels.
    """
    return is_depthwise(geometry) and geometry.stride == (1, 1)


def work_elements(geometry: ConvGeometry) -> int:
    """An upper bound on the array elements one pass of a planar depthwise layer allocates.

    What :func:`.im2col.work_elements` counts (the canvases of the per-tap fallback), and
    besides: dx summed over the filters of a channel, dw per plane, and the work buffers (KW
    shifted copies and KH kernel-row sums of each plane of a group of at most 1 MiB), counted
    as five planes per plane of the batch, of the largest plane: the padded dout of the input
    gradient, padded by the kernel's reach beyond the input's own padding. The work-bound tests
    check it, kernels up to 9x9 included.
    """
    g = geometry
    h_pad, w_pad = g.padded_hw
    reach_h = g.dilation[0] * (g.kernel[0] - 1)
    reach_w = g.dilation[1] * (g.kernel[1] - 1)
    plane = (h_pad + reach_h + 1) * (w_pad + reach_w)
    taps = g.kernel[0] * g.kernel[1]
    repeated = g.n * g.c * g.height * g.width + g.n * g.f * (taps + 5 * plane)
    return im2col.work_elements(g) + repeated


def forward(
    x: np.ndarray, w: np.ndarray, b: np.ndarray | None, geometry: ConvGeometry
) -> np.ndarray:
    """x (N, C, H, W), w (F, 1, KH, KW), b (F,) or None -> out (N, F, H_out, W_out)."""
    repeated, g = as_depthwise(np.ascontiguousarray(x), geometry)
    out = _forward_planes(repeated, np.ascontiguousarray(w), g)
    if b is not None:
        out += b[:, None, None]
    return out


def backward(
    dout: np.ndarray, x: np.ndarray, w: np.ndarray, geometry: ConvGeometry, wide: bool = True
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """dout (N, F, H_out, W_out), x (N, C, H, W), w (F, 1, KH, KW) -> dx, dw, db.

    For finite x and w only (see :func:`supports`); ``wide`` is ignored (rows here are
    always wide, and the junk is cropped).
    """
    x, dout = np.ascontiguousarray(x), np.ascontiguousarray(dout)
    repeated, g = as_depthwise(x, geometry)
    dx, dw = _backward_planes(dout, repeated, np.ascontiguousarray(w), g)
    if geometry.f_per_group > 1:
        dx = dx.reshape(g.n, geometry.c, geometry.f_per_group, g.height, g.width).sum(axis=2)
    return dx, dw, dout.sum(axis=(0, 2, 3))


def input_gradient(
    dout: np.ndarray, w: np.ndarray, geometry: ConvGeometry, wide: bool = True
) -> np.ndarray:
    """dx alone (computed with dw, of a zero x): dout, w -> dx (N, C, H, W)."""
    dout = np.ascontiguousarray(dout)
    return backward(dout, np.zeros(geometry.x_shape, dtype=dout.dtype), w, geometry)[0]


def weight_gradient(
    dout: np.ndarray, x: np.ndarray, w: np.ndarray, geometry: ConvGeometry, wide: bool = True
) -> np.ndarray:
    """dw alone (computed with dx); shapes as in :func:`backward`."""
    return backward(dout, x, w, geometry)[1]


def as_depthwise(x: np.ndarray, geometry: ConvGeometry) -> tuple[np.ndarray, ConvGeometry]:
    """One input channel per filter: x repeated for each group's F/groups filters.

    -> (N, F, H, W) and the geometry of that convolution, with groups = C = F.
    """
    if geometry.f_per_group == 1:
        return x, geometry
    repeated = np.repeat(x, geometry.f_per_group, axis=1)
    return repeated, replace(geometry, c=geometry.f, groups=geometry.f)


@dataclass(frozen=True)
class Correlation:
    """out[h, w] = sum over (i, j) of taps[i, j] * plane[h + i*dh - top, w + j*dw - left],
    zero outside the plane: the sizes of one depthwise pass over planes (H_in, W_in).

    Rows are ``row`` long on both sides (wide rows: junk columns past W_out are cropped).
    """

    size: tuple[int, int]
    out: tuple[int, int]
    kernel: tuple[int, ...]  # (KH, KW)
    dilation: tuple[int, ...]  # (dh, dw)
    top: int
    left: int

    @classmethod
    def forward_of(cls, g: ConvGeometry) -> Correlation:
        """The forward pass of ``g``: x (H, W) -> out (H_out, W_out)."""
        return cls(
            (g.height, g.width), (g.h_out, g.w_out), g.kernel, g.dilation, g.pad_h[0], g.pad_w[0]
        )

    @classmethod
    def input_gradient_of(cls, g: ConvGeometry) -> Correlation:
        """dx of ``g`` as a correlation of dout (H_out, W_out) -> dx (H, W), flipped taps."""
        reach_h = g.dilation[0] * (g.kernel[0] - 1)
        reach_w = g.dilation[1] * (g.kernel[1] - 1)
        return cls(
            (g.h_out, g.w_out),
            (g.height, g.width),
            g.kernel,
            g.dilation,
            reach_h - g.pad_h[0],
            reach_w - g.pad_w[0],
        )

    @property
    def row(self) -> int:
        return max(self.size[1], self.out[1])

    @property
    def run(self) -> int:
        """Elements of one output plane in wide rows."""
        return self.out[0] * self.row

    @property
    def span(self) -> int:
        """Elements of one shifted copy: every row a kernel row reads."""
        return (self.out[0] + self.dilation[0] * (self.kernel[0] - 1)) * self.row

    def group_planes(self, planes: int, itemsize: int) -> list[slice]:
        """Slices of ``planes`` planes whose work buffers fit in ``GROUP_BYTES``."""
        per_plane = (self.kernel[1] * self.span + self.kernel[0] * self.run) * itemsize
        step = max(1, GROUP_BYTES // per_plane)
        return [slice(start, min(start + step, planes)) for start in range(0, planes, step)]


def _forward_planes(x: np.ndarray, w: np.ndarray, geometry: ConvGeometry) -> np.ndarray:
    """x (N, C, H, W), w (C, 1, KH, KW) -> out (N, C, H_out, W_out), for C = F = groups."""
    g = geometry
    c = Correlation.forward_of(g)
    planes = x.reshape(g.n * g.c, g.height, g.width)
    taps = _plane_taps(w, g.n)
    out = np.empty((g.n * g.c, g.h_out, g.w_out), dtype=x.dtype)
    for group in c.group_planes(g.n * g.c, x.dtype.itemsize):
        copies = _shifted_copies(planes[group], c, "dw_copies")
        _sum_of_rows(copies, taps[group], c, out[group])
    return out.reshape(g.out_shape)


def _backward_planes(
    dout: np.ndarray, x: np.ndarray, w: np.ndarray, geometry: ConvGeometry
) -> tuple[np.ndarray, np.ndarray]:
    """dout (N, C, H_out, W_out), x (N, C, H, W), w (C, 1, KH, KW) -> dx (N, C, H, W), dw."""
    g = geometry
    c, dx_c = Correlation.forward_of(g), Correlation.input_gradient_of(g)
    planes = x.reshape(g.n * g.c, g.height, g.width)
    dout_planes = dout.reshape(g.n * g.c, g.h_out, g.w_out)
    flipped = _plane_taps(w[:, :, ::-1, ::-1], g.n)
    dx = np.empty_like(planes)
    # dw of every plane, summed over the batch at the end.
    plane_dw = np.empty((g.n * g.c, *g.kernel), dtype=x.dtype)
    for group in c.group_planes(g.n * g.c, x.dtype.itemsize):
        copies = _shifted_copies(planes[group], c, "dw_copies")
        _tap_products(copies, _wide_rows(dout_planes[group], c.row, "dw_dout"), c, plane_dw[group])
        dout_copies = _shifted_copies(dout_planes[group], dx_c, "dw_copies")
        _sum_of_rows(dout_copies, flipped[group], dx_c, dx[group])
    dw = plane_dw.reshape(g.n, g.c, -1).sum(axis=0)
    return dx.reshape(g.x_shape), dw.reshape(w.shape)


def _plane_taps(w: np.ndarray, images: int) -> np.ndarray:
    """w (C, 1, KH, KW) -> (N*C, KH, 1, KW): each kernel row of each plane a (1, KW) matrix."""
    rows = w.reshape(w.shape[0], w.shape[2], 1, w.shape[3])
    return np.tile(rows, (images, 1, 1, 1))


def _wide_rows(planes: np.ndarray, row: int, slot: str) -> np.ndarray:
    """planes (p, H, W) -> (p, H*row): rows widened to ``row`` columns, the new ones zero."""
    p, h, width = planes.shape
    if width == row:
        return planes.reshape(p, h * row)
    wide = workspace(slot, (p, h, row), planes.dtype)
    wide[:, :, width:] = 0
    wide[:, :, :width] = planes
    return wide.reshape(p, h * row)


def _shifted_copies(planes: np.ndarray, c: Correlation, slot: str) -> np.ndarray:
    """planes (p, H_in, W_in) -> copies (p, KW, span) in work buffer ``slot``.

    copies[:, j] in rows ``c.row`` long: row a, column b holds plane[a - top, b + j*dw - left],
    zero outside the plane, so that tap (i, j) reads copies[:, j] from row i*dh on.
    """
    p, _, w_in = planes.shape
    kw, row = c.kernel[1], c.row
    flat = _wide_rows(planes, row, "dw_wide")
    copies = workspace(slot, (p, kw, c.span), planes.dtype)
    # copy j is flat shifted right by shifts[j]; the shifts step by -dw, so where no copy is
    # clipped at either end all of them are one strided assignment (a few calls per group,
    # not a dozen: at a few microseconds a group, the calls' overhead counts).
    shifts = [c.top * row + c.left - j * c.dilation[1] for j in range(kw)]
    n = flat.shape[1]
    if shifts[-1] >= 0 and shifts[0] + n <= c.span:
        copies[:, :, : shifts[0]] = 0
        copies[:, :, shifts[-1] + n :] = 0
        _strided(copies, shifts[0], (p, kw, n), (c.span * kw, c.span - c.dilation[1], 1))[...] = (
            flat[:, None, :]
        )
    else:
        for j, shift in enumerate(shifts):
            _shifted_copy(flat, shift, copies[:, j])
    # A shift by columns wraps row ends onto their neighbours: zero what is outside the plane.
    grid = copies.reshape(p, kw, -1, row)
    for j, shift in enumerate(shifts):
        first = shift - c.top * row  # where the plane's column 0 lands
        if first > 0:
            grid[:, j, :, :first] = 0
        if first + w_in < row:
            grid[:, j, :, max(first + w_in, 0) :] = 0
    return copies


def _strided(
    array: np.ndarray, offset: int, shape: tuple[int, ...], strides: tuple[int, ...]
) -> np.ndarray:
    """A view of C-contiguous ``array`` from element ``offset``, strides counted in elements."""
    item = array.itemsize
    return np.ndarray(shape, array.dtype, array, offset * item, tuple(s * item for s in strides))


def _shifted_copy(flat: np.ndarray, shift: int, out: np.ndarray) -> None:
    """out[:, k] = flat[:, k - shift], zero where that is outside flat; flat (p, n), out (p, m)."""
    n, m = flat.shape[1], out.shape[1]
    start, stop = min(max(shift, 0), m), max(min(shift + n, m), 0)
    out[:, :start] = 0
    out[:, stop:] = 0
    if start < stop:
        out[:, start:stop] = flat[:, start - shift : stop - shift]


def _windows(copies: np.ndarray, c: Correlation) -> np.ndarray:
    """copies (p, KW, span) -> (p, KH, KW, run): the (KW, run) matrix of each kernel row."""
    p, kw, span = copies.shape
    shape = (p, c.kernel[0], kw, c.run)
    return _strided(copies, 0, shape, (kw * span, c.dilation[0] * c.row, span, 1))


def _sum_of_rows(copies: np.ndarray, taps: np.ndarray, c: Correlation, out: np.ndarray) -> None:
    """copies (p, KW, span), taps (p, KH, 1, KW) -> out (p, H_out, W_out), written in place."""
    p = copies.shape[0]
    # row_sums: (p, KH, 1, run), one gemv per plane and kernel row
    row_sums = workspace("dw_rows", (p, c.kernel[0], 1, c.run), copies.dtype)
    np.matmul(taps, _windows(copies, c), out=row_sums)
    if c.row == c.out[1]:
        np.add.reduce(row_sums[:, :, 0], axis=1, out=out.reshape(p, c.run))
        return
    total = workspace("dw_sum", (p, c.run), copies.dtype)
    np.add.reduce(row_sums[:, :, 0], axis=1, out=total)
    out[...] = total.reshape(p, c.out[0], c.row)[:, :, : c.out[1]]


def _tap_products(
    copies: np.ndarray, dout_wide: np.ndarray, c: Correlation, out: np.ndarray
) -> None:
    """dw of each plane: out (p, KH, KW) = <window of tap (i, j), dout_wide (p, run)>."""
    np.matmul(_windows(copies, c), dout_wide[:, None, :, None], out=out[..., None])
