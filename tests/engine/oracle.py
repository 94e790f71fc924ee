"""The specification: plain nested-loop convolutions, slow and obviously right.

Written independently of the engine: its own padding rule and output size, scalar loops over
any number of spatial axes; padding modes through ``np.pad`` (reflect, edge, wrap), and their
gradient through the explicit matrix of ``np.pad`` applied to every unit image. The
transposed convolution is written directly as the scatter of each input pixel times the kernel.
"""

from __future__ import annotations

import itertools
import math

import numpy as np

NP_MODES = {"reflect": "reflect", "replicate": "edge", "circular": "wrap"}


def _per_axis(value, rank):
    return (value,) * rank if isinstance(value, int) else tuple(value)


def explicit_padding(padding, kernel, dilation, stride=None, size=None):
    """One (begin, end) pair per axis for every form of padding the engine takes."""
    rank = len(kernel)
    stride = stride or (1,) * rank
    if padding == "valid":
        return ((0, 0),) * rank
    if padding in ("same", "same_lower"):
        sides = []
        for n, k, d, s in zip(size, kernel, dilation, stride):
            out = math.ceil(n / s)
            total = max((out - 1) * s + d * (k - 1) + 1 - n, 0)
            start, end = total // 2, total - total // 2
            sides.append((start, end) if padding == "same" else (end, start))
        return tuple(sides)
    if isinstance(padding, int):
        return ((padding, padding),) * rank
    if isinstance(padding[0], int):
        return tuple((p, p) for p in padding)
    return tuple(tuple(side) for side in padding)


def _prepare(x, w, stride, padding, dilation, padding_mode):
    """x zero-padded or mode-padded by np.pad, with the geometry of the padded convolution."""
    rank = x.ndim - 2
    stride, dilation = _per_axis(stride, rank), _per_axis(dilation, rank)
    pads = explicit_padding(padding, w.shape[2:], dilation, stride, x.shape[2:])
    mode = NP_MODES.get(padding_mode, "constant")
    xp = np.pad(x, ((0, 0), (0, 0), *pads), mode=mode)
    out = tuple(
        (p - d * (k - 1) - 1) // s + 1
        for p, d, k, s in zip(xp.shape[2:], dilation, w.shape[2:], stride)
    )
    return xp, pads, mode, stride, dilation, out


def _taps(w, f, position, stride, dilation, groups):
    """Yield (channel, input index, c, kernel index): every padded-input pixel filter f sees."""
    n_filters, c_per_group = w.shape[:2]
    group = f // (n_filters // groups)
    for c in range(c_per_group):
        for offset in itertools.product(*(range(k) for k in w.shape[2:])):
            index = tuple(o * s + k * d for o, s, k, d in zip(position, stride, offset, dilation))
            yield group * c_per_group + c, index, c, offset


def naive_conv(
    x, w, b=None, stride=1, padding=0, dilation=1, groups=1, padding_mode="zeros", rounding="exact"
):
    xp, _, _, stride, dilation, out_size = _prepare(x, w, stride, padding, dilation, padding_mode)
    out = np.zeros((x.shape[0], w.shape[0], *out_size), dtype=np.float64)
    for n in range(x.shape[0]):
        for f in range(w.shape[0]):
            for position in itertools.product(*(range(o) for o in out_size)):
                total = 0.0 if b is None else float(b[f])
                for ch, index, c, offset in _taps(w, f, position, stride, dilation, groups):
                    total += float(xp[(n, ch, *index)]) * float(w[(f, c, *offset)])
                out[(n, f, *position)] = total
    return out


def _unpad(dxp, x_shape, pads, mode):
    """The adjoint of np.pad: each input pixel collects the gradient of every copy of it."""
    spatial = x_shape[2:]
    count = math.prod(spatial)
    units = np.eye(count).reshape(count, *spatial)
    copies = np.pad(units, ((0, 0), *pads), mode=mode)  # (pixels, *padded)
    flat = copies.reshape(count, -1)
    return np.einsum("kp,ncp->nck", flat, dxp.reshape(*dxp.shape[:2], flat.shape[1])).reshape(
        x_shape
    )


def naive_conv_backward(
    dout, x, w, stride=1, padding=0, dilation=1, groups=1, padding_mode="zeros", rounding="exact"
):
    xp, pads, mode, stride, dilation, out_size = _prepare(
        x, w, stride, padding, dilation, padding_mode
    )
    dxp = np.zeros(xp.shape, dtype=np.float64)
    dw = np.zeros(w.shape, dtype=np.float64)
    db = np.zeros(w.shape[0], dtype=np.float64)
    for n in range(x.shape[0]):
        for f in range(w.shape[0]):
            for position in itertools.product(*(range(o) for o in out_size)):
                g = float(dout[(n, f, *position)])
                db[f] += g
                for ch, index, c, offset in _taps(w, f, position, stride, dilation, groups):
                    dxp[(n, ch, *index)] += float(w[(f, c, *offset)]) * g
                    dw[(f, c, *offset)] += float(xp[(n, ch, *index)]) * g
    return _unpad(dxp, x.shape, pads, mode), dw, db


naive_conv2d, naive_conv2d_backward = naive_conv, naive_conv_backward


def _transposed_sizes(x, w, stride, padding, output_padding, dilation):
    rank = x.ndim - 2
    stride, dilation = _per_axis(stride, rank), _per_axis(dilation, rank)
    extra = _per_axis(output_padding, rank)
    pads = explicit_padding(padding, w.shape[2:], dilation)
    out = tuple(
        (n - 1) * s - b - e + d * (k - 1) + op + 1
        for n, s, (b, e), d, k, op in zip(x.shape[2:], stride, pads, dilation, w.shape[2:], extra)
    )
    return stride, dilation, pads, out


def _scatter(x, w, stride, dilation, pads, out_size, groups):
    """Yield (n, input index, output index, ci, co, kernel index) of every product of the
    transposed convolution: each input pixel times the kernel, placed at stride steps."""
    c_in, c_out_per_group = w.shape[:2]
    per_group = c_in // groups
    for n in range(x.shape[0]):
        for ci in range(c_in):
            group = ci // per_group
            for position in itertools.product(*(range(s) for s in x.shape[2:])):
                for offset in itertools.product(*(range(k) for k in w.shape[2:])):
                    target = tuple(
                        p * s - b + k * d
                        for p, s, (b, _), k, d in zip(position, stride, pads, offset, dilation)
                    )
                    if all(0 <= t < o for t, o in zip(target, out_size)):
                        for co in range(c_out_per_group):
                            yield n, ci, position, group * c_out_per_group + co, co, target, offset


def naive_conv_transpose(x, w, b=None, stride=1, padding=0, output_padding=0, dilation=1, groups=1):
    stride, dilation, pads, out_size = _transposed_sizes(
        x, w, stride, padding, output_padding, dilation
    )
    out = np.zeros((x.shape[0], w.shape[1] * groups, *out_size), dtype=np.float64)
    for n, ci, position, channel, co, target, offset in _scatter(
        x, w, stride, dilation, pads, out_size, groups
    ):
        out[(n, channel, *target)] += float(x[(n, ci, *position)]) * float(w[(ci, co, *offset)])
    if b is not None:
        out += np.reshape(b, (-1, *(1,) * len(out_size)))
    return out


def naive_conv_transpose_backward(
    dout, x, w, stride=1, padding=0, output_padding=0, dilation=1, groups=1
):
    stride, dilation, pads, out_size = _transposed_sizes(
        x, w, stride, padding, output_padding, dilation
    )
    dx = np.zeros(x.shape, dtype=np.float64)
    dw = np.zeros(w.shape, dtype=np.float64)
    for n, ci, position, channel, co, target, offset in _scatter(
        x, w, stride, dilation, pads, out_size, groups
    ):
        g = float(dout[(n, channel, *target)])
        dx[(n, ci, *position)] += float(w[(ci, co, *offset)]) * g
        dw[(ci, co, *offset)] += float(x[(n, ci, *position)]) * g
    return dx, dw, dout.sum(axis=(0, *range(2, dout.ndim)))


# --- every tensor: one sample, empty batches, half precision, complex numbers ----------------

_REAL = {
    "forward": lambda a, h: {"out": naive_conv(a["x"], a["w"], a.get("b"), **h)},
    "backward": lambda a, h: dict(
        zip(("dx", "dw", "db"), naive_conv_backward(a["dout"], a["x"], a["w"], **h))
    ),
    "conv_transpose": lambda a, h: {"out": naive_conv_transpose(a["x"], a["w"], a.get("b"), **h)},
    "conv_transpose_backward": lambda a, h: dict(
        zip(("dx", "dw", "db"), naive_conv_transpose_backward(a["dout"], a["x"], a["w"], **h))
    ),
}


def oracle(operation, arrays, hyper):
    """The exact answer (float64, or complex128) of a table operation for arrays of any dtype:
    one sample (x one axis short of w) via N=1, half precision via its exact float64 values
    (round the answer to the half type to compare), complex numbers via their real and
    imaginary parts, with PyTorch's gradients: dx = B(dout, conj w), dw = G(dout, conj x)."""
    one = arrays["x"].ndim == arrays["w"].ndim - 1
    exact = {
        name: np.asarray(a).astype(np.complex128 if a.dtype.kind == "c" else np.float64)
        for name, a in arrays.items()
    }
    lifted = {k: v[None] if one and k in ("x", "dout") else v for k, v in exact.items()}
    complex_ = any(a.dtype.kind == "c" for a in lifted.values())
    result = _complex(operation, lifted, hyper) if complex_ else _REAL[operation](lifted, hyper)
    return {k: v[0] if one and k in ("out", "dx") else v for k, v in result.items()}


def _complex(operation, arrays, hyper):
    real = _REAL[operation]
    re = {k: v.real.copy() for k, v in arrays.items()}
    im = {k: v.imag.copy() for k, v in arrays.items()}
    if "dout" not in arrays:

        def product(parts_x, parts_w, bias):
            given = {"x": parts_x["x"], "w": parts_w["w"]}
            return real({**given, **({"b": bias["b"]} if bias and "b" in bias else {})}, hyper)[
                "out"
            ]

        out_re = product(re, re, re) - product(im, im, None)
        out_im = product(re, im, im) + product(im, re, None)
        return {"out": out_re + 1j * out_im}

    def grads(dout, x, w):
        return real({"dout": dout, "x": x, "w": w}, hyper)

    rr, ii = grads(re["dout"], re["x"], re["w"]), grads(im["dout"], im["x"], im["w"])
    ir, ri = grads(im["dout"], re["x"], re["w"]), grads(re["dout"], im["x"], im["w"])
    result = {k: rr[k] + ii[k] + 1j * (ir[k] - ri[k]) for k in ("dx", "dw")}
    result["db"] = rr["db"] + 1j * ir["db"]
    return result
