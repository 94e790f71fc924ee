"""Convolutions with three spatial axes, as KD planar convolutions over depth slices.

For kernel depth offset ``kd``, every output depth ``od`` reads the input plane at depth
``od*stride + kd*dilation``: stacking those planes along the batch makes one planar
convolution per ``kd`` (with the kernel's ``kd`` slice), each one batched GEMM on a planar
path (the caller's ``planar`` pass, selected for the slices). Their sum is the volume's
output; the backward pass scatters each slice's input gradient back to its depths.
"""

from __future__ import annotations

from collections.abc import Callable
from math import prod

import numpy as np

from .._geometry import ConvGeometry

__all__ = ["backward", "forward", "input_gradient", "supports", "work_elements"]

# The planar passes of the slices: (arrays..., plane geometry) -> the pass's result.
PlanarForward = Callable[[np.ndarray, np.ndarray, ConvGeometry], np.ndarray]
PlanarBackward = Callable[
    [np.ndarray, np.ndarray, np.ndarray, ConvGeometry], tuple[np.ndarray, np.ndarray, np.ndarray]
]
PlanarInputGradient = Callable[[np.ndarray, np.ndarray, ConvGeometry], np.ndarray]


def supports(geometry: ConvGeometry) -> bool:
    """Every core volume: the path the flat one falls back to."""
    return geometry.rank == 3


def work_elements(geometry: ConvGeometry) -> int:
    """What the depth slices add to the planar path's bound for them (``geometry.planar()``):
    the slices of the padded input and their gradient."""
    g = geometry
    return 2 * g.n * g.c * g.out[0] * prod(g.padded[1:])


def forward(
    x: np.ndarray,
    w: np.ndarray,
    b: np.ndarray | None,
    geometry: ConvGeometry,
    planar: PlanarForward,
) -> np.ndarray:
    """x (N, C, D, H, W), w (F, C/groups, KD, KH, KW) -> out (N, F, D_out, H_out, W_out)."""
    g, plane = geometry, geometry.planar()
    x_padded = _padded_depth(x, g)
    # total: (N, D_out, F, H_out, W_out), the depth slices' layout
    total = np.zeros((g.n, g.out[0], g.f, *g.out[1:]), dtype=x.dtype)
    for kd in range(g.kernel[0]):
        part = planar(_slices(x_padded, g, kd), w[:, :, kd], plane)
        total += part.reshape(total.shape)
    out = np.ascontiguousarray(total.transpose(0, 2, 1, 3, 4))
    if b is not None:
        out += b.reshape(-1, 1, 1, 1)
    return out


def backward(
    dout: np.ndarray,
    x: np.ndarray,
    w: np.ndarray,
    geometry: ConvGeometry,
    planar: PlanarBackward,
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """dout (N, F, D_out, H_out, W_out), x, w -> dx (N, C, D, H, W), dw, db (F,)."""
    db = dout.sum(axis=(0, 2, 3, 4))
    g, plane = geometry, geometry.planar()
    x_padded = _padded_depth(x, g)
    dout_planes = dout.transpose(0, 2, 1, 3, 4).reshape(g.n * g.out[0], g.f, *g.out[1:])
    dx_padded = np.zeros_like(x_padded)
    dw = np.empty_like(w)
    for kd in range(g.kernel[0]):
        dx_planes, dw[:, :, kd], _ = planar(
            dout_planes, _slices(x_padded, g, kd), w[:, :, kd], plane
        )
        dx_planes = dx_planes.reshape(g.n, g.out[0], g.c, *g.size[1:]).transpose(0, 2, 1, 3, 4)
        dx_padded[:, :, _depths(g, kd)] += dx_planes
    begin = g.pads[0][0]
    dx = dx_padded[:, :, begin : begin + g.size[0]]
    return np.ascontiguousarray(dx), dw, db


def input_gradient(
    dout: np.ndarray, w: np.ndarray, geometry: ConvGeometry, planar: PlanarInputGradient
) -> np.ndarray:
    """dx alone: dout (N, F, D_out, H_out, W_out), w -> dx (N, C, D, H, W)."""
    g, plane = geometry, geometry.planar()
    dout_planes = dout.transpose(0, 2, 1, 3, 4).reshape(g.n * g.out[0], g.f, *g.out[1:])
    dx_padded = np.zeros((g.n, g.c, g.padded[0], *g.size[1:]), dtype=dout.dtype)
    for kd in range(g.kernel[0]):
        dx_planes = planar(dout_planes, w[:, :, kd], plane)
        dx_planes = dx_planes.reshape(g.n, g.out[0], g.c, *g.size[1:]).transpose(0, 2, 1, 3, 4)
        dx_padded[:, :, _depths(g, kd)] += dx_planes
    begin = g.pads[0][0]
    return np.ascontiguousarray(dx_padded[:, :, begin : begin + g.size[0]])


def _padded_depth(x: np.ndarray, geometry: ConvGeometry) -> np.ndarray:
    """x (N, C, D, H, W) with the depth padding as zeros: (N, C, D_pad, H, W)."""
    begin, end = geometry.pads[0]
    if not begin and not end:
        return x
    return np.pad(x, ((0, 0), (0, 0), (begin, end), (0, 0), (0, 0)))


def _depths(geometry: ConvGeometry, kd: int) -> slice:
    """The padded depths that depth offset ``kd`` reads, one per output depth."""
    start, step = kd * geometry.dilation[0], geometry.stride[0]
    return slice(start, start + (geometry.out[0] - 1) * step + 1, step)


def _slices(x_padded: np.ndarray, geometry: ConvGeometry, kd: int) -> np.ndarray:
    """(N, C, D_pad, H, W) -> the planes offset ``kd`` reads: (N * D_out, C, H, W)."""
    n, c, _, h, w = x_padded.shape
    planes = x_padded[:, :, _depths(geometry, kd)].transpose(0, 2, 1, 3, 4)
    return planes.reshape(n * geometry.out[0], c, h, w)
