"""Padding modes other than zeros, as PyTorch's ``nn.Conv2d`` applies them, and their adjoint.

A padded axis is the input axis read through a table of source indices: position ``p`` of
the padded axis holds input pixel ``sources[p]``. Padding copies through the table; the
gradient folds back through it, each padded position adding onto the pixel it was copied from.
"""

from __future__ import annotations

import numpy as np

from ._geometry import ConvGeometry

__all__ = ["fold", "pad", "source_indices"]


def source_indices(mode: str, size: int, before: int, after: int) -> np.ndarray:
    """The input index behind each of the ``before + size + after`` padded positions."""
    positions = np.arange(-before, size + after)
    if mode == "replicate":
        return np.clip(positions, 0, size - 1)
    if mode == "circular":
        return positions % size
    if mode == "reflect":  # mirrored about the edge pixel, which is not repeated
        period = 2 * (size - 1) if size > 1 else 1
        folded = np.abs(positions) % period
        return np.where(folded < size, folded, period - folded)
    raise ValueError(f"no source table for padding mode {mode!r}")


def pad(x: np.ndarray, geometry: ConvGeometry) -> np.ndarray:
    """x (N, C, H, W) -> (N, C, H_pad, W_pad), padded by the geometry's mode."""
    g = geometry
    rows = source_indices(g.padding_mode, g.height, *g.pad_h)
    cols = source_indices(g.padding_mode, g.width, *g.pad_w)
    return np.take(np.take(x, rows, axis=2), cols, axis=3)


def fold(dpadded: np.ndarray, geometry: ConvGeometry) -> np.ndarray:
    """The adjoint of :func:`pad`: (N, C, H_pad, W_pad) -> dx (N, C, H, W)."""
    g = geometry
    rows = source_indices(g.padding_mode, g.height, *g.pad_h)
    cols = source_indices(g.padding_mode, g.width, *g.pad_w)
    return _fold_axis(
        _fold_axis(dpadded, rows, g.pad_h[0], g.height, 2), cols, g.pad_w[0], g.width, 3
    )


def _fold_axis(d: np.ndarray, sources: np.ndarray, before: int, size: int, axis: int) -> np.ndarray:
    # The interior is copied whole; the few padded positions are added one slice each.
    moved = np.moveaxis(d, axis, 0)
    out = moved[before : before + size].copy()
    for position in (*range(before), *range(before + size, len(sources))):
        out[sources[position]] += moved[position]
    return np.moveaxis(out, 0, axis)
