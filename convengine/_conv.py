"""The convolution's forward and backward passes: im2col, one GEMM per chunk, col2im.

Dtype rule: the computation, the output and every gradient take x's dtype, float32 or
float64; w, b and dout are converted to it (float to float only). Any other dtype is a
DTypeError: the engine never guesses how an integer image should be scaled.
"""

from __future__ import annotations

from dataclasses import replace
from typing import cast

import numpy as np
from numpy.typing import ArrayLike, DTypeLike

from . import _depthwise
from ._errors import DTypeError, ShapeError
from ._geometry import ConvGeometry
from ._im2col import Canvas, FieldRuns, batch_chunks, row_width, workspace

__all__ = ["as_float_array", "as_float_dtype", "exchange_channels"]

_FLOAT_DTYPES = (np.dtype(np.float32), np.dtype(np.float64))
DEPTHWISE_CHUNK_BYTES = 1 << 20
# Elements one kernel offset of one image copies, from which im2col reads x directly.
DIRECT_IM2COL_MIN_ELEMENTS = 1 << 13


def as_float_array(value: ArrayLike, field: str, dtype: np.dtype | None = None) -> np.ndarray:
    """``value`` as a float32 or float64 array, converted to ``dtype`` when one is given."""
    try:
        array = np.asarray(value)
    except (TypeError, ValueError) as exc:
        raise ShapeError(
            f"{field} is not a rectangular array of numbers: {exc}", field=field
        ) from exc
    as_float_dtype(array.dtype, field)
    return array if dtype is None else array.astype(dtype, copy=False)


def as_float_dtype(dtype: DTypeLike, field: str) -> np.dtype:
    """``dtype`` if the engine computes in it (float32 or float64), else a DTypeError."""
    try:
        checked = np.dtype(dtype)
    except TypeError as exc:
        raise DTypeError(f"{field} has no dtype NumPy knows: {dtype!r:.40}", field=field) from exc
    if checked not in _FLOAT_DTYPES:
        raise DTypeError(
            f"{field} has dtype {checked}; the engine computes in float32 or float64: "
            f"convert {field} to one of them",
            field=field,
        )
    return checked


def _forward(
    x: np.ndarray, w: np.ndarray, b: np.ndarray | None, geometry: ConvGeometry
) -> np.ndarray:
    """The forward pass on checked arrays of one dtype, for a core geometry (zero padding,
    every padded pixel read: see :meth:`ConvGeometry.core`).

    x (N, C, H, W), w (F, C/groups, KH, KW), b (F,) or None -> out (N, F, H_out, W_out)
    """
    x = np.ascontiguousarray(x)
    if not _is_depthwise(geometry):
        return _gemm_forward(x, w, b, geometry)
    if _depthwise.supports(_as_depthwise_geometry(geometry)):
        repeated, g = _as_depthwise(x, geometry)
        out = _depthwise.forward(repeated, np.ascontiguousarray(w), g)
    else:
        out = _depthwise_forward(x, w, geometry)
    if b is not None:
        out += b[:, None, None]
    return out


def _backward(
    dout: np.ndarray, x: np.ndarray, w: np.ndarray, geometry: ConvGeometry
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """The backward pass on checked arrays of one dtype, for a core geometry.

    dout (N, F, H_out, W_out), x (N, C, H, W), w (F, C/groups, KH, KW) -> dx, dw, db
    """
    x, dout = np.ascontiguousarray(x), np.ascontiguousarray(dout)
    # Junk columns of wide rows meet zeros in dout; inf * 0 would leak NaN into real pixels.
    finite = bool(np.isfinite(x).all() and np.isfinite(w).all())
    width = row_width(geometry, wide=finite)
    if _is_depthwise(geometry) and finite and _depthwise.supports(_as_depthwise_geometry(geometry)):
        dx, dw = _flat_depthwise_backward(dout, x, w, geometry)
    elif _is_depthwise(geometry):
        dx, dw = _depthwise_backward(dout, x, w, geometry, width)
    else:
        gemm_dx, dw = _gemm_backward(dout, x, w, geometry, width)
        dx = cast(np.ndarray, gemm_dx)
    return dx, dw, dout.sum(axis=(0, 2, 3))


def _is_depthwise(geometry: ConvGeometry) -> bool:
    return geometry.c_per_group == 1 and geometry.groups > 1


def _is_pointwise(geometry: ConvGeometry) -> bool:
    """A 1x1 kernel with stride 1 and no padding: the image already is its im2col matrix."""
    g = geometry
    return g.kernel == (1, 1) and g.stride == (1, 1) and not g.is_padded


def _wide(rows: np.ndarray, geometry: ConvGeometry, width: int, slot: str) -> np.ndarray:
    """rows (n, groups, F/groups, H_out, W_out) widened to ``width`` columns, junk zeroed."""
    if width == geometry.w_out:
        return rows
    wide = workspace(slot, (*rows.shape[:-1], width), rows.dtype)
    wide[..., geometry.w_out :] = 0
    wide[..., : geometry.w_out] = rows
    return wide


def _gemm_forward(
    x: np.ndarray, w: np.ndarray, b: np.ndarray | None, geometry: ConvGeometry
) -> np.ndarray:
    """The forward pass as GEMMs; shapes as in :func:`_forward`."""
    g = geometry
    if _is_pointwise(g):
        return _pointwise_forward(x, w, b, g)
    # Wide rows are not used here: cropping the wide output cost more than they saved. Without
    # groups the bias rides in the GEMM as one more row of cols (all ones) and column of w:
    # 0.03-0.2 ms less per image than adding it afterwards (mid, strided and stem GEMMs).
    fold_bias = b is not None and g.groups == 1
    w_rows = w.reshape(g.groups, g.f_per_group, g.col_rows)
    if b is not None and fold_bias:
        w_rows = np.concatenate([w_rows, b.reshape(1, g.f, 1)], axis=2)
    runs = FieldRuns.of(g) if _reads_input_directly(g) else None
    fields = None if runs else Canvas.of(x, g, "x", g.w_out).fields()
    chunks = batch_chunks(g, x.dtype.itemsize)
    # cols: (n, groups, C/groups*KH*KW (+1), H_out*W_out). The first chunk is the largest, and
    # later ones reuse its buffer: the padding's zeros and the ones are written once.
    all_cols = workspace(
        "cols", (chunks[0].stop, g.groups, g.col_rows + fold_bias, g.positions), x.dtype
    )
    if runs is not None:
        runs.zero_padding(_field_view(all_cols, g))
    if fold_bias:
        all_cols[:, :, -1] = 1
    # out: (N, groups, F/groups, H_out*W_out), which is NCHW once reshaped: no transpose.
    out = np.empty((g.n, g.groups, g.f_per_group, g.positions), dtype=x.dtype)
    for chunk in chunks:
        cols = all_cols[: chunk.stop - chunk.start]
        if fields is not None:
            np.copyto(_field_view(cols, g), fields[chunk])
        elif runs is not None:
            runs.copy_inside(x[chunk], _field_view(cols, g))
        np.matmul(w_rows, cols, out=out[chunk])
    if b is not None and not fold_bias:
        out += b.reshape(g.groups, g.f_per_group, 1)
    return out.reshape(g.out_shape)


def _reads_input_directly(g: ConvGeometry) -> bool:
    """Whether im2col should skip the padded copy of the batch (see :class:`FieldRuns`).

    It pays where each kernel offset copies much (CPU time of the copies, float32: mid 3x3
    3.2 against 3.8 ms, strided 3x3 s2 1.6 against 2.0 ms), not where the calls are many and
    small (7x7 stem 2.9 against 2.7 ms; small 0.038 against 0.021 ms).
    """
    return g.kernel[0] * g.kernel[1] <= 9 and g.c * g.positions >= DIRECT_IM2COL_MIN_ELEMENTS


def _field_view(cols: np.ndarray, g: ConvGeometry) -> np.ndarray:
    """cols (n, groups, rows, H_out*W_out) -> its field rows (n, C, KH, KW, H_out, W_out), a view.

    A ones row exists only without groups, so the reshape splits axes and never copies.
    """
    return cols[:, :, : g.col_rows].reshape(cols.shape[0], g.c, *g.kernel, g.h_out, g.w_out)


def _pointwise_forward(
    x: np.ndarray, w: np.ndarray, b: np.ndarray | None, g: ConvGeometry
) -> np.ndarray:
    """A 1x1 kernel, stride 1, no padding: x already is its im2col matrix."""
    w_rows = w.reshape(g.groups, g.f_per_group, g.col_rows)
    out = np.empty((g.n, g.groups, g.f_per_group, g.positions), dtype=x.dtype)
    for chunk in batch_chunks(g, x.dtype.itemsize):
        cols_rows = x[chunk].reshape(-1, g.groups, g.col_rows, g.positions)
        np.matmul(w_rows, cols_rows, out=out[chunk])
    if b is not None:
        out += b.reshape(g.groups, g.f_per_group, 1)
    return out.reshape(g.out_shape)


def _gemm_backward(
    dout: np.ndarray,
    x: np.ndarray,
    w: np.ndarray,
    geometry: ConvGeometry,
    width: int,
    input_gradient: bool = True,
) -> tuple[np.ndarray | None, np.ndarray]:
    """dx (None unless ``input_gradient``) and dw; shapes as in :func:`_backward`."""
    g = geometry
    pointwise = _is_pointwise(g)
    dx: np.ndarray | None = None
    dcanvas: Canvas | None = None
    if pointwise:
        width = g.w_out
        dx = np.empty_like(x) if input_gradient else None
    else:
        # Wide rows need the padded canvas (their runs wrap through its padding columns).
        runs = FieldRuns.of(g) if width == g.w_out and _reads_input_directly(g) else None
        fields = None if runs else Canvas.of(x, g, "x", width).fields()
        dcanvas = Canvas.blank(g, x.dtype, "dx", width) if input_gradient else None
    w_cols = w.reshape(g.groups, g.f_per_group, g.col_rows).transpose(0, 2, 1)
    dout_groups = dout.reshape(g.n, g.groups, g.f_per_group, g.h_out, g.w_out)
    dw_rows = np.zeros((g.groups, g.f_per_group, g.col_rows), dtype=x.dtype)
    dw_image = np.empty_like(dw_rows)
    for chunk in batch_chunks(g, x.dtype.itemsize):
        n = chunk.stop - chunk.start
        dout_rows = _wide(dout_groups[chunk], g, width, "dout").reshape(
            n, g.groups, g.f_per_group, -1
        )
        if pointwise:
            cols_rows = x[chunk].reshape(n, g.groups, g.col_rows, -1)
        else:
            cols = workspace("cols", (n, g.c, *g.kernel, g.h_out, width), x.dtype)
            if fields is not None:
                np.copyto(cols, fields[chunk])
            elif runs is not None:
                # Every chunk: the previous one's column gradients overwrote the zeros.
                runs.zero_padding(cols)
                runs.copy_inside(x[chunk], cols)
            cols_rows = cols.reshape(n, g.groups, g.col_rows, -1)
        for image, image_cols in zip(dout_rows, cols_rows, strict=True):
            np.matmul(image, image_cols.transpose(0, 2, 1), out=dw_image)
            dw_rows += dw_image
        if dx is not None:
            np.matmul(w_cols, dout_rows, out=dx[chunk].reshape(cols_rows.shape))
        elif dcanvas is not None:
            # The columns are consumed: their buffer now receives the column gradients.
            np.matmul(w_cols, dout_rows, out=cols_rows)
            dcanvas.col2im_add(cols, chunk)
    if not pointwise and dcanvas is not None:
        dx = dcanvas.interior().copy()
    return dx, dw_rows.reshape(w.shape)


def _weight_gradient(
    dout: np.ndarray, x: np.ndarray, w: np.ndarray, geometry: ConvGeometry
) -> np.ndarray:
    """dw alone, for a core planar geometry: no column gradients, no col2im. A transposed
    convolution's weight gradient is this, with x and dout in each other's roles.

    dout (N, F, H_out, W_out), x (N, C, H, W), w (F, C/groups, KH, KW) -> dw
    """
    if _is_depthwise(geometry):  # its own passes compute dx and dw together
        return _backward(dout, x, w, geometry)[1]
    x, dout = np.ascontiguousarray(x), np.ascontiguousarray(dout)
    width = row_width(geometry, wide=bool(np.isfinite(x).all()))
    return _gemm_backward(dout, x, w, geometry, width, input_gradient=False)[1]


def exchange_channels(w: np.ndarray, geometry: ConvGeometry) -> np.ndarray:
    """w (F, C/groups, *taps) -> (C, F/groups, *taps): the kernel that maps the F output
    channels back onto the C input channels, group by group, as an input gradient gathered as a
    convolution needs. The taps stay as given (callers pick and flip them).
    """
    g, taps = geometry, w.shape[2:]
    per_group = w.reshape(g.groups, g.f_per_group, g.c_per_group, *taps)
    return np.ascontiguousarray(per_group.swapaxes(1, 2)).reshape(g.c, g.f_per_group, *taps)


def _as_depthwise(x: np.ndarray, geometry: ConvGeometry) -> tuple[np.ndarray, ConvGeometry]:
    """One input channel per filter: x repeated for each group's F/groups filters.

    -> (N, F, H, W) and the geometry of that convolution, with groups = C = F.
    """
    if geometry.f_per_group == 1:
        return x, geometry
    repeated = np.repeat(x, geometry.f_per_group, axis=1)
    return repeated, _as_depthwise_geometry(geometry)


def _as_depthwise_geometry(geometry: ConvGeometry) -> ConvGeometry:
    if geometry.f_per_group == 1:
        return geometry
    return replace(geometry, c=geometry.f, groups=geometry.f)


def _depthwise_chunks(geometry: ConvGeometry, width: int, itemsize: int) -> list[slice]:
    # Each kernel offset makes a pass over the chunk's output: keeping that output in the L2
    # cache halved the time against whole-batch passes.
    per_image = geometry.f * geometry.h_out * width * itemsize
    step = max(1, DEPTHWISE_CHUNK_BYTES // per_image)
    return [slice(start, start + step) for start in range(0, geometry.n, step)]


def _depthwise_forward(x: np.ndarray, w: np.ndarray, geometry: ConvGeometry) -> np.ndarray:
    # One input channel per group makes each GEMM a single row: multiply-adds over whole
    # feature maps, one per kernel offset, beat C tiny GEMMs.
    x, g = _as_depthwise(x, geometry)
    width = row_width(g)
    fields = Canvas.of(x, g, "x", width).fields()
    out = np.empty((g.n, g.f, g.h_out, width), dtype=x.dtype)
    for chunk in _depthwise_chunks(g, width, x.dtype.itemsize):
        out_chunk, chunk_fields = out[chunk], fields[chunk]
        term = workspace("term", out_chunk.shape, x.dtype)
        out_chunk.fill(0)
        for i in range(g.kernel[0]):
            for j in range(g.kernel[1]):
                np.multiply(chunk_fields[:, :, i, j], w[:, 0, i, j, None, None], out=term)
                out_chunk += term
    return out if width == g.w_out else out[..., : g.w_out].copy()


def _flat_depthwise_backward(
    dout: np.ndarray, x: np.ndarray, w: np.ndarray, geometry: ConvGeometry
) -> tuple[np.ndarray, np.ndarray]:
    """Depthwise backward by :mod:`._depthwise`'s flat planes; shapes as in :func:`_backward`."""
    repeated, g = _as_depthwise(x, geometry)
    dx, dw = _depthwise.backward(dout, repeated, np.ascontiguousarray(w), g)
    if geometry.f_per_group > 1:
        dx = dx.reshape(g.n, geometry.c, geometry.f_per_group, g.height, g.width).sum(axis=2)
    return dx, dw


def _depthwise_backward(
    dout: np.ndarray, x: np.ndarray, w: np.ndarray, geometry: ConvGeometry, width: int
) -> tuple[np.ndarray, np.ndarray]:
    x, g = _as_depthwise(x, geometry)
    fields = Canvas.of(x, g, "x", width).fields()
    dcanvas = Canvas.blank(g, x.dtype, "dx", width)
    dout_wide = _wide(dout[:, :, None], g, width, "dout")[:, :, 0]
    dw = np.zeros_like(w)
    targets = dcanvas.targets()
    for chunk in _depthwise_chunks(g, width, x.dtype.itemsize):
        dout_chunk, chunk_fields = dout_wide[chunk], fields[chunk]
        term = workspace("term", dout_chunk.shape, x.dtype)
        for i in range(g.kernel[0]):
            for j in range(g.kernel[1]):
                np.multiply(dout_chunk, chunk_fields[:, :, i, j], out=term)
                dw[:, 0, i, j] += term.sum(axis=(0, 2, 3))
                np.multiply(dout_chunk, w[:, 0, i, j, None, None], out=term)
                targets[chunk, :, i, j] += term
    dx = dcanvas.interior()
    if geometry.f_per_group > 1:
        return dx.reshape(g.n, geometry.c, geometry.f_per_group, g.height, g.width).sum(axis=2), dw
    return dx.copy(), dw


def _backward_input(dout: np.ndarray, w: np.ndarray, geometry: ConvGeometry) -> np.ndarray:
    """dx alone, for a core planar geometry: no weight gradient, so no im2col of x.

    dout (N, F, H_out, W_out), w (F, C/groups, KH, KW) -> dx (N, C, H, W). A transposed
    convolution's forward pass is this input gradient.
    """
    g = geometry
    dout = np.ascontiguousarray(dout)
    if _is_depthwise(g):  # its own passes compute dx and dw together
        return _backward(dout, np.zeros(g.x_shape, dtype=dout.dtype), w, g)[0]
    pointwise = _is_pointwise(g)
    # Junk columns of wide rows meet zeros in dout; inf * 0 would leak NaN into real pixels.
    width = g.w_out if pointwise else row_width(g, wide=bool(np.isfinite(w).all()))
    w_cols = w.reshape(g.groups, g.f_per_group, g.col_rows).transpose(0, 2, 1)
    dout_groups = dout.reshape(g.n, g.groups, g.f_per_group, g.h_out, g.w_out)
    if pointwise:
        dx = np.empty(g.x_shape, dtype=dout.dtype)
    else:
        dcanvas = Canvas.blank(g, dout.dtype, "dx", width)
    for chunk in batch_chunks(g, dout.dtype.itemsize):
        n = chunk.stop - chunk.start
        dout_rows = _wide(dout_groups[chunk], g, width, "dout").reshape(
            n, g.groups, g.f_per_group, -1
        )
        if pointwise:
            np.matmul(w_cols, dout_rows, out=dx[chunk].reshape(n, g.groups, g.col_rows, -1))
            continue
        # cols: (n, C, KH, KW, H_out, width), the column gradients col2im scatters
        cols = workspace("cols", (n, g.c, *g.kernel, g.h_out, width), dout.dtype)
        np.matmul(w_cols, dout_rows, out=cols.reshape(n, g.groups, g.col_rows, -1))
        dcanvas.col2im_add(cols, chunk)
    return dx if pointwise else dcanvas.interior().copy()
