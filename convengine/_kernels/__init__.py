"""The engine's computing paths, and the one place where a path is chosen: :func:`select`.

Each path is one module holding its code, its ``supports(geometry)`` and its memory bound
``work_elements(geometry)``, and computing the passes of :class:`Pass` it takes on:

- planar (a line is a plane one pixel high): :mod:`.im2col` (the general path), :mod:`.pointwise`
  (1x1, stride 1, no padding), :mod:`.depthwise` (one channel per filter, stride 1: shifted
  copies and gemvs), :mod:`.depthwise_taps` (one channel per filter: one multiply-add per
  kernel offset), :mod:`.phases` (the input gradient of strided layers whose windows never
  overlap), :mod:`.subpixel` (the input gradient of strided layers whose kernel is a whole
  number of strides: one stride-1 forward pass of all phases), :mod:`.winograd` (stride-1
  3x3 layers with 32 channels or more: F(4x4, 3x3)), :mod:`.gather` (tiny layers: im2col as
  one gather by a cached index, col2im as one ``bincount``), :mod:`.small` (small stride-1
  layers: columns as runs of the flat padded images);
- volumes: :mod:`.flat` (stride 1, shifted runs of the flat padded volume), :mod:`.volume`
  (depth slices, each a planar pass);
- :mod:`.halves`: any of those on two halves of the batch at once, one per core.

:mod:`.layout` holds what they share (work buffers, the padded canvas, wide rows). As
PyTorch's ``select_conv_backend`` picks a ``ConvBackend``, :func:`select` reads the geometry and
answers a :class:`Selection`; :mod:`.run` computes it. A new path is its module, a member of
:class:`Path`, its entry in ``KERNELS`` and one line in :func:`_planar` or :func:`_volume`.
"""

from __future__ import annotations

from dataclasses import dataclass
from enum import Enum
from types import ModuleType

import numpy as np
from numpy.typing import DTypeLike

from .. import _padding
from .._geometry import ConvGeometry, TransposedGeometry
from . import (
    depthwise,
    depthwise_taps,
    flat,
    gather,
    halves,
    im2col,
    phases,
    pointwise,
    small,
    subpixel,
    volume,
    winograd,
)

__all__ = ["ANY_DATA", "KERNELS", "Pass", "Path", "Selection", "select", "work_elements"]


class Pass(Enum):
    """What is computed; each value names the function a path module computes it with."""

    FORWARD = "forward"  # out
    BACKWARD = "backward"  # dx, dw, db
    INPUT_GRADIENT = "input_gradient"  # dx alone: a transposed convolution's forward
    WEIGHT_GRADIENT = "weight_gradient"  # dw alone: what a transposed backward needs


class Path(Enum):
    """A way to compute a pass; the value is its name in a :attr:`Selection.name`."""

    EMPTY = "empty"  # no window reads an input pixel: the bias alone, zero gradients
    IM2COL = "im2col"
    POINTWISE = "pointwise"
    DEPTHWISE = "depthwise"
    DEPTHWISE_TAPS = "depthwise-taps"
    PHASES = "phases"
    FLAT = "flat"
    VOLUME = "volume"
    HALVES = "halves"
    WINOGRAD = "winograd"
    SMALL = "small"
    GATHER = "gather"
    SUBPIXEL = "subpixel"


# The module that computes each path's passes (EMPTY has none: nothing is computed).
KERNELS: dict[Path, ModuleType] = {
    Path.IM2COL: im2col,
    Path.POINTWISE: pointwise,
    Path.DEPTHWISE: depthwise,
    Path.DEPTHWISE_TAPS: depthwise_taps,
    Path.PHASES: phases,
    Path.FLAT: flat,
    Path.VOLUME: volume,
    Path.HALVES: halves,
    Path.WINOGRAD: winograd,
    Path.SMALL: small,
    Path.GATHER: gather,
    Path.SUBPIXEL: subpixel,
}


@dataclass(frozen=True)
class Selection:
    """The path of one pass: ``inner`` is the path of each half (HALVES) or depth slice
    (VOLUME); ``wide_rows`` whether the columns may run in wide rows (im2col, depthwise-taps
    and small: junk columns that meet zeros, allowed for finite arrays only)."""

    path: Path
    inner: Selection | None = None
    wide_rows: bool = False

    @property
    def name(self) -> str:
        """e.g. ``"im2col"``, ``"halves(depthwise)"``, ``"halves(volume(im2col))"``."""
        if self.inner is None:
            return self.path.value
        return f"{self.path.value}({self.inner.name})"


# The paths taken whatever the data: where one of them is selected for finite data, it is the
# selection for any data too (each is chosen before any choice that reads finiteness, or
# needs none of its own), so the run spares their arrays its finiteness checks.
ANY_DATA = frozenset({Path.EMPTY, Path.GATHER, Path.POINTWISE})

# The leaf selections, made once: a small layer's pass selects twice or more, in microseconds.
_LEAVES = {(path, wide): Selection(path, wide_rows=wide) for path in Path for wide in (False, True)}


def _leaf(path: Path, wide_rows: bool = False) -> Selection:
    return _LEAVES[path, wide_rows]


def select(
    geometry: ConvGeometry,
    pass_: Pass,
    dtype: DTypeLike = np.float32,
    *,
    x_finite: bool = True,
    w_finite: bool = True,
    split: bool = True,
) -> Selection:
    """The path that computes ``pass_`` of ``geometry``: the one place where a path is chosen.

    From shapes alone, but for one fact about the data: junk columns (wide rows, the flat
    paths' padded grid) and padding meet zeros of dout or of the input, and inf * 0 = NaN
    would leak into real results, so the paths that multiply them are taken for finite
    arrays only. ``x_finite`` and ``w_finite`` say whether x and w hold only finite values;
    the run checks them on the arrays each piece of work reads (a half of the batch, a depth
    slice), a shapes-only caller leaves them True and gets the path of finite data.
    INPUT_GRADIENT reads w alone, so only ``w_finite`` counts there. ``split=False`` selects
    for one half of a batch already split. ``dtype`` (float32 or float64) picks nothing yet.
    Winograd's transforms run on finite x and w only (an inf in a tile spreads NaN over it:
    the run checks every array a Winograd piece reads, dout too, and selects again without).
    """
    core = geometry if geometry.is_core else geometry.core()[0]
    if 0 in core.size:
        return _leaf(Path.EMPTY)
    if core.rank == 3:
        path = _volume(core, pass_, x_finite, w_finite)
    else:
        path = _planar(core.planar(), pass_, x_finite, w_finite)
    if split and halves.supports(core):
        return Selection(Path.HALVES, path)
    return path


def _planar(g: ConvGeometry, pass_: Pass, x_finite: bool, w_finite: bool) -> Selection:
    """The path of a planar core geometry (a line's plane one pixel high)."""
    reads = w_finite if pass_ is Pass.INPUT_GRADIENT else x_finite and w_finite
    finite = pass_ is Pass.FORWARD or reads
    if pass_ is Pass.INPUT_GRADIENT and phases.supports(g):
        return _leaf(Path.PHASES)
    if depthwise.supports(g) and finite:
        return _leaf(Path.DEPTHWISE)
    if depthwise_taps.supports(g):
        return _leaf(Path.DEPTHWISE_TAPS, wide_rows=finite)
    if pointwise.supports(g):
        return _leaf(Path.POINTWISE)
    # Winograd's dw is im2col's (with wide rows: x is finite), so dw alone stays there.
    if x_finite and w_finite and pass_ is not Pass.WEIGHT_GRADIENT and winograd.supports(g):
        return _leaf(Path.WINOGRAD, wide_rows=True)
    if gather.supports(g):
        return _leaf(Path.GATHER)
    # Its stacked forward pass multiplies dout's padding by w.
    if pass_ is Pass.INPUT_GRADIENT and w_finite and subpixel.supports(g):
        return _leaf(Path.SUBPIXEL)
    # Its junk columns meet x and w in the backward passes (finite data only), not forward.
    if small.supports(g) and finite:
        return _leaf(Path.SMALL, wide_rows=pass_ is not Pass.FORWARD)
    # dw alone multiplies no junk by w: its wide rows need finite x only. The forward pass
    # crops a wide output, which cost more than wide rows saved: it takes none.
    wide = x_finite if pass_ is Pass.WEIGHT_GRADIENT else finite
    return _leaf(Path.IM2COL, wide_rows=wide and pass_ is not Pass.FORWARD)


def _volume(g: ConvGeometry, pass_: Pass, x_finite: bool, w_finite: bool) -> Selection:
    """The path of a core volume: flat where it fits, else depth slices on a planar path."""
    reads_junk = pass_ in (Pass.BACKWARD, Pass.WEIGHT_GRADIENT)  # dw: junk times dout
    if flat.supports(g) and (not reads_junk or (x_finite and w_finite)):
        return _leaf(Path.FLAT)
    # The slices of dw alone compute dx too (their passes are the backward's).
    slices = Pass.BACKWARD if pass_ is Pass.WEIGHT_GRADIENT else pass_
    return Selection(Path.VOLUME, _planar(g.planar(), slices, x_finite, w_finite))


def work_elements(geometry: ConvGeometry | TransposedGeometry) -> int:
    """An upper bound on the array elements any pass of ``geometry`` allocates, on any data
    (a transposed layer's: its convolution's, whose passes it runs).

    Built from each path's own bound: the larger of the whole batch and its two halves
    (:func:`.halves.work_elements`); per batch, the padding mode's prepared input
    (:func:`._padding.work_elements`) and the largest bound among the paths that may compute
    the layer. The service refuses work by it before allocating anything.
    """
    conv = geometry.conv if isinstance(geometry, TransposedGeometry) else geometry
    return halves.work_elements(conv, _batch_elements)


def _batch_elements(geometry: ConvGeometry) -> int:
    """The bound of a pass on the whole batch. The flat path's counts for every volume: it
    runs where its ``supports`` holds for the core geometry, not necessarily for this one."""
    g = geometry
    planar = _planar_elements(g.planar())
    if g.rank == 3:
        planar = max(planar + volume.work_elements(g), flat.work_elements(g))
    return planar + _padding.work_elements(g)


def _planar_elements(plane: ConvGeometry) -> int:
    """The largest bound among the planar paths that support ``plane``, whatever the data."""
    paths = (im2col, pointwise, depthwise, depthwise_taps, phases, winograd, small, gather)
    bound = max(int(path.work_elements(plane)) for path in paths if path.supports(plane))
    if subpixel.supports(plane):  # its own arrays, and its stacked pass on any path
        stacked = _planar_elements(subpixel.stacked_geometry(plane))
        bound = max(bound, subpixel.work_elements(plane) + stacked)
    return bound
