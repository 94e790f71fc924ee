"""The specification: a plain nested-loop convolution, slow and obviously right.

Written independently of the engine: its own padding rule and output size, scalar loops;
padding modes through ``np.pad`` (reflect, edge, wrap), and their gradient through the
explicit matrix of ``np.pad`` applied to every unit image.
"""

from __future__ import annotations

import math

import numpy as np

NP_MODES = {"reflect": "reflect", "replicate": "edge", "circular": "wrap"}


def _hw(value):
    return (value, value) if isinstance(value, int) else tuple(value)


def explicit_padding(padding, kernel, dilation, stride=(1, 1), size=None):
    """((top, bottom), (left, right)) for every form of padding the engine takes."""
    if padding == "valid":
        return (0, 0), (0, 0)
    if padding in ("same", "same_lower"):
        sides = []
        for n, k, d, s in zip(size, kernel, dilation, stride):
            out = math.ceil(n / s)
            total = max((out - 1) * s + d * (k - 1) + 1 - n, 0)
            start, end = total // 2, total - total // 2
            sides.append((start, end) if padding == "same" else (end, start))
        return tuple(sides)
    if isinstance(padding, int):
        return (padding, padding), (padding, padding)
    if isinstance(padding[0], int):
        return (padding[0], padding[0]), (padding[1], padding[1])
    return tuple(tuple(side) for side in padding)


def _prepare(x, w, stride, padding, dilation, padding_mode):
    """x zero-padded or mode-padded by np.pad, with the geometry of the padded convolution."""
    stride, dilation = _hw(stride), _hw(dilation)
    pads = explicit_padding(padding, w.shape[2:], dilation, stride, x.shape[2:])
    widths = ((0, 0), (0, 0), *pads)
    mode = NP_MODES.get(padding_mode, "constant")
    xp = np.pad(x, widths, mode=mode)
    h_out = (xp.shape[2] - dilation[0] * (w.shape[2] - 1) - 1) // stride[0] + 1
    w_out = (xp.shape[3] - dilation[1] * (w.shape[3] - 1) - 1) // stride[1] + 1
    return xp, pads, mode, stride, dilation, (h_out, w_out)


def _taps(w, f, oh, ow, stride, dilation, groups):
    """Yield (channel, ih, iw, c, i, j): every padded-input pixel that filter f sees."""
    n_filters, c_per_group, kh, kw = w.shape
    group = f // (n_filters // groups)
    for c in range(c_per_group):
        for i in range(kh):
            for j in range(kw):
                ih = oh * stride[0] + i * dilation[0]
                iw = ow * stride[1] + j * dilation[1]
                yield group * c_per_group + c, ih, iw, c, i, j


def naive_conv2d(
    x, w, b=None, stride=1, padding=0, dilation=1, groups=1, padding_mode="zeros", rounding="exact"
):
    xp, _, _, stride, dilation, (h_out, w_out) = _prepare(
        x, w, stride, padding, dilation, padding_mode
    )
    out = np.zeros((x.shape[0], w.shape[0], h_out, w_out), dtype=np.float64)
    for n in range(x.shape[0]):
        for f in range(w.shape[0]):
            for oh in range(h_out):
                for ow in range(w_out):
                    total = 0.0 if b is None else float(b[f])
                    for ch, ih, iw, c, i, j in _taps(w, f, oh, ow, stride, dilation, groups):
                        total += float(xp[n, ch, ih, iw]) * float(w[f, c, i, j])
                    out[n, f, oh, ow] = total
    return out


def _unpad(dxp, x_shape, pads, mode):
    """The adjoint of np.pad: each input pixel collects the gradient of every copy of it."""
    h, w = x_shape[2:]
    units = np.eye(h * w).reshape(h * w, h, w)
    copies = np.pad(units, ((0, 0), *pads), mode=mode)  # (H*W, H_pad, W_pad)
    return np.einsum("kab,ncab->nck", copies, dxp).reshape(x_shape)


def naive_conv2d_backward(
    dout, x, w, stride=1, padding=0, dilation=1, groups=1, padding_mode="zeros", rounding="exact"
):
    xp, pads, mode, stride, dilation, (h_out, w_out) = _prepare(
        x, w, stride, padding, dilation, padding_mode
    )
    dxp = np.zeros(xp.shape, dtype=np.float64)
    dw = np.zeros(w.shape, dtype=np.float64)
    db = np.zeros(w.shape[0], dtype=np.float64)
    for n in range(x.shape[0]):
        for f in range(w.shape[0]):
            for oh in range(h_out):
                for ow in range(w_out):
                    g = float(dout[n, f, oh, ow])
                    db[f] += g
                    for ch, ih, iw, c, i, j in _taps(w, f, oh, ow, stride, dilation, groups):
                        dxp[n, ch, ih, iw] += float(w[f, c, i, j]) * g
                        dw[f, c, i, j] += float(xp[n, ch, ih, iw]) * g
    return _unpad(dxp, x.shape, pads, mode), dw, db
