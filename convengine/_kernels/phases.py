"""The input gradient of a strided planar convolution, gathered phase by phase.

col2im scatters every column gradient back with a strided read-modify-write add per kernel
offset. With stride s, the input pixels fall into s*s phases (row mod s, column mod s), and
the pixels of one phase are reached by a fixed subset of the kernel's offsets: each phase's
gradient is a stride-1 convolution of dout with that subset, flipped.

Taken where windows do not overlap (kernel no larger than the stride, as in patch embeddings
and their transposed "unpatchify" layers): each phase then has one offset per axis, a 1x1
convolution, which is one GEMM with no im2col at all. CPU time on one thread, dx of
8x64x56x56 from 2x2 stride 2: 3.1 against 4.2 ms (float32), 6.1 against 8.5 (float64). With
overlap, the phases copy dout once per offset of every phase (F channels) where col2im adds
once per offset (C channels): a tie on the upsample and strided benchmark layers, and ten
times slower on the 7x7 stride-2 stem, whose C is 3. (:mod:`.subpixel` computes all the
phases of a kernel a whole number of strides from one copy.)
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import replace

import numpy as np

from .._geometry import ConvGeometry
from . import im2col
from .layout import exchange_channels

__all__ = ["input_gradient", "supports", "work_elements"]

# The forward pass of one phase: (x, w, b, geometry) -> out, on whatever path suits it.
Forward = Callable[[np.ndarray, np.ndarray, np.ndarray | None, ConvGeometry], np.ndarray]


def supports(geometry: ConvGeometry) -> bool:
    """A strided planar geometry whose windows never overlap: one kernel offset per phase."""
    g = geometry
    return (
        g.rank == 2
        and any(s > 1 for s in g.stride)
        and all(
            s // math.gcd(s, d) >= k for s, d, k in zip(g.stride, g.dilation, g.kernel, strict=True)
        )
    )


def work_elements(geometry: ConvGeometry) -> int:
    """At most what :func:`.im2col.work_elements` counts: dx (a canvas), each phase's dout
    (at most dout) and its output (at most dx), and the phase's own forward pass, a 1x1
    convolution on a part of dout (the bound is loose here, kept one with the general path's).
    """
    return im2col.work_elements(geometry)


def input_gradient(
    dout: np.ndarray, w: np.ndarray, geometry: ConvGeometry, forward: Forward
) -> np.ndarray:
    """dout (N, F, H_out, W_out), w (F, C/groups, KH, KW) -> dx (N, C, H, W), for a core
    planar geometry; ``forward`` computes each phase's stride-1 convolution."""
    g = geometry
    dx = np.empty(g.x_shape, dtype=dout.dtype)
    for row in range(g.stride[0]):
        rows = _phase_axis(g, 0, row)
        for column in range(g.stride[1]):
            columns = _phase_axis(g, 1, column)
            if rows.count == 0 or columns.count == 0:
                continue
            target = dx[:, :, rows.first :: g.stride[0], columns.first :: g.stride[1]]
            if not rows.taps or not columns.taps:  # no kernel offset reaches this phase
                target[...] = 0
                continue
            sub_dout = dout[:, :, rows.kept, columns.kept]
            sub_w = exchange_channels(w[:, :, rows.taps][:, :, :, columns.taps], g)
            phase = replace(
                g,
                n=g.n,
                c=g.f,
                f=g.c,
                size=sub_dout.shape[2:],
                kernel=(len(rows.taps), len(columns.taps)),
                stride=(1, 1),
                dilation=(rows.dilation, columns.dilation),
                pads=(rows.pads, columns.pads),
                out=(rows.count, columns.count),
            )
            target[...] = forward(sub_dout, sub_w, None, phase)
    return dx


class _PhaseAxis:
    """One axis of one phase: which input pixels, which kernel offsets, how dout is framed."""

    def __init__(
        self,
        first: int,
        count: int,
        taps: list[int],
        dilation: int,
        kept: slice,
        pads: tuple[int, int],
    ) -> None:
        self.first, self.count, self.taps, self.dilation = first, count, taps, dilation
        self.kept, self.pads = kept, pads


def _phase_axis(g: ConvGeometry, axis: int, residue: int) -> _PhaseAxis:
    """Axis ``axis`` of the phase of padded positions ``residue + stride*u``.

    The input pixels of the phase are those positions inside the image; kernel offset k reaches
    them when ``k*dilation = residue (mod stride)``, from output ``u - (k*dilation - residue)/s``.
    """
    s, d, k = g.stride[axis], g.dilation[axis], g.kernel[axis]
    begin = g.pads[axis][0]
    size, out = g.size[axis], g.out[axis]
    # Phase positions u with begin <= residue + s*u < begin + size.
    u0 = -(-(begin - residue) // s)
    u1 = (begin + size - 1 - residue) // s
    count = max(0, u1 - u0 + 1)
    first = residue + s * u0 - begin
    taps = [t for t in range(k) if (t * d - residue) % s == 0]
    spacing = d // math.gcd(s, d)
    if not taps or count == 0:
        return _PhaseAxis(first, count, [], spacing, slice(0, 0), (0, 0))
    shifts = [(t * d - residue) // s for t in taps]  # increasing with t
    # Output v of the stride-1 convolution reads padded dout at v + j*spacing for sub-tap j
    # (taps in decreasing order): dout index u0 + v - shift, so the padding before is
    # max(shift) - u0 and the reads end at count + (len-1)*spacing.
    before = max(shifts) - u0
    length = count + (len(taps) - 1) * spacing
    after = length - before - out
    kept = slice(max(0, -before), out + min(0, after))
    return _PhaseAxis(first, count, taps[::-1], spacing, kept, (max(0, before), max(0, after)))
