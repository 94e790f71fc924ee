"""Padding modes other than zeros, as PyTorch's ``nn.Conv{1,2,3}d`` apply them, and their adjoint.

A padded axis is the input axis read through a table of source indices: position ``p`` of
the padded axis holds input pixel ``sources[p]``. Padding copies through the table; the
gradient folds back through it, each padded position adding onto the pixel it was copied from.
"""

from __future__ import annotations

from math import prod

import numpy as np

from ._geometry import ConvGeometry

__all__ = ["fold", "pad", "source_indices", "work_elements"]


def work_elements(geometry: ConvGeometry) -> int:
    """What preparing the input adds to a pass, at most: for a padding mode or floor rounding,
    the prepared input and its gradient; nothing where the passes read x as it is."""
    g = geometry
    return 0 if g.is_core else 2 * g.n * g.c * prod(g.padded)


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
    """x (N, C, *size) -> (N, C, *padded), padded by the geometry's mode."""
    g = geometry
    for axis, (size, sides) in enumerate(zip(g.size, g.pads, strict=True), start=2):
        x = np.take(x, source_indices(g.padding_mode, size, *sides), axis=axis)
    return x


def fold(dpadded: np.ndarray, geometry: ConvGeometry) -> np.ndarray:
    """The adjoint of :func:`pad`: (N, C, *padded) -> dx (N, C, *size)."""
    g = geometry
    for axis, (size, sides) in enumerate(zip(g.size, g.pads, strict=True), start=2):
        sources = source_indices(g.padding_mode, size, *sides)
        dpadded = _fold_axis(dpadded, sources, sides[0], size, axis)
    return dpadded


def _fold_axis(d: np.ndarray, sources: np.ndarray, before: int, size: int, axis: int) -> np.ndarray:
    # The interior is copied whole; the few padded positions are added one slice each.
    moved = np.moveaxis(d, axis, 0)
    out = moved[before : before + size].copy()
    for position in (*range(before), *range(before + size, len(sources))):
        out[sources[position]] += moved[position]
    return np.moveaxis(out, 0, axis)
