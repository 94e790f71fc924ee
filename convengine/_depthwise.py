"""Depthwise convolution (one input channel per filter, stride 1) by multiply-adds on flat planes.

Each filter sees one channel, so its "GEMM" would be a single row: a matrix product buys
nothing. Instead each (image, channel) plane is zero-padded into a small work buffer whose rows
are ``W_pad`` long (wide rows, as in :mod:`._im2col`): kernel offset (i, j) is then one
contiguous run of the plane shifted by ``i*dilation*W_pad + j*dilation``, and a kernel tap is one
multiply-add over that run for a whole group of planes at once. Groups of planes are sized to
stay in the L2 cache.

One thread: sharing the groups out among two threads gained nothing in interleaved runs on
this machine's kind (4.1 against 4.4 ms at best, worse at the median): at 64 Ki elements a
multiply takes a few microseconds, and handing the GIL back and forth costs as much.
"""

from __future__ import annotations

from dataclasses import replace

import numpy as np

from ._geometry import ConvGeometry
from ._im2col import workspace

__all__ = ["backward", "forward", "supports"]

# Elements of one group of planes. Interleaved runs on this machine's kind (8x64x56x56, 3x3,
# float32, one thread): 64 Ki elements took 3.3 ms, 16 Ki 3.7 ms, 256 Ki 5.9 ms, whole-batch
# passes 8.5 ms: three such buffers (padded input, term, sum) must stay in the 1 MiB L2.
GROUP_ELEMENTS = 1 << 16


def supports(geometry: ConvGeometry) -> bool:
    """Whether this path computes ``geometry``: one channel per filter, stride 1.

    The backward pass also needs finite x and w: junk columns meet zeros there, and
    inf * 0 would leak NaN into real pixels.
    """
    g = geometry
    return g.c_per_group == 1 and g.c == g.f and g.stride == (1, 1)


def forward(x: np.ndarray, w: np.ndarray, geometry: ConvGeometry) -> np.ndarray:
    """x (N, C, H, W), w (C, 1, KH, KW) -> out (N, C, H_out, W_out), for C = F = groups."""
    g = geometry
    planes = x.reshape(g.n * g.c, g.height, g.width)
    taps = w.reshape(g.c, -1)
    out = np.empty((g.n * g.c, g.h_out, g.w_out), dtype=x.dtype)

    def run(group: slice) -> None:
        padded = _padded_planes(planes[group], g, "dw_x")
        out[group] = _sum_of_taps(padded, _tap_weights(taps, group, g.c), g)

    for group in _plane_groups(g):
        run(group)
    return out.reshape(g.out_shape)


def backward(
    dout: np.ndarray, x: np.ndarray, w: np.ndarray, geometry: ConvGeometry
) -> tuple[np.ndarray, np.ndarray]:
    """dout (N, C, H_out, W_out), x (N, C, H, W), w (C, 1, KH, KW) -> dx (N, C, H, W), dw."""
    g = geometry
    planes = x.reshape(g.n * g.c, g.height, g.width)
    dout_planes = dout.reshape(g.n * g.c, g.h_out, g.w_out)
    taps = w.reshape(g.c, -1)
    # dx is the convolution of dout, padded by the kernel's reach, with the flipped kernel:
    # gathering taps into one sum took half the time of scattering them onto a canvas.
    flipped_taps, dx_geometry = taps[:, ::-1], _input_gradient_geometry(g)
    top, left = g.pad_h[0], g.pad_w[0]
    dx = np.empty_like(planes)
    # dw of every plane, summed over the batch at the end.
    plane_dw = np.empty((g.n * g.c, taps.shape[1]), dtype=x.dtype)

    def run(group: slice) -> None:
        padded = _padded_planes(planes[group], g, "dw_x")
        dout_wide = _wide_planes(dout_planes[group], g)
        _tap_products(padded, dout_wide, g, out=plane_dw[group])
        padded_dout = _padded_planes(dout_planes[group], dx_geometry, "dw_dout_padded")
        dx_padded = _sum_of_taps(padded_dout, _tap_weights(flipped_taps, group, g.c), dx_geometry)
        dx[group] = dx_padded[:, top : top + g.height, left : left + g.width]

    for group in _plane_groups(g):
        run(group)
    dw = plane_dw.reshape(g.n, g.c, -1).sum(axis=0)
    return dx.reshape(g.x_shape), dw.reshape(w.shape)


def _input_gradient_geometry(g: ConvGeometry) -> ConvGeometry:
    """dx as a convolution: dout padded by the kernel's reach, its output the padded input."""
    reach_h = g.dilation[0] * (g.kernel[0] - 1)
    reach_w = g.dilation[1] * (g.kernel[1] - 1)
    h_pad, w_pad = g.padded_hw
    return replace(
        g,
        size=(g.h_out, g.w_out),
        pads=((reach_h, reach_h), (reach_w, reach_w)),
        out=(h_pad, w_pad),
    )


def _plane_length(g: ConvGeometry) -> int:
    """Elements of one padded plane in a work buffer, with slack for the last tap's run."""
    h_pad, w_pad = g.padded_hw
    return h_pad * w_pad + (g.kernel[1] - 1) * g.dilation[1]


def _offsets(g: ConvGeometry) -> list[int]:
    """Where kernel offset (i, j) starts in a padded plane, in (i, j) order."""
    w_pad = g.padded_hw[1]
    (kh, kw), (dh, dw) = g.kernel, g.dilation
    return [i * dh * w_pad + j * dw for i in range(kh) for j in range(kw)]


def _plane_groups(g: ConvGeometry) -> list[slice]:
    step = max(1, GROUP_ELEMENTS // _plane_length(g))
    total = g.n * g.c
    return [slice(start, min(start + step, total)) for start in range(0, total, step)]


def _tap_weights(taps: np.ndarray, group: slice, channels: int) -> np.ndarray:
    """taps (C, KH*KW) -> (planes, KH*KW, 1): the weights of each plane of ``group``."""
    channel_of_plane = np.arange(group.start, group.stop) % channels
    weights: np.ndarray = taps[channel_of_plane]
    return weights[:, :, None]


def _padded_planes(planes: np.ndarray, g: ConvGeometry, slot: str) -> np.ndarray:
    """planes (p, H, W) zero-padded in work buffer ``slot`` -> (p, plane length), W_pad rows."""
    h_pad, w_pad = g.padded_hw
    top, left = g.pad_h[0], g.pad_w[0]
    flat = workspace(slot, (planes.shape[0], _plane_length(g)), planes.dtype)
    image = flat[:, : h_pad * w_pad].reshape(-1, h_pad, w_pad)
    # Zero only the border: the interior is overwritten at once.
    image[:, :top] = 0
    image[:, top + g.height :] = 0
    image[:, top : top + g.height, :left] = 0
    image[:, top : top + g.height, left + g.width :] = 0
    flat[:, h_pad * w_pad :] = 0
    image[:, top : top + g.height, left : left + g.width] = planes
    return flat


def _wide_planes(dout_planes: np.ndarray, g: ConvGeometry) -> np.ndarray:
    """dout (p, H_out, W_out) -> (p, H_out*W_pad) in a work buffer, junk columns zero."""
    w_pad = g.padded_hw[1]
    wide = workspace("dw_dout", (dout_planes.shape[0], g.h_out, w_pad), dout_planes.dtype)
    wide[:, :, g.w_out :] = 0
    wide[:, :, : g.w_out] = dout_planes
    return wide.reshape(dout_planes.shape[0], -1)


def _sum_of_taps(padded: np.ndarray, weights: np.ndarray, g: ConvGeometry) -> np.ndarray:
    """padded (p, plane length), weights (p, KH*KW, 1) -> out (p, H_out, W_out), a view."""
    run = g.h_out * g.padded_hw[1]
    total = workspace("dw_sum", (padded.shape[0], run), padded.dtype)
    term = workspace("dw_term", total.shape, padded.dtype)
    for tap, start in enumerate(_offsets(g)):
        field = padded[:, start : start + run]
        if tap == 0:
            np.multiply(field, weights[:, 0], out=total)
        else:
            np.multiply(field, weights[:, tap], out=term)
            total += term
    return total.reshape(-1, g.h_out, g.padded_hw[1])[:, :, : g.w_out]


def _tap_products(
    padded: np.ndarray, dout_wide: np.ndarray, g: ConvGeometry, out: np.ndarray
) -> None:
    """dw of each plane: out (p, KH*KW) = <field of tap, dout> for every plane and tap."""
    run = dout_wide.shape[1]
    for tap, start in enumerate(_offsets(g)):
        np.vecdot(padded[:, start : start + run], dout_wide, out=out[:, tap])
