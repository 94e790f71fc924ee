"""The general path: im2col, one GEMM per chunk of the batch, col2im.

Any planar core geometry (zero padding, every padded pixel read): the columns of a chunk of
images are copied out of the padded batch (or straight out of x, see
:class:`.layout.FieldRuns`), multiplied by the kernel's rows in one batched GEMM, and in the
backward pass the column gradients are added back by one strided slice-add per kernel offset
(for strided layers onto a :class:`PhaseCanvas`, where each add steps by one pixel).
"""

from __future__ import annotations

import math
from collections.abc import Iterator
from dataclasses import dataclass
from typing import cast

import numpy as np

from .._geometry import ConvGeometry
from .layout import (
    CHUNK_BYTES,
    PATH_FUNCTIONS,
    Canvas,
    FieldRuns,
    batch_chunks,
    row_width,
    workspace,
)

__all__ = [*PATH_FUNCTIONS, "add_weight_gradient", "widened"]

# Elements one kernel offset of one image copies, from which im2col reads x directly.
DIRECT_IM2COL_MIN_ELEMENTS = 1 << 13
# Field copies of each input pixel from which a forward in row blocks copies its fields from
# x split by stride phase (see :func:`_field_source`).
PHASE_FIELD_COPIES = 8


def supports(geometry: ConvGeometry) -> bool:
    """Every planar core geometry: the path the others fall back to."""
    return geometry.rank == 2


def work_elements(geometry: ConvGeometry) -> int:
    """An upper bound on the array elements one pass of a planar geometry allocates here.

    Padded input and its gradient (with a row of slack each, or split by phase with each
    phase rounded up to whole strides), one chunk of columns in wide rows, output and output
    gradient in wide rows, and the input gradient copied out of its canvas (which the output
    terms covered only while F >= C: a strided layer with fewer filters than channels
    outgrew the bound). One chunk: one image's columns, with a row of ones for the bias, or
    as many images as fit in 2 MiB of columns (counted as float32 elements, more than
    float64 needs), which the ones row can double (one channel, 1x1) and wide rows grow by
    4/3.
    """
    g = geometry
    h_pad, w_pad = g.padded_hw
    channels = max(g.c, g.f)
    canvas = max(g.n * channels * (h_pad + 1) * w_pad, PhaseCanvas.elements(g, channels))
    image_cols = (g.c * g.kernel[0] * g.kernel[1] + 1) * g.h_out * w_pad
    chunk_cols = min(g.n * image_cols, max(image_cols, 2 * (2 << 20) // 4))
    outputs = g.n * g.f * g.h_out * w_pad
    dx = g.n * g.c * g.height * g.width
    return 2 * canvas + chunk_cols + 2 * outputs + dx


def forward(
    x: np.ndarray,
    w: np.ndarray,
    b: np.ndarray | None,
    geometry: ConvGeometry,
    out: np.ndarray | None = None,
) -> np.ndarray:
    """x (N, C, H, W), w (F, C/groups, KH, KW), b (F,) or None -> out (N, F, H_out, W_out),
    written into ``out`` where one is given (C-contiguous)."""
    g = geometry
    x = np.ascontiguousarray(x)
    # Wide rows are not used here: cropping the wide output cost more than they saved. Without
    # groups the bias rides in the GEMM as one more row of cols (all ones) and column of w:
    # 0.03-0.2 ms less per image than adding it afterwards (mid, strided and stem GEMMs).
    fold_bias = b is not None and g.groups == 1
    w_rows = w.reshape(g.groups, g.f_per_group, g.col_rows)
    if b is not None and fold_bias:
        w_rows = np.concatenate([w_rows, b.reshape(1, g.f, 1)], axis=2)
    runs = FieldRuns.of(g) if _reads_input_directly(g) else None
    if out is None:
        out = np.empty(g.out_shape, dtype=x.dtype)
    # rows: (N, groups, F/groups, H_out*W_out), a view of out (NCHW): no transpose.
    rows = out.reshape(g.n, g.groups, g.f_per_group, g.positions)
    if runs is None and g.cols_elements() // g.n * x.dtype.itemsize > CHUNK_BYTES:
        _forward_in_row_blocks(_field_source(x, g), w_rows, rows, g)
    else:
        fields = None if runs else Canvas.of(x, g, "x", g.w_out).fields()
        _forward_in_chunks(x, fields, runs, w_rows, rows, g)
    if b is not None and not fold_bias:
        rows += b.reshape(g.groups, g.f_per_group, 1)
    return out


def _forward_in_chunks(
    x: np.ndarray,
    fields: np.ndarray | None,
    runs: FieldRuns | None,
    w_rows: np.ndarray,
    out: np.ndarray,
    geometry: ConvGeometry,
) -> None:
    """The forward GEMMs a chunk of images at a time, columns copied from the canvas's
    ``fields`` or by ``runs`` from x; w_rows and out as :func:`_forward_in_row_blocks` takes
    them."""
    g = geometry
    fold_bias = w_rows.shape[2] > g.col_rows
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
    for chunk in chunks:
        cols = all_cols[: chunk.stop - chunk.start]
        if fields is not None:
            np.copyto(_field_view(cols, g), fields[chunk])
        elif runs is not None:
            runs.copy_inside(x[chunk], _field_view(cols, g))
        np.matmul(w_rows, cols, out=out[chunk])


def _field_source(x: np.ndarray, g: ConvGeometry) -> np.ndarray | PhaseCanvas:
    """Where :func:`_forward_in_row_blocks` copies fields from: the canvas's fields (N, C, KH,
    KW, H_out, W_out), or x split by phase, whose fields' rows are runs of adjacent pixels.

    Splitting costs one more copy of x than padding it (0.4 ms for 8x64x56x56 in float32),
    won back where the fields copy each pixel many times: taken from ``PHASE_FIELD_COPIES``
    copies per pixel (KH*KW / (SH*SW)). CPU time on one thread, float32: the 7x7 stride-2
    stem (12 copies a pixel) 12.4 against 13.1 ms, float64 even; the 4x4 stride-2 forward
    of the upsample layer's backward (4 a pixel) 21.2 against 20.3.
    """
    copies = g.kernel[0] * g.kernel[1] / (g.stride[0] * g.stride[1])
    if g.stride != (1, 1) and copies >= PHASE_FIELD_COPIES:
        return PhaseCanvas.of(x, g, "x")
    return Canvas.of(x, g, "x", g.w_out).fields()


def _forward_in_row_blocks(
    source: np.ndarray | PhaseCanvas, w_rows: np.ndarray, out: np.ndarray, geometry: ConvGeometry
) -> None:
    """The forward GEMMs of an image whose columns outgrow ``CHUNK_BYTES``, a block of output
    rows at a time, so that the columns are copied into and read back from cache: the 7x7
    stem's are 7.4 MB an image in float32 (CPU time with one BLAS thread, whole images 15.8
    ms, blocks of 16 rows 13.0 ms). source: as :func:`_field_source` gives it; w_rows
    (groups, F/groups, C/groups*KH*KW, with the bias column if it has one) -> out (N,
    groups, F/groups, H_out*W_out), written in place."""
    g = geometry
    fold_bias = w_rows.shape[2] > g.col_rows  # then groups == 1: the ones row splits nothing
    rows_bytes = (g.col_rows + fold_bias) * g.groups * g.w_out * out.itemsize
    step = max(1, CHUNK_BYTES // rows_bytes)
    out_rows = out.reshape(g.n, g.groups, g.f_per_group, g.h_out, g.w_out)
    for image in range(g.n):
        for top in range(0, g.h_out, step):
            rows = min(step, g.h_out - top)
            # cols: (groups, C/groups*KH*KW (+1), rows*W_out)
            cols = workspace("cols", (g.groups, g.col_rows + fold_bias, rows * g.w_out), out.dtype)
            if fold_bias:
                cols[:, -1] = 1
            block = cols[:, : g.col_rows].reshape(g.c, *g.kernel, rows, g.w_out)
            if isinstance(source, PhaseCanvas):
                source.copy_fields(image, top, block)
            else:
                np.copyto(block, source[image, :, :, :, top : top + rows])
            target = out_rows[image, :, :, top : top + rows]
            np.matmul(w_rows, cols, out=target.reshape(g.groups, g.f_per_group, -1))


def backward(
    dout: np.ndarray, x: np.ndarray, w: np.ndarray, geometry: ConvGeometry, wide: bool
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """dout (N, F, H_out, W_out), x (N, C, H, W), w (F, C/groups, KH, KW) -> dx, dw, db.

    wide: whether wide rows may be used (their junk columns meet zeros in dout, and inf * 0
    would leak NaN into real pixels: the selector allows them for finite x and w only).
    """
    x, dout = np.ascontiguousarray(x), np.ascontiguousarray(dout)
    dx, dw = _backward(dout, x, w, geometry, row_width(geometry, wide=wide))
    return cast(np.ndarray, dx), dw, dout.sum(axis=(0, 2, 3))


def weight_gradient(
    dout: np.ndarray, x: np.ndarray, w: np.ndarray, geometry: ConvGeometry, wide: bool
) -> np.ndarray:
    """dw alone: no column gradients, no col2im. A transposed convolution's weight gradient is
    this, with x and dout in each other's roles. Shapes as in :func:`backward`."""
    x, dout = np.ascontiguousarray(x), np.ascontiguousarray(dout)
    width = row_width(geometry, wide=wide)
    return _backward(dout, x, w, geometry, width, input_gradient=False)[1]


def input_gradient(
    dout: np.ndarray, w: np.ndarray, geometry: ConvGeometry, wide: bool
) -> np.ndarray:
    """dx alone, no im2col of x: dout (N, F, H_out, W_out), w (F, C/groups, KH, KW)
    -> dx (N, C, H, W). A transposed convolution's forward pass is this input gradient.

    wide: whether wide rows may be used (for finite w only: junk columns meet zeros in dout).
    """
    g = geometry
    dout = np.ascontiguousarray(dout)
    width = row_width(g, wide=wide)
    w_cols = w.reshape(g.groups, g.f_per_group, g.col_rows).transpose(0, 2, 1)
    dout_groups = dout.reshape(g.n, g.groups, g.f_per_group, g.h_out, g.w_out)
    dcanvas = _gradient_canvas(g, dout.dtype, width)
    for chunk in batch_chunks(g, dout.dtype.itemsize):
        n = chunk.stop - chunk.start
        dout_rows = widened(dout_groups[chunk], g, width, "dout").reshape(
            n, g.groups, g.f_per_group, -1
        )
        # cols: (n, C, KH, KW, H_out, width), the column gradients col2im scatters
        cols = workspace("cols", (n, g.c, *g.kernel, g.h_out, width), dout.dtype)
        np.matmul(w_cols, dout_rows, out=cols.reshape(n, g.groups, g.col_rows, -1))
        dcanvas.col2im_add(cols, chunk)
    return _copied_interior(dcanvas)


def widened(rows: np.ndarray, geometry: ConvGeometry, width: int, slot: str) -> np.ndarray:
    """rows (n, groups, F/groups, H_out, W_out) widened to ``width`` columns, junk zeroed."""
    if width == geometry.w_out:
        return rows
    wide = workspace(slot, (*rows.shape[:-1], width), rows.dtype)
    wide[..., geometry.w_out :] = 0
    wide[..., : geometry.w_out] = rows
    return wide


def add_weight_gradient(
    dw_rows: np.ndarray, dout_rows: np.ndarray, cols_rows: np.ndarray, dw_image: np.ndarray
) -> None:
    """dw_rows += each image's dout_rows @ cols_rows.T, image by image, in batch order."""
    for image, image_cols in zip(dout_rows, cols_rows, strict=True):
        np.matmul(image, image_cols.transpose(0, 2, 1), out=dw_image)
        dw_rows += dw_image


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


def _backward(
    dout: np.ndarray,
    x: np.ndarray,
    w: np.ndarray,
    geometry: ConvGeometry,
    width: int,
    input_gradient: bool = True,
) -> tuple[np.ndarray | None, np.ndarray]:
    """dx (None unless ``input_gradient``) and dw, for contiguous dout and x."""
    g = geometry
    # Wide rows need the padded canvas (their runs wrap through its padding columns).
    runs = FieldRuns.of(g) if width == g.w_out and _reads_input_directly(g) else None
    fields = None if runs else Canvas.of(x, g, "x", width).fields()
    dcanvas = _gradient_canvas(g, x.dtype, width) if input_gradient else None
    w_cols = w.reshape(g.groups, g.f_per_group, g.col_rows).transpose(0, 2, 1)
    dout_groups = dout.reshape(g.n, g.groups, g.f_per_group, g.h_out, g.w_out)
    dw_rows = np.zeros((g.groups, g.f_per_group, g.col_rows), dtype=x.dtype)
    dw_image = np.empty_like(dw_rows)
    for chunk in batch_chunks(g, x.dtype.itemsize):
        n = chunk.stop - chunk.start
        dout_rows = widened(dout_groups[chunk], g, width, "dout").reshape(
            n, g.groups, g.f_per_group, -1
        )
        cols = workspace("cols", (n, g.c, *g.kernel, g.h_out, width), x.dtype)
        if fields is not None:
            np.copyto(cols, fields[chunk])
        elif runs is not None:
            # Every chunk: the previous one's column gradients overwrote the zeros.
            runs.zero_padding(cols)
            runs.copy_inside(x[chunk], cols)
        cols_rows = cols.reshape(n, g.groups, g.col_rows, -1)
        add_weight_gradient(dw_rows, dout_rows, cols_rows, dw_image)
        if dcanvas is not None:
            # The columns are consumed: their buffer now receives the column gradients.
            np.matmul(w_cols, dout_rows, out=cols_rows)
            dcanvas.col2im_add(cols, chunk)
    dx = None if dcanvas is None else _copied_interior(dcanvas)
    return dx, dw_rows.reshape(w.shape)


def _gradient_canvas(g: ConvGeometry, dtype: np.dtype, width: int) -> Canvas | PhaseCanvas:
    """The zero canvas col2im adds onto: split by phase for a strided layer in plain rows."""
    if g.stride != (1, 1) and width == g.w_out:
        return PhaseCanvas.blank(g, dtype, "dx")
    return Canvas.blank(g, dtype, "dx", width)


def _copied_interior(canvas: Canvas | PhaseCanvas) -> np.ndarray:
    """The input gradient on ``canvas``, copied out: (N, C, H, W)."""
    if isinstance(canvas, PhaseCanvas):
        return canvas.interior()
    return canvas.interior().copy()


@dataclass(frozen=True)
class PhaseCanvas:
    """A zero canvas for the input gradient of a strided layer, split by stride phase.

    Padded pixel (y, x) is kept at phase (y % SH, x % SW), place (y // SH, x // SW): each
    kernel offset's column gradients then land on one phase with steps of one pixel, where
    :class:`.layout.Canvas` steps by the stride. CPU time on one thread of the upsample layer's
    forward (the input gradient of 8x64x56x56 from 4x4 stride 2): float32 23.8 against 25.3
    ms, float64 46.3 against 47.1; the stem's backward 31.9 against 36.6 and 61.4 against 66.9.
    """

    # phases: (N, C, SH, SW, ceil(H_pad/SH), ceil(W_pad/SW))
    phases: np.ndarray
    geometry: ConvGeometry

    @classmethod
    def blank(cls, geometry: ConvGeometry, dtype: np.dtype, slot: str) -> PhaseCanvas:
        """An all-zero phase canvas in the work buffer ``slot``."""
        g = geometry
        places = [math.ceil(p / s) for p, s in zip(g.padded_hw, g.stride, strict=True)]
        phases = workspace(slot, (g.n, g.c, *g.stride, *places), dtype)
        phases.fill(0)
        return cls(phases, geometry)

    @classmethod
    def of(cls, x: np.ndarray, geometry: ConvGeometry, slot: str) -> PhaseCanvas:
        """x (N, C, H, W) zero-padded and split by phase, in the work buffer ``slot``."""
        canvas = cls.blank(geometry, x.dtype, slot)
        for target, pixels in canvas._phases_and_pixels(x.shape):
            target[...] = x[pixels]
        return canvas

    @staticmethod
    def elements(geometry: ConvGeometry, channels: int) -> int:
        """The size of a phase canvas of ``channels`` channels (:func:`work_elements`)."""
        g = geometry
        places = [s * math.ceil(p / s) for p, s in zip(g.padded_hw, g.stride, strict=True)]
        return g.n * channels * places[0] * places[1]

    def col2im_add(self, dcols: np.ndarray, batch: slice) -> None:
        """Add the column gradients (n, C, KH, KW, H_out, W_out) of ``batch``, one slice-add
        per kernel offset."""
        g = self.geometry
        (sh, sw), (dh, dw) = g.stride, g.dilation
        phases = self.phases[batch]
        for i in range(g.kernel[0]):
            top, row = divmod(i * dh, sh)
            for j in range(g.kernel[1]):
                left, column = divmod(j * dw, sw)
                target = phases[:, :, row, column, top : top + g.h_out, left : left + g.w_out]
                target += dcols[:, :, i, j]

    def interior(self) -> np.ndarray:
        """The unpadded batch, copied out phase by phase: (N, C, H, W)."""
        g = self.geometry
        dx = np.empty(g.x_shape, dtype=self.phases.dtype)
        for source, pixels in self._phases_and_pixels(g.x_shape):
            dx[pixels] = source
        return dx

    def _phases_and_pixels(
        self, x_shape: tuple[int, ...]
    ) -> Iterator[tuple[np.ndarray, tuple[slice, ...]]]:
        """Per phase: the block of it that holds image pixels, and which pixels of an (N, C,
        H, W) array those are (a strided slice)."""
        g = self.geometry
        (sh, sw), (top, left) = g.stride, (g.pad_h[0], g.pad_w[0])
        height, width = x_shape[2:]
        for row in range(sh):
            first_row = (row - top) % sh  # the first image row in this phase
            rows = len(range(first_row, height, sh))
            up = (first_row + top) // sh
            for column in range(sw):
                first_column = (column - left) % sw
                columns = len(range(first_column, width, sw))
                across = (first_column + left) // sw
                block = self.phases[:, :, row, column, up : up + rows, across : across + columns]
                pixels = slice(first_row, None, sh), slice(first_column, None, sw)
                yield block, (slice(None), slice(None), *pixels)

    def copy_fields(self, image: int, top: int, block: np.ndarray) -> None:
        """Copy the fields of output rows ``top``, ... of one image into block (C, KH, KW,
        rows, W_out): one copy per class of kernel offsets that read one phase."""
        g, phases = self.geometry, self.phases
        # bytes per step of (N, C, SH, SW, place row, place column)
        to_image, to_channel, to_row, to_column, down, right = phases.strides
        for first_i, step_i, count_i, row, up, up_step in _tap_classes(g, 0):
            for first_j, step_j, count_j, column, across, across_step in _tap_classes(g, 1):
                offset = image * to_image + row * to_row + column * to_column
                source = np.ndarray(
                    (g.c, count_i, count_j, block.shape[3], g.w_out),
                    phases.dtype,
                    phases,
                    offset=offset + (top + up) * down + across * right,
                    strides=(to_channel, up_step * down, across_step * right, down, right),
                )
                np.copyto(block[:, first_i::step_i, first_j::step_j], source)


def _tap_classes(g: ConvGeometry, axis: int) -> Iterator[tuple[int, int, int, int, int, int]]:
    """The kernel offsets of ``axis`` by the phase they read: offsets ``first + m*step``
    (``count`` of them) read phase ``phase`` from place ``place + m*place_step`` on. ->
    (first, step, count, phase, place, place_step)."""
    stride, dilation, kernel = g.stride[axis], g.dilation[axis], g.kernel[axis]
    step = stride // math.gcd(stride, dilation)
    for first in range(min(step, kernel)):
        place, phase = divmod(first * dilation, stride)
        yield first, step, len(range(first, kernel, step)), phase, place, step * dilation // stride
