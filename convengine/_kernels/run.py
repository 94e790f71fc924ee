"""Each pass computed on the path :func:`.select` chooses: the selection walked, and nothing chosen.

The passes take a core geometry (zero padding, every padded pixel read) and arrays already
checked against it. A split batch, a depth slice and a phase are each selected for as a piece
of their own (``split=False``), with the finiteness of the arrays that piece reads: the data
enters the choice there and nowhere else.
"""

from __future__ import annotations

from functools import partial
from typing import cast

import numpy as np

from .._geometry import ConvGeometry
from . import ANY_DATA, KERNELS, Pass, Path, Selection, halves, phases, select, subpixel, volume
from .halves import Places, Result

__all__ = ["WRITES_OUT", "backward", "forward", "input_gradient", "weight_gradient"]

# The paths whose forward writes into an ``out`` it is given: a half of a split batch then
# writes its part of the whole output, with no output of its own to allocate and copy over.
# CPU time of both threads, the fastest call, A/B in one process: the stem (7x7 stride 2)
# float32 13.1 against 13.6 ms, float64 24.1 against 26.3; strided 3x3 stride 2 12.3
# against 12.7 and 21.9 against 22.5; mid (Winograd) 20.1 against 20.6.
WRITES_OUT = frozenset({Path.IM2COL, Path.WINOGRAD})


def forward(
    selection: Selection,
    x: np.ndarray,
    w: np.ndarray,
    b: np.ndarray | None,
    geometry: ConvGeometry,
) -> np.ndarray:
    """x (N, C, *spatial), w (F, C/groups, *kernel), b (F,) or None -> out (N, F, *out)."""
    layout = (geometry.out_shape,)
    return cast(np.ndarray, _run(Pass.FORWARD, selection, geometry, (x,), (w, b), layout))


def backward(
    selection: Selection, dout: np.ndarray, x: np.ndarray, w: np.ndarray, geometry: ConvGeometry
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """dout (N, F, *out), x (N, C, *spatial), w (F, C/groups, *kernel) -> dx, dw, db."""
    layout = (geometry.x_shape, None, None)
    result = _run(Pass.BACKWARD, selection, geometry, (dout, x), (w,), layout)
    return cast(tuple[np.ndarray, np.ndarray, np.ndarray], result)


def input_gradient(
    selection: Selection, dout: np.ndarray, w: np.ndarray, geometry: ConvGeometry
) -> np.ndarray:
    """dout (N, F, *out), w (F, C/groups, *kernel) -> dx (N, C, *spatial)."""
    layout = (geometry.x_shape,)
    return cast(np.ndarray, _run(Pass.INPUT_GRADIENT, selection, geometry, (dout,), (w,), layout))


def weight_gradient(
    selection: Selection, dout: np.ndarray, x: np.ndarray, w: np.ndarray, geometry: ConvGeometry
) -> np.ndarray:
    """dout (N, F, *out), x (N, C, *spatial), w (F, C/groups, *kernel) -> dw."""
    result = _run(Pass.WEIGHT_GRADIENT, selection, geometry, (dout, x), (w,), (None,))
    return cast(np.ndarray, result)


def _run(
    pass_: Pass,
    selection: Selection,
    geometry: ConvGeometry,
    batched: tuple[np.ndarray, ...],
    shared: tuple[np.ndarray | None, ...],
    layout: tuple[tuple[int, ...] | None, ...],
) -> Result:
    """The pass on the whole batch, or on its halves where ``selection`` says so; ``layout``
    as :func:`.halves.compute` takes it."""
    if selection.path is Path.HALVES:
        return halves.compute(partial(_piece, pass_), geometry, batched, shared, layout)
    return _piece(pass_, (*batched, *shared), geometry, finite_selection=selection)


def _piece(
    pass_: Pass,
    arrays: tuple[np.ndarray | None, ...],
    geometry: ConvGeometry,
    places: Places = (),
    finite_selection: Selection | None = None,
) -> Result:
    """``pass_`` of one piece of work, selected for with the data it reads. The arrays are
    (x, w, b) forward, (dout, w) for the input gradient, (dout, x, w) for the others.
    ``places``: where its outputs go, as :func:`.halves.compute` gives them (a path that can
    writes its forward there). ``finite_selection``: the piece's selection for finite data,
    if already made (it holds where the data is finite, and spares a small layer its second
    selection; on a path taken whatever the data, its finiteness checks too)."""
    out = places[0] if places and pass_ is Pass.FORWARD else None
    if finite_selection is not None and finite_selection.path in ANY_DATA:
        return _compute(pass_, finite_selection, geometry, arrays, out)
    x_finite, w_finite = _finiteness(pass_, arrays)
    if finite_selection is not None and x_finite and w_finite:
        selection = finite_selection
    else:
        dtype = cast(np.ndarray, arrays[0]).dtype
        selection = select(
            geometry, pass_, dtype, x_finite=x_finite, w_finite=w_finite, split=False
        )
    if selection.path is Path.WINOGRAD and not all(_finite(a) for a in arrays):
        # An inf in a tile spreads NaN over the tile's transform: the direct path instead.
        dtype = cast(np.ndarray, arrays[0]).dtype
        selection = select(geometry, pass_, dtype, x_finite=False, w_finite=w_finite, split=False)
    return _compute(pass_, selection, geometry, arrays, out)


def _finiteness(pass_: Pass, arrays: tuple[np.ndarray | None, ...]) -> tuple[bool, bool]:
    """Whether the x and the w that ``pass_`` reads are finite (True where it reads none)."""
    if pass_ is Pass.FORWARD:
        return True, True
    if pass_ is Pass.INPUT_GRADIENT:
        return True, _finite(arrays[1])
    return _finite(arrays[1]), _finite(arrays[2])


def _finite(array: np.ndarray | None) -> bool:
    return array is None or bool(np.isfinite(array).all())


def _compute(
    pass_: Pass,
    selection: Selection,
    geometry: ConvGeometry,
    arrays: tuple[np.ndarray | None, ...],
    out: np.ndarray | None = None,
) -> Result:
    """The pass on ``selection``'s path. A line runs as a plane one pixel high: its
    (N, ., L) arrays as (N, ., 1, L), the results back. ``out``: where a forward on a path
    of ``WRITES_OUT`` writes its output (C-contiguous), if anywhere."""
    if geometry.rank == 1:
        lifted = tuple(a[:, :, None] if a is not None and a.ndim == 3 else a for a in arrays)
        plane_out = None if out is None else out[:, :, None]
        result = _compute(pass_, selection, geometry.planar(), lifted, plane_out)
        if out is not None and result is plane_out:
            return out
        outputs = result if isinstance(result, tuple) else (result,)
        lines = tuple(a[:, :, 0] if a.ndim == 4 else a for a in outputs)
        return lines if isinstance(result, tuple) else lines[0]
    if selection.path is Path.EMPTY:
        return _nothing_read(pass_, geometry, arrays)
    if selection.path is Path.VOLUME:
        return _volume(pass_, geometry, arrays)
    if selection.path is Path.PHASES:
        dout, w = cast(tuple[np.ndarray, np.ndarray], arrays)
        return phases.input_gradient(dout, w, geometry, _phase_forward())
    if selection.path is Path.SUBPIXEL:
        dout, w = cast(tuple[np.ndarray, np.ndarray], arrays)
        return subpixel.input_gradient(dout, w, geometry, _slice_forward)
    compute = getattr(KERNELS[selection.path], pass_.value)
    if pass_ is Pass.FORWARD and out is not None and selection.path in WRITES_OUT:
        compute(*arrays, geometry, out=out)
        return out
    if pass_ is Pass.FORWARD:
        return cast(Result, compute(*arrays, geometry))
    return cast(Result, compute(*arrays, geometry, selection.wide_rows))


def _nothing_read(
    pass_: Pass, geometry: ConvGeometry, arrays: tuple[np.ndarray | None, ...]
) -> Result:
    """A piece whose windows read padding alone (a phase of a transposed layer that crops
    everything its pixels add): the output is the bias, the gradients are zero."""
    first, second = cast(np.ndarray, arrays[0]), cast(np.ndarray, arrays[1])
    if pass_ is Pass.FORWARD:
        out = np.zeros(geometry.out_shape, dtype=first.dtype)
        b = arrays[2]
        return out if b is None else out + b.reshape(-1, *(1,) * geometry.rank)
    if pass_ is Pass.INPUT_GRADIENT:
        return np.zeros(geometry.x_shape, dtype=first.dtype)
    w = cast(np.ndarray, arrays[2])
    if pass_ is Pass.WEIGHT_GRADIENT:
        return np.zeros_like(w)
    return np.zeros_like(second), np.zeros_like(w), first.sum(axis=(0, *range(2, first.ndim)))


def _volume(pass_: Pass, geometry: ConvGeometry, arrays: tuple[np.ndarray | None, ...]) -> Result:
    """Depth slices, each a planar piece selected for with its own data."""
    if pass_ is Pass.FORWARD:
        x, w, b = arrays
        return volume.forward(cast(np.ndarray, x), cast(np.ndarray, w), b, geometry, _slice_forward)
    if pass_ is Pass.INPUT_GRADIENT:
        dout, w = cast(tuple[np.ndarray, np.ndarray], arrays)
        return volume.input_gradient(dout, w, geometry, _slice_input_gradient)
    dout, x, w = cast(tuple[np.ndarray, np.ndarray, np.ndarray], arrays)
    gradients = volume.backward(dout, x, w, geometry, _slice_backward)
    return gradients if pass_ is Pass.BACKWARD else gradients[1]


def _phase_forward() -> phases.Forward:
    """The forward pass of each phase of one input gradient, selected for once per phase
    shape: a 16x16 patch has 256 phases, most of them alike, and only their sizes, kernel
    and padding differ (the rest is the layer's)."""
    chosen: dict[tuple[object, ...], Selection] = {}

    def forward(
        x: np.ndarray, w: np.ndarray, b: np.ndarray | None, phase: ConvGeometry
    ) -> np.ndarray:
        key = (phase.size, phase.kernel, phase.pads, phase.out)
        selection = chosen.get(key)
        if selection is None:
            selection = chosen[key] = select(phase, Pass.FORWARD, x.dtype, split=False)
        return cast(np.ndarray, _compute(Pass.FORWARD, selection, phase, (x, w, b)))

    return forward


def _slice_forward(x: np.ndarray, w: np.ndarray, plane: ConvGeometry) -> np.ndarray:
    """A depth slice's forward pass, or the sub-pixel path's stacked one: a piece of its own."""
    return cast(np.ndarray, _piece(Pass.FORWARD, (x, w, None), plane))


def _slice_input_gradient(dout: np.ndarray, w: np.ndarray, plane: ConvGeometry) -> np.ndarray:
    return cast(np.ndarray, _piece(Pass.INPUT_GRADIENT, (dout, w), plane))


def _slice_backward(
    dout: np.ndarray, x: np.ndarray, w: np.ndarray, plane: ConvGeometry
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    result = _piece(Pass.BACKWARD, (dout, x, w), plane)
    return cast(tuple[np.ndarray, np.ndarray, np.ndarray], result)
