"""Depthwise convolution (one input channel per filter, stride 1) as small per-plane BLAS calls.

Each filter sees one channel, so its "GEMM" would be a single row: a matrix product over the
channels buys nothing. Within one plane, though, BLAS can do the work if its matrices' rows are
the plane shifted: BLAS needs a row stride at least a row long, so each plane is copied KW
times, shifted by 0, d, 2d... columns (one flat copy each: rows are R long on both sides, so a
shift of columns is a shift of the flat plane, and the columns it wraps are zeroed). Then per
plane (:class:`RowSums`): one (KH, KW) @ (KW, span) GEMM applies every kernel row to every row
of the copies, and one gemv with a vector of ones sums kernel row i read i*dilation rows
further on (those reads lie a whole copy apart in the GEMM's result); the vector's last
element is the plane's bias, times a row of ones. A group of planes is one ``np.matmul`` of
each kind, in work buffers of GROUP_BYTES kept per thread (they come back from the caches).

Passes over a plane, forward: the copies (read 1, write KW), the GEMM (read KW, write KH), the
gemv (read KH + 1, write 1). The former gemv per kernel row (read KW, write 1, KH times), an
``np.add.reduce`` of the kernel rows and the bias added over the output took, in interleaved
runs on this machine's kind (8x64x56x56, 3x3, one thread, fastest CPU time), 3.03 against
1.94 ms forward in float32 and 7.9 against 4.4 in float64; backward 6.0 against 4.8 and 13.6
against 10.7. One multiply and one add per tap over a padded plane (17 ufunc passes for 3x3)
had taken 4.0 ms forward. The weight gradient is the same copies of x times dout: one gemv
per kernel row and plane. The input gradient is the correlation of dout, shifted the other
way, with the flipped kernel.

One thread. Sharing the groups of planes with a helper thread (a persistent one, with work
buffers of its own, each group to the first thread that asks) did not pay here: NumPy releases
the GIL for each copy and matmul, and two threads that each compute a whole forward pass of
4x64x56x56 at once took 0.97-1.03 ms a pass against 0.90 alone, but within one pass each
thread's groups took some 1.4 times as long as alone (a GEMM and gemv 104 against 74 us, the
copies 50 against 35). Interleaved, 8x64x56x56 float32 forward, on a machine shared with other
sessions: fastest call 1.17-1.25 ms shared against 1.72-1.83 alone in the quietest moments,
but the medians were 2.3-2.7 against 2.1-2.2 (at load 1.2: 2.65 against 2.24), and the
backward pass was never faster. Grouping the planes by channel, so that one GEMM spans every
image of a channel, gained nothing (a (3, 3) @ (3, 8 x 3248) product took as long as eight of
(3, 3) @ (3, 3248)).
"""

from __future__ import annotations

from dataclasses import dataclass, replace

import numpy as np

from .._geometry import ConvGeometry
from . import im2col
from .layout import PATH_FUNCTIONS, workspace

__all__ = [*PATH_FUNCTIONS, "as_depthwise", "is_depthwise"]

# Bytes of the work buffers of one group of planes (KW shifted copies and KH kernel-row sums
# per plane). Interleaved runs on this machine's kind (8x64x56x56, 3x3, one thread, fastest
# CPU time; the L2 cache is 1 MiB a core, the L3 32 MiB): float32 forward 1.87 ms at 1 MiB
# and 2 MiB, 2.27 against 2.14 at the median; float64 4.17 against 3.91; float32 backward
# 4.85 against 4.65. Larger groups mean fewer NumPy calls (some 5 us of them a group), and
# their buffers come back from the L3 fast enough.
GROUP_BYTES = 2 << 20


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
    shifted copies and KH kernel-row sums of each plane of a group of at most 2 MiB), counted
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
    return _forward_planes(repeated, np.ascontiguousarray(w), b, g)


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

    def group_step(self, planes: int, itemsize: int) -> int:
        """Planes in a group: as many of ``planes`` as have work buffers within GROUP_BYTES."""
        per_plane = (self.kernel[1] + self.kernel[0]) * self.span * itemsize
        return min(planes, max(1, GROUP_BYTES // per_plane))


def _forward_planes(
    x: np.ndarray, w: np.ndarray, b: np.ndarray | None, geometry: ConvGeometry
) -> np.ndarray:
    """x (N, C, H, W), w (C, 1, KH, KW), b (C,) or None -> out (N, C, H_out, W_out),
    for C = F = groups."""
    g = geometry
    c = Correlation.forward_of(g)
    planes = x.reshape(g.n * g.c, g.height, g.width)
    taps = _plane_taps(w, g.n)
    out = np.empty((g.n * g.c, g.h_out, g.w_out), dtype=x.dtype)
    vectors = _sum_vectors(b, g.kernel[0], g.n, x.dtype)
    step = c.group_step(g.n * g.c, x.dtype.itemsize)
    copies = ShiftedCopies.taken(c, step, x.dtype, "dw_copies")
    sums = RowSums.taken(c, step, x.dtype, "dw_rows")
    for group in _groups(g.n * g.c, step):
        vector = vectors if b is None else vectors[group]
        sums.into(copies.of(planes[group]), taps[group], vector, out[group])
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
    ones = _sum_vectors(None, g.kernel[0], g.n, x.dtype)
    step = c.group_step(g.n * g.c, x.dtype.itemsize)
    copies = ShiftedCopies.taken(c, step, x.dtype, "dw_copies")
    dout_copies = ShiftedCopies.taken(dx_c, step, x.dtype, "dw_dout_copies")
    sums = RowSums.taken(dx_c, step, x.dtype, "dw_rows")
    for group in _groups(g.n * g.c, step):
        dout_wide = _wide_rows(dout_planes[group], c.row, "dw_dout")
        _tap_products(copies.of(planes[group]), dout_wide, c, plane_dw[group])
        sums.into(dout_copies.of(dout_planes[group]), flipped[group], ones, dx[group])
    dw = plane_dw.reshape(g.n, g.c, -1).sum(axis=0)
    return dx.reshape(g.x_shape), dw.reshape(w.shape)


def _groups(planes: int, step: int) -> list[slice]:
    """``planes`` planes in groups of ``step`` (the last one shorter)."""
    return [slice(start, min(start + step, planes)) for start in range(0, planes, step)]


def _plane_taps(w: np.ndarray, images: int) -> np.ndarray:
    """w (C, 1, KH, KW) -> (N*C, KH, KW): the kernel of each plane of the batch."""
    return np.tile(w.reshape(w.shape[0], w.shape[2], w.shape[3]), (images, 1, 1))


def _sum_vectors(b: np.ndarray | None, kh: int, images: int, dtype: np.dtype) -> np.ndarray:
    """The vectors that sum KH kernel rows: (1, 1, KH) ones, or with a bias b (C,) the ones
    and then each plane's bias, (N*C, 1, KH + 1)."""
    if b is None:
        return np.ones((1, 1, kh), dtype)
    vectors = np.ones((images * b.shape[0], 1, kh + 1), dtype)
    vectors[:, 0, kh] = np.tile(b, images)
    return vectors


def _wide_rows(planes: np.ndarray, row: int, slot: str) -> np.ndarray:
    """planes (p, H, W) -> (p, H*row): rows widened to ``row`` columns, the new ones zero."""
    p, h, width = planes.shape
    if width == row:
        return planes.reshape(p, h * row)
    wide = workspace(slot, (p, h, row), planes.dtype)
    wide[:, :, width:] = 0
    wide[:, :, :width] = planes
    return wide.reshape(p, h * row)


@dataclass(frozen=True)
class ShiftedCopies:
    """The KW shifted copies of a group of planes at a time, in a work buffer of their own.

    copies[:, j] in rows ``c.row`` long: row a, column b holds plane[a - top, b + j*dw - left],
    zero outside the plane, so that tap (i, j) reads copies[:, j] from row i*dh on. Copy j is
    the flat plane shifted by ``top*row + left - j*dw``: the rows above and below the plane's
    are the same zeros for every group, so they are zeroed once, when the buffer is taken.
    """

    correlation: Correlation
    buffer: np.ndarray  # (planes, KW, span)
    # Where the flat planes go: (a view of the buffer (planes, copies, n), columns of flat)
    writes: tuple[tuple[np.ndarray, slice], ...]
    # Columns that a shift wraps from one row's end onto the next row: zeroed after each write.
    wrapped: tuple[np.ndarray, ...]

    @classmethod
    def taken(cls, c: Correlation, planes: int, dtype: np.dtype, slot: str) -> ShiftedCopies:
        """Copies of up to ``planes`` planes at a time in work buffer ``slot``."""
        kw, row, span = c.kernel[1], c.row, c.span
        buffer = workspace(slot, (planes, kw, span), dtype)
        n = c.size[0] * row
        shifts = [c.top * row + c.left - j * c.dilation[1] for j in range(kw)]
        clipped = shifts[-1] < 0 or shifts[0] + n > span
        writes = []
        for j, shift in enumerate(shifts):
            start = min(max(shift, 0), span)
            stop = max(min(shift + n, span), start)
            buffer[:, j, :start] = 0
            buffer[:, j, stop:] = 0
            if clipped and start < stop:
                target = buffer[:, j : j + 1, start:stop]
                writes.append((target, slice(start - shift, stop - shift)))
        if not clipped:
            # The shifts step by -dw: every copy is one strided assignment (a group takes a
            # few microseconds, so the calls' overhead counts).
            strides = (span * kw, span - c.dilation[1], 1)
            writes.append((_strided(buffer, shifts[0], (planes, kw, n), strides), slice(None)))
        grid = buffer.reshape(planes, kw, -1, row)
        wrapped = []
        for j, shift in enumerate(shifts):
            first = shift - c.top * row  # where the plane's column 0 lands
            if first > 0:
                wrapped.append(grid[:, j, :, :first])
            if first + c.size[1] < row:
                wrapped.append(grid[:, j, :, max(first + c.size[1], 0) :])
        return cls(c, buffer, tuple(writes), tuple(wrapped))

    def of(self, planes: np.ndarray) -> np.ndarray:
        """planes (p, H_in, W_in), p at most the buffer's -> copies (p, KW, span), a view."""
        p = planes.shape[0]
        flat = _wide_rows(planes, self.correlation.row, "dw_wide")[:, None, :]
        for target, columns in self.writes:
            target[:p] = flat[:, :, columns]
        for wrapped in self.wrapped:
            wrapped[:p] = 0
        return self.buffer[:p]


def _strided(
    array: np.ndarray, offset: int, shape: tuple[int, ...], strides: tuple[int, ...]
) -> np.ndarray:
    """A view of C-contiguous ``array`` from element ``offset``, strides counted in elements."""
    item = array.itemsize
    return np.ndarray(shape, array.dtype, array, offset * item, tuple(s * item for s in strides))


def _windows(copies: np.ndarray, c: Correlation) -> np.ndarray:
    """copies (p, KW, span) -> (p, KH, KW, run): the (KW, run) matrix of each kernel row."""
    p, kw, span = copies.shape
    shape = (p, c.kernel[0], kw, c.run)
    return _strided(copies, 0, shape, (kw * span, c.dilation[0] * c.row, span, 1))


@dataclass(frozen=True)
class RowSums:
    """Kernel rows applied to the shifted copies of a group of planes, and summed.

    One small GEMM per plane, (KH, KW) taps @ (KW, span) copies, applies every kernel row to
    every row of the copies, reading each copy once (a gemv per kernel row read each copy KH
    times). Kernel row i is then read from row i*dh on: in ``rows`` those reads lie
    ``span + dh*row`` apart, a matrix BLAS takes, and one gemv per plane sums them. Its
    vector may hold one more element, the plane's bias: it multiplies a row of ones kept after
    the kernel rows, so the bias costs no pass over the output of its own.
    """

    correlation: Correlation
    rows: np.ndarray  # (planes, KH, span), a view of the work buffer
    shifted: np.ndarray  # (planes, KH + 1, run): the reads of each kernel row, then the ones
    total: np.ndarray | None  # (planes, 1, run) in wide rows, cropped into out; None if no junk

    @classmethod
    def taken(cls, c: Correlation, planes: int, dtype: np.dtype, slot: str) -> RowSums:
        """Sums of up to ``planes`` planes at a time in work buffer ``slot``."""
        kh, span, run = c.kernel[0], c.span, c.run
        apart = span + c.dilation[0] * c.row
        # each plane: KH rows of the GEMM, then from kh*apart on, the ones
        plane = kh * apart + run
        buffer = workspace(slot, (planes, plane), dtype)
        _strided(buffer, kh * apart, (planes, run), (plane, 1)).fill(1)
        rows = _strided(buffer, 0, (planes, kh, span), (plane, span, 1))
        shifted = _strided(buffer, 0, (planes, kh + 1, run), (plane, apart, 1))
        total = None if c.row == c.out[1] else workspace(f"{slot}_sum", (planes, 1, run), dtype)
        return cls(c, rows, shifted, total)

    def into(
        self, copies: np.ndarray, taps: np.ndarray, vector: np.ndarray, out: np.ndarray
    ) -> None:
        """copies (p, KW, span), taps (p, KH, KW), vector (p or 1, 1, KH or KH + 1): ones,
        then the bias if any -> out (p, H_out, W_out), written in place."""
        p = copies.shape[0]
        rows = self.rows[:p]
        np.matmul(taps, copies, out=rows)
        shifted = self.shifted[:p, : vector.shape[2]]
        if self.total is None:
            np.matmul(vector, shifted, out=out.reshape(p, 1, -1))
            return
        total = self.total[:p]
        np.matmul(vector, shifted, out=total)
        c = self.correlation
        out[...] = total.reshape(p, c.out[0], c.row)[:, :, : c.out[1]]


def _tap_products(
    copies: np.ndarray, dout_wide: np.ndarray, c: Correlation, out: np.ndarray
) -> None:
    """dw of each plane: out (p, KH, KW) = <window of tap (i, j), dout_wide (p, run)>."""
    np.matmul(_windows(copies, c), dout_wide[:, None, :, None], out=out[..., None])
