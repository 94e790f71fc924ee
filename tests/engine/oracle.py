"""The specification: a plain nested-loop convolution, slow and obviously right.

Written independently of the engine: its own padding rule, its own output size, scalar loops.
"""

from __future__ import annotations

import numpy as np


def explicit_padding(padding, kernel, dilation):
    """((top, bottom), (left, right)) for an int, a pair, "valid" or "same" (extra on the far side)."""
    if padding == "valid":
        return (0, 0), (0, 0)
    if padding == "same":
        totals = [d * (k - 1) for d, k in zip(dilation, kernel)]
        return tuple((t // 2, t - t // 2) for t in totals)
    ph, pw = (padding, padding) if isinstance(padding, int) else padding
    return (ph, ph), (pw, pw)


def _hw(value):
    return (value, value) if isinstance(value, int) else tuple(value)


def _sizes(x, w, stride, padding, dilation):
    (sh, sw), (dh, dw) = _hw(stride), _hw(dilation)
    (pt, pb), (pl, pr) = explicit_padding(padding, w.shape[2:], (dh, dw))
    h_out = (x.shape[2] + pt + pb - dh * (w.shape[2] - 1) - 1) // sh + 1
    w_out = (x.shape[3] + pl + pr - dw * (w.shape[3] - 1) - 1) // sw + 1
    return (sh, sw), (dh, dw), (pt, pl), (h_out, w_out)


def _taps(x, w, f, oh, ow, stride, dilation, origin, groups):
    """Yield (channel, ih, iw, c, i, j) for every input pixel inside the image that filter f sees."""
    n_filters, c_per_group, kh, kw = w.shape
    group = f // (n_filters // groups)
    for c in range(c_per_group):
        for i in range(kh):
            for j in range(kw):
                ih = oh * stride[0] - origin[0] + i * dilation[0]
                iw = ow * stride[1] - origin[1] + j * dilation[1]
                if 0 <= ih < x.shape[2] and 0 <= iw < x.shape[3]:
                    yield group * c_per_group + c, ih, iw, c, i, j


def naive_conv2d(x, w, b=None, stride=1, padding=0, dilation=1, groups=1):
    stride, dilation, origin, (h_out, w_out) = _sizes(x, w, stride, padding, dilation)
    out = np.zeros((x.shape[0], w.shape[0], h_out, w_out), dtype=np.float64)
    for n in range(x.shape[0]):
        for f in range(w.shape[0]):
            for oh in range(h_out):
                for ow in range(w_out):
                    total = 0.0 if b is None else float(b[f])
                    for ch, ih, iw, c, i, j in _taps(
                        x, w, f, oh, ow, stride, dilation, origin, groups
                    ):
                        total += float(x[n, ch, ih, iw]) * float(w[f, c, i, j])
                    out[n, f, oh, ow] = total
    return out


def naive_conv2d_backward(dout, x, w, stride=1, padding=0, dilation=1, groups=1):
    stride, dilation, origin, (h_out, w_out) = _sizes(x, w, stride, padding, dilation)
    dx = np.zeros(x.shape, dtype=np.float64)
    dw = np.zeros(w.shape, dtype=np.float64)
    db = np.zeros(w.shape[0], dtype=np.float64)
    for n in range(x.shape[0]):
        for f in range(w.shape[0]):
            for oh in range(h_out):
                for ow in range(w_out):
                    g = float(dout[n, f, oh, ow])
                    db[f] += g
                    for ch, ih, iw, c, i, j in _taps(
                        x, w, f, oh, ow, stride, dilation, origin, groups
                    ):
                        dx[n, ch, ih, iw] += float(w[f, c, i, j]) * g
                        dw[f, c, i, j] += float(x[n, ch, ih, iw]) * g
    return dx, dw, db
