"""im2col and col2im through strided views, and the reusable work buffers behind them."""

from __future__ import annotations

import threading
from collections.abc import Iterator

import numpy as np
from numpy.lib.stride_tricks import as_strided

from ._geometry import ConvGeometry

__all__ = ["batch_chunks", "col2im_add", "offsets", "pad", "windows", "workspace"]

# A chunk of im2col columns is sized to stay in the shared L3 cache (32 MiB here) while the
# GEMM reads it back; bigger chunks measured no faster and cost more memory per request.
CHUNK_BYTES = 8 << 20
# Work buffers up to this size are kept per thread and reused: first-touch page faults of a
# fresh buffer cost more than the copy into it (see ENGINE-NOTES.md).
_KEEP_BYTES = 64 << 20
_local = threading.local()


def workspace(slot: str, shape: tuple[int, ...], dtype: np.dtype) -> np.ndarray:
    """An uninitialised C-contiguous array, reused by later calls on this thread.

    Two slots never alias; one slot's previous array is overwritten by the next request.
    """
    nbytes = int(np.prod(shape)) * dtype.itemsize
    buffers: dict[str, np.ndarray] = _local.__dict__.setdefault("buffers", {})
    buffer = buffers.get(slot)
    if buffer is None or buffer.nbytes < nbytes:
        buffer = np.empty(max(nbytes, 1), np.uint8)
        if nbytes <= _KEEP_BYTES:
            buffers[slot] = buffer
    return buffer[:nbytes].view(dtype).reshape(shape)


def batch_chunks(geometry: ConvGeometry, itemsize: int) -> list[slice]:
    """Slices of the batch whose im2col columns fit in about ``CHUNK_BYTES``."""
    per_image = geometry.cols_elements() // geometry.n * itemsize
    step = max(1, CHUNK_BYTES // per_image)
    return [slice(start, min(start + step, geometry.n)) for start in range(0, geometry.n, step)]


def pad(x: np.ndarray, geometry: ConvGeometry) -> np.ndarray:
    """x (N, C, H, W) zero-padded to (N, C, H_pad, W_pad); x itself when there is no padding."""
    if not geometry.is_padded:
        return x
    (top, _), (left, _) = geometry.pad_h, geometry.pad_w
    padded = np.zeros((*x.shape[:2], *geometry.padded_hw), dtype=x.dtype)
    padded[:, :, top : top + geometry.h, left : left + geometry.w] = x
    return padded


def windows(xp: np.ndarray, geometry: ConvGeometry) -> np.ndarray:
    """A read-only view of every receptive field, without copying.

    xp (N, C, H_pad, W_pad) -> (N, C, KH, KW, H_out, W_out)
    """
    s_n, s_c, s_h, s_w = xp.strides
    (dh, dw), (sh, sw) = geometry.dilation, geometry.stride
    shape = (xp.shape[0], xp.shape[1], *geometry.kernel, geometry.h_out, geometry.w_out)
    strides = (s_n, s_c, dh * s_h, dw * s_w, sh * s_h, sw * s_w)
    return as_strided(xp, shape, strides, writeable=False)


def offsets(geometry: ConvGeometry) -> Iterator[tuple[int, int, tuple[slice, slice]]]:
    """Each kernel offset (i, j) with the (rows, columns) of the padded image it touches."""
    (kh, kw), (dh, dw), (sh, sw) = geometry.kernel, geometry.dilation, geometry.stride
    rows, cols = sh * (geometry.h_out - 1) + 1, sw * (geometry.w_out - 1) + 1
    for i in range(kh):
        for j in range(kw):
            yield i, j, (slice(i * dh, i * dh + rows, sh), slice(j * dw, j * dw + cols, sw))


def col2im_add(dcols: np.ndarray, dxp: np.ndarray, geometry: ConvGeometry) -> None:
    """Scatter-add columns back onto the padded image, one strided slice per kernel offset.

    dcols (N, C, KH, KW, H_out, W_out) is added into dxp (N, C, H_pad, W_pad) in place.
    """
    for i, j, (rows, cols) in offsets(geometry):
        dxp[:, :, rows, cols] += dcols[:, :, i, j]
