"""The array layouts the paths share: work buffers, the padded canvas and its strided views
(im2col and col2im), batch chunks, wide rows, and the kernel of a gathered input gradient.

The padded batch lives in a flat buffer (a :class:`Canvas`). Its receptive fields are a
zero-copy strided view; im2col is one contiguous copy of that view. When the stride along the
width is 1, the columns use *wide rows*: each output row is ``W_pad`` columns long instead of
``W_out``, so that every kernel offset reads and writes one long contiguous run of the image
instead of ``H_out`` short ones. The ``W_pad - W_out`` extra columns per row are junk: cropped
after the forward GEMM, and zero in the backward pass, where they add nothing.
"""

from __future__ import annotations

import math
import threading
from dataclasses import dataclass

import numpy as np

from .._geometry import ConvGeometry

__all__ = [
    "PATH_FUNCTIONS",
    "Canvas",
    "FieldRuns",
    "batch_chunks",
    "exchange_channels",
    "row_width",
    "workspace",
]

# What a path module offers: a function per pass it runs (named by convengine._kernels.Pass),
# whether it supports a geometry, and its memory bound.
PATH_FUNCTIONS = [
    "backward",
    "forward",
    "input_gradient",
    "supports",
    "weight_gradient",
    "work_elements",
]

# A chunk of im2col columns is kept small (in practice one image of a mid-sized layer), so
# that the GEMM reads it back from cache. Interleaved A/B runs on this machine's kind (mid
# 16x32x56x56, 3x3): 2 MiB chunks took 0.93x the forward and 0.86x the backward time of
# 8 MiB chunks, and 32 MiB was slower still.
CHUNK_BYTES = 2 << 20
# Work buffers up to this size are kept per thread and reused: first-touch page faults of a
# fresh buffer cost more than the copy into it. With five slots a thread keeps at most 160 MiB;
# a mid layer (16x32x56x56) needs about 30 MiB of them.
_KEEP_BYTES = 32 << 20
_local = threading.local()


def workspace(slot: str, shape: tuple[int, ...], dtype: np.dtype) -> np.ndarray:
    """An uninitialised C-contiguous array, reused by later calls on this thread.

    Two slots never alias; a slot's array is overwritten by the next call that takes the slot,
    so nothing taken from here may be returned to a caller.
    """
    nbytes = math.prod(shape) * dtype.itemsize
    buffers: dict[str, np.ndarray] = _local.__dict__.setdefault("buffers", {})
    buffer = buffers.get(slot)
    if buffer is None or buffer.nbytes < nbytes:
        # The smaller buffer goes first: held while the larger one is made, both counted
        # (the forward's columns and the backward's wider ones outgrew the work bound).
        buffers.pop(slot, None)
        del buffer
        buffer = np.empty(max(nbytes, 1), np.uint8)
        if nbytes <= _KEEP_BYTES:
            buffers[slot] = buffer
    return buffer[:nbytes].view(dtype).reshape(shape)


def batch_chunks(geometry: ConvGeometry, itemsize: int) -> list[slice]:
    """Slices of the batch whose im2col columns fit in about ``CHUNK_BYTES``."""
    per_image = geometry.cols_elements() // geometry.n * itemsize
    step = max(1, CHUNK_BYTES // per_image)
    return [slice(start, min(start + step, geometry.n)) for start in range(0, geometry.n, step)]


def row_width(geometry: ConvGeometry, wide: bool = True) -> int:
    """Columns per output row: ``W_pad`` (wide rows) where allowed and worth it, else ``W_out``."""
    padded_width = geometry.padded_hw[1]
    junk = padded_width - geometry.w_out
    if wide and geometry.stride[1] == 1 and 4 * junk <= padded_width:
        return padded_width
    return geometry.w_out


@dataclass(frozen=True)
class Canvas:
    """A zero-padded batch (N, C, H_pad, W_pad) stored flat, with slack for wide rows."""

    flat: np.ndarray
    geometry: ConvGeometry
    width: int

    @classmethod
    def blank(cls, geometry: ConvGeometry, dtype: np.dtype, slot: str, width: int) -> Canvas:
        """An all-zero canvas in the work buffer ``slot``, for columns ``width`` wide."""
        g = geometry
        h_pad, w_pad = g.padded_hw
        (kh, kw), (dh, dw), (sh, sw) = g.kernel, g.dilation, g.stride
        plane = h_pad * w_pad
        # The farthest element a view reads, from the start of a channel's plane: wide rows
        # run past the last plane by up to (KW-1)*dilation elements.
        reach = ((g.h_out - 1) * sh + (kh - 1) * dh) * w_pad + (kw - 1) * dw + (width - 1) * sw
        flat = workspace(slot, (g.n * g.c * plane + max(0, reach + 1 - plane),), dtype)
        flat.fill(0)
        return cls(flat, geometry, width)

    @classmethod
    def of(cls, x: np.ndarray, geometry: ConvGeometry, slot: str, width: int) -> Canvas:
        """x (N, C, H, W) zero-padded on a canvas in the work buffer ``slot``."""
        canvas = cls.blank(geometry, x.dtype, slot, width)
        canvas.interior()[...] = x
        return canvas

    def image(self) -> np.ndarray:
        """The padded batch: (N, C, H_pad, W_pad), a view."""
        g = self.geometry
        return self.flat[: g.n * g.c * g.padded_hw[0] * g.padded_hw[1]].reshape(
            g.n, g.c, *g.padded_hw
        )

    def interior(self) -> np.ndarray:
        """The unpadded batch: (N, C, H, W), a view."""
        g = self.geometry
        top, left = g.pad_h[0], g.pad_w[0]
        return self.image()[:, :, top : top + g.height, left : left + g.width]

    def fields(self) -> np.ndarray:
        """Every receptive field, without copying: (N, C, KH, KW, H_out, width), read-only."""
        return self._windows(writeable=False)

    def targets(self) -> np.ndarray:
        """The same windows, writable, for scattering gradients back.

        Windows of different kernel offsets overlap: write through one offset ``[:, :, i, j]``
        at a time.
        """
        return self._windows(writeable=True)

    def _windows(self, writeable: bool) -> np.ndarray:
        g, step = self.geometry, self.flat.itemsize
        h_pad, w_pad = g.padded_hw
        (kh, kw), (dh, dw), (sh, sw) = g.kernel, g.dilation, g.stride
        shape = (g.n, g.c, kh, kw, g.h_out, self.width)
        strides = (g.c * h_pad * w_pad, h_pad * w_pad, dh * w_pad, dw, sh * w_pad, sw)
        # np.ndarray over the buffer, not as_strided: a few microseconds less per call, which
        # small layers feel, and it refuses a view that would reach past the buffer.
        windows = np.ndarray(
            shape, self.flat.dtype, self.flat, strides=tuple(s * step for s in strides)
        )
        windows.flags.writeable = writeable
        return windows

    def col2im_add(self, dcols: np.ndarray, batch: slice) -> None:
        """Add the column gradients (n, C, KH, KW, H_out, width) of ``batch`` onto the canvas.

        One strided slice-add per kernel offset. Junk columns of wide rows must be zero.
        """
        targets = self.targets()[batch]
        kh, kw = self.geometry.kernel
        for i in range(kh):
            for j in range(kw):
                targets[:, :, i, j] += dcols[:, :, i, j]


def _inside(size: int, pad_before: int, out_size: int, stride: int, offset: int) -> slice:
    """Output indices o whose input index ``o*stride + offset - pad_before`` is in the image."""
    first = max(0, -(-(pad_before - offset) // stride))
    stop = min(out_size, (size - 1 + pad_before - offset) // stride + 1)
    return slice(first, max(first, stop))


@dataclass(frozen=True)
class FieldRuns:
    """im2col straight from the unpadded input: no padded copy of the batch is made.

    For each kernel offset (i, j), ``inside[(i, j)]`` is the block of output positions whose
    field pixel lies in the image; the rest of that offset's columns read padding, and are
    zeroed once per buffer by :meth:`zero_padding`.
    """

    geometry: ConvGeometry
    inside: dict[tuple[int, int], tuple[slice, slice]]

    @classmethod
    def of(cls, geometry: ConvGeometry) -> FieldRuns:
        g = geometry
        inside = {}
        for i in range(g.kernel[0]):
            rows = _inside(g.height, g.pad_h[0], g.h_out, g.stride[0], i * g.dilation[0])
            for j in range(g.kernel[1]):
                cols = _inside(g.width, g.pad_w[0], g.w_out, g.stride[1], j * g.dilation[1])
                inside[i, j] = rows, cols
        return cls(geometry, inside)

    def zero_padding(self, cols: np.ndarray) -> None:
        """Zero what reads padding in cols (n, C, KH, KW, H_out, W_out): top, bottom, sides."""
        for (i, j), (rows, columns) in self.inside.items():
            tap = cols[:, :, i, j]
            tap[:, :, : rows.start] = 0
            tap[:, :, rows.stop :] = 0
            tap[:, :, rows, : columns.start] = 0
            tap[:, :, rows, columns.stop :] = 0

    def copy_inside(self, x: np.ndarray, cols: np.ndarray) -> None:
        """Copy the image pixels of the fields of x (n, C, H, W) into cols, as above."""
        g = self.geometry
        (sh, sw), (dh, dw) = g.stride, g.dilation
        for (i, j), (rows, columns) in self.inside.items():
            if rows.start == rows.stop or columns.start == columns.stop:
                continue
            top = rows.start * sh + i * dh - g.pad_h[0]
            left = columns.start * sw + j * dw - g.pad_w[0]
            pixels = x[
                :,
                :,
                top : top + (rows.stop - rows.start - 1) * sh + 1 : sh,
                left : left + (columns.stop - columns.start - 1) * sw + 1 : sw,
            ]
            cols[:, :, i, j, rows, columns] = pixels


def exchange_channels(w: np.ndarray, geometry: ConvGeometry) -> np.ndarray:
    """w (F, C/groups, *taps) -> (C, F/groups, *taps): the kernel that maps the F output
    channels back onto the C input channels, group by group, as an input gradient gathered as a
    convolution needs. The taps stay as given (callers pick and flip them).
    """
    g, taps = geometry, w.shape[2:]
    per_group = w.reshape(g.groups, g.f_per_group, g.c_per_group, *taps)
    return np.ascontiguousarray(per_group.swapaxes(1, 2)).reshape(g.c, g.f_per_group, *taps)
