"""The input gradient of a strided planar convolution whose kernel is a whole number of strides
(4x4 stride 2, 6x6 stride 3: the transposed layers that upsample): its sub-pixel decomposition.

col2im adds each kernel offset's column gradients onto the input gradient, and with a kernel
larger than the stride those adds overlap. Split the padded input positions by phase instead:
position ``P = s*q + r`` is reached from output ``u`` by offset ``i = P - s*u``, so with
``K = m*s`` exactly the offsets ``i = s*t + r`` (t < m) reach it, from ``u = q - t``. Phase r
at place q is ``sum_t dout[q - t] * w[s*t + r]``: with dout padded by ``m - 1`` on both sides
and ``j = m - 1 - t``, a stride-1 correlation of the padded dout with the phase's sub-kernel,
flipped. Every phase reads the same ``m x m`` windows, so all of them are one stride-1 forward
pass with the phases' sub-kernels stacked as filters (:func:`stacked_geometry`), on whatever
path suits it; its output is the input gradient split by phase (an
:class:`.im2col.PhaseCanvas`), copied out once. No scatter-add, no column gradients.

The padding of dout meets w: finite w only (inf * 0 would be NaN where the oracle adds
nothing). CPU time on one thread of the public transposed forward, 4x4 stride 2 padding 1,
against im2col: the upsample benchmark layer (8x128x28x28 -> 64 channels) float32 21.0
against 24.7 ms, float64 39.7 against 46.2; 16x64x32x32 -> 32, 14.4 against 21.2 and 29.8
against 39.2; 6x6 stride 3, 8x64x20x20 -> 32, 7.0 against 10.3 and 13.1 against 18.1; 6x6
stride 2, whose stacked pass is 3x3 and takes Winograd, 8x64x28x28 -> 32, 12.1 against 17.1
and 16.8 against 30.4.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import replace

import numpy as np

from .._geometry import ConvGeometry
from .im2col import PhaseCanvas

__all__ = [
    "MAX_EXTRA_MULTIPLY_ADDS",
    "Forward",
    "input_gradient",
    "stacked_geometry",
    "supports",
    "work_elements",
]

# The stacked pass computes MH - 1 more places down and MW - 1 across than dout has pixels
# (a ring that the crop mostly drops): F/groups multiply-adds per column element for each
# extra place per pixel, which must stay below what col2im's adds cost. CPU time on one
# thread against im2col, transposed 4x4 stride 2 padding 1, float32 (float64 alike):
# 8x32x8x8 -> 32 channels (0.27 extra places a pixel, times F: 8.6) 0.61x; 8x128x14x14 -> 64
# (19) 0.87x; 4x256x12x12 -> 128 (44) 1.08x, float64 0.88x; 4x256x8x8 -> 128 (69) 1.21x.
MAX_EXTRA_MULTIPLY_ADDS = 32

# The stride-1 forward pass of the stacked phases: (x, w, geometry) -> out, on whatever path
# suits it.
Forward = Callable[[np.ndarray, np.ndarray, ConvGeometry], np.ndarray]


def supports(geometry: ConvGeometry) -> bool:
    """A strided planar geometry, undilated, whose kernel is a whole number of strides along
    each axis and larger than the stride along one (else no windows overlap: :mod:`.phases`),
    where it pays (:func:`_pays`)."""
    g = geometry
    return (
        g.rank == 2
        and any(s > 1 for s in g.stride)
        and g.dilation == (1, 1)
        and all(k % s == 0 for k, s in zip(g.kernel, g.stride, strict=True))
        and any(k > s for k, s in zip(g.kernel, g.stride, strict=True))
        and _pays(g)
    )


def _pays(g: ConvGeometry) -> bool:
    """Whether the stacked pass beats im2col's columns and col2im, from the layer's shape.

    Its columns hold F*MH*MW rows a place, im2col's column gradients C*KH*KW a pixel: with
    fewer channels than F/(SH*SW) per group they are the larger (transposed 16x64x32x32 -> 3
    channels, 4x4 stride 2 padding 1: CPU time 1.2x im2col's; -> 8 channels 0.9x). And its
    extra places must be few against F (``MAX_EXTRA_MULTIPLY_ADDS``). A choice by the image,
    never by the batch.
    """
    places = math.prod(o + k // s - 1 for o, k, s in zip(g.out, g.kernel, g.stride, strict=True))
    extra_per_pixel = places / g.positions - 1
    return (
        g.c_per_group * g.stride[0] * g.stride[1] >= g.f_per_group
        and extra_per_pixel * g.f_per_group <= MAX_EXTRA_MULTIPLY_ADDS
    )


def stacked_geometry(geometry: ConvGeometry) -> ConvGeometry:
    """The stride-1 convolution of dout that computes every phase at once: dout (N, F, H_out,
    W_out) -> (N, C*SH*SW, H_out + MH - 1, W_out + MW - 1), with kernel (MH, MW) = (KH/SH,
    KW/SW) and MH - 1, MW - 1 zeros of padding on each side; its output's channel (c, a, b)
    is phase (a, b) of channel c, whose place q is padded input position ``s*q + a``."""
    g = geometry
    sub = tuple(k // s for k, s in zip(g.kernel, g.stride, strict=True))
    return replace(
        g,
        c=g.f,
        f=g.c * g.stride[0] * g.stride[1],
        size=g.out,
        kernel=sub,
        stride=(1, 1),
        dilation=(1, 1),
        pads=tuple((m - 1, m - 1) for m in sub),
        out=tuple(o + m - 1 for o, m in zip(g.out, sub, strict=True)),
    )


def work_elements(geometry: ConvGeometry) -> int:
    """What this path allocates besides its stacked forward pass (whose own bound the
    selector adds, for whichever path may compute it): the stacked kernel and the input
    gradient copied out of the phases (the phases are that forward pass's output)."""
    g = geometry
    return g.f * g.c_per_group * g.kernel[0] * g.kernel[1] + g.n * g.c * g.height * g.width


def input_gradient(
    dout: np.ndarray, w: np.ndarray, geometry: ConvGeometry, forward: Forward
) -> np.ndarray:
    """dout (N, F, H_out, W_out), w (F, C/groups, KH, KW) -> dx (N, C, H, W), for a core
    planar geometry; ``forward`` computes the stride-1 pass of :func:`stacked_geometry`."""
    g = geometry
    stacked = stacked_geometry(g)
    phases = forward(dout, _stacked_kernel(w, g, stacked.kernel), stacked)
    # phases: (N, C, SH, SW, places down, places across), as a PhaseCanvas keeps them (a core
    # geometry's padded size is a whole number of strides: H_pad = SH*(H_out + MH - 1)).
    canvas = PhaseCanvas(phases.reshape(g.n, g.c, *g.stride, *stacked.out), g)
    return canvas.interior()


def _stacked_kernel(w: np.ndarray, g: ConvGeometry, sub: tuple[int, ...]) -> np.ndarray:
    """w (F, C/groups, KH, KW) -> (C*SH*SW, F/groups, MH, MW): filter (c, a, b) at (j, k) is
    w[:, c, SH*(MH-1-j) + a, SW*(MW-1-k) + b], each group's filters those of its channels."""
    (sh, sw), (mh, mw) = g.stride, sub
    # offset i = s*t + r: its axis split as (t, r), t then flipped (j = m - 1 - t)
    taps = w.reshape(g.groups, g.f_per_group, g.c_per_group, mh, sh, mw, sw)[:, :, :, ::-1, :, ::-1]
    filters = taps.transpose(0, 2, 4, 6, 1, 3, 5)  # (groups, C/groups, SH, SW, F/groups, MH, MW)
    return np.ascontiguousarray(filters).reshape(g.c * sh * sw, g.f_per_group, mh, mw)
