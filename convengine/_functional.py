"""The library's functions: convolutions with 1, 2 or 3 spatial axes and transposed
convolutions, forward and backward, and the checked entry points for a geometry built once.

The im2col passes (``_conv``) compute planar core geometries: zero padding, every padded
pixel read. Any other padding mode is applied to the input here first, and floor rounding
crops what no window reaches; gradients are folded back and padded out to the input's shape.
A line (1-D) is a plane one pixel high; a volume (3-D) is computed by ``_volume``.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Unpack, cast

import numpy as np
from numpy.typing import ArrayLike

from . import _halves, _phases
from ._conv import _backward, _backward_input, _forward, _weight_gradient, as_float_array
from ._errors import ShapeError
from ._geometry import ConvGeometry, TransposedGeometry
from ._hyperparameters import ConvOptions, TransposedOptions
from ._padding import fold, pad
from ._volume import volume_backward, volume_backward_input, volume_forward

__all__ = [
    "backward",
    "conv",
    "conv2d",
    "conv2d_backward",
    "conv_backward",
    "conv_transpose",
    "conv_transpose_backward",
    "forward",
    "transposed_backward",
    "transposed_forward",
]


def conv(
    x: ArrayLike,
    w: ArrayLike,
    b: ArrayLike | None = None,
    **options: Unpack[ConvOptions],
) -> np.ndarray:
    """The convolution (cross-correlation, as in deep-learning frameworks) of x with w.

    x (N, C, *spatial), w (F, C/groups, *kernel), b (F,) or None -> out (N, F, *out), with
    1, 2 or 3 spatial axes, the rank taken from x: (N, C, L), (N, C, H, W) or (N, C, D, H, W).

    stride, dilation: an int or one per axis. padding: an int, one per axis, one (begin,
    end) pair per axis, "valid", "same" (output ceil(size/stride), the odd pixel at the end)
    or "same_lower". padding_mode: "zeros", "reflect", "replicate" or "circular" (PyTorch's).
    rounding: "exact" refuses an output size that is not whole, "floor" drops the last
    partial window.
    """
    x = as_float_array(x, "x")
    w = as_float_array(w, "w", x.dtype)
    geometry = ConvGeometry.build(x.shape, w.shape, **options)
    return forward(x, w, b, geometry)


def conv_backward(
    dout: ArrayLike,
    x: ArrayLike,
    w: ArrayLike,
    **options: Unpack[ConvOptions],
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Gradients of a loss with respect to x, w and b, given its gradient dout w.r.t. the output.

    dout (N, F, *out), x (N, C, *spatial), w (F, C/groups, *kernel)
    -> dx (N, C, *spatial), dw (F, C/groups, *kernel), db (F,)

    Hyperparameters as in :func:`conv`. Input pixels no window reads get a zero gradient;
    gradients that fall on padding fold back onto the pixels it was copied from.
    """
    x = as_float_array(x, "x")
    w = as_float_array(w, "w", x.dtype)
    dout = as_float_array(dout, "dout", x.dtype)
    geometry = ConvGeometry.build(x.shape, w.shape, **options)
    return backward(dout, x, w, geometry)


def conv2d(
    x: ArrayLike,
    w: ArrayLike,
    b: ArrayLike | None = None,
    **options: Unpack[ConvOptions],
) -> np.ndarray:
    """:func:`conv` of planes: x (N, C, H, W), w (F, C/groups, KH, KW), b (F,) or None
    -> out (N, F, H_out, W_out). Hyperparameters as in :func:`conv`."""
    x = _planar(x)
    return conv(x, w, b, **options)


def conv2d_backward(
    dout: ArrayLike,
    x: ArrayLike,
    w: ArrayLike,
    **options: Unpack[ConvOptions],
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """:func:`conv_backward` of planes: dout (N, F, H_out, W_out), x (N, C, H, W),
    w (F, C/groups, KH, KW) -> dx (N, C, H, W), dw (F, C/groups, KH, KW), db (F,)."""
    x = _planar(x)
    return conv_backward(dout, x, w, **options)


def _planar(x: ArrayLike) -> np.ndarray:
    array = as_float_array(x, "x")
    if array.ndim != 4:
        raise ShapeError(
            f"x must be 4-D (N, C, H, W), got {array.ndim}-D shape {array.shape}: "
            "conv and conv_backward take 1-D and 3-D layers too",
            field="x",
        )
    return array


def _checked(
    x: ArrayLike, w: ArrayLike, geometry: ConvGeometry | TransposedGeometry
) -> tuple[np.ndarray, np.ndarray]:
    """x and w as float arrays of x's dtype, checked against the shapes ``geometry`` takes."""
    x = as_float_array(x, "x")
    w = as_float_array(w, "w", x.dtype)
    checker = geometry.conv if isinstance(geometry, TransposedGeometry) else geometry
    checker.check_shape("x", x.shape, geometry.x_shape)
    checker.check_shape("w", w.shape, geometry.w_shape)
    return x, w


def forward(x: ArrayLike, w: ArrayLike, b: ArrayLike | None, geometry: ConvGeometry) -> np.ndarray:
    """:func:`conv` for a geometry already built: the arrays are checked against it, cheaply.

    For callers that validate a request once (the service) and must not size it twice.
    x (N, C, *spatial), w (F, C/groups, *kernel), b (F,) or None -> out (N, F, *out)
    """
    x, w = _checked(x, w, geometry)
    if b is not None:
        b = as_float_array(b, "b", x.dtype)
        geometry.check_bias(b.shape)
    if geometry.is_core:
        return _core_forward(x, w, b, geometry)
    core, crop = geometry.core()
    if 0 in core.size:  # no window reads an input pixel: the output is the bias alone
        out = np.zeros(geometry.out_shape, dtype=x.dtype)
        return out if b is None else out + b.reshape(-1, *(1,) * geometry.rank)
    return _core_forward(_core_input(x, geometry, crop), w, b, core)


def backward(
    dout: ArrayLike, x: ArrayLike, w: ArrayLike, geometry: ConvGeometry
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """:func:`conv_backward` for a geometry already built; the arrays are checked against it.

    dout (N, F, *out), x (N, C, *spatial), w (F, C/groups, *kernel) -> dx, dw, db
    """
    x, w = _checked(x, w, geometry)
    dout = as_float_array(dout, "dout", x.dtype)
    geometry.check_dout(dout.shape)
    if geometry.is_core:
        return _core_backward(dout, x, w, geometry)
    core, crop = geometry.core()
    if 0 in core.size:  # no window reads an input pixel: nothing flows back to x or w
        db = dout.sum(axis=(0, *range(2, dout.ndim)))
        return np.zeros_like(x), np.zeros_like(w), db
    dx_core, dw, db = _core_backward(dout, _core_input(x, geometry, crop), w, core)
    return _full_dx(dx_core, geometry, crop), dw, db


def _core_forward(
    x: np.ndarray, w: np.ndarray, b: np.ndarray | None, geometry: ConvGeometry
) -> np.ndarray:
    layout = (geometry.out_shape,)
    return cast(np.ndarray, _by_halves(_forward_any_rank, geometry, (x,), (w, b), layout))


def _core_backward(
    dout: np.ndarray, x: np.ndarray, w: np.ndarray, geometry: ConvGeometry
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    layout = (geometry.x_shape, None, None)
    result = _by_halves(_backward_any_rank, geometry, (dout, x), (w,), layout)
    return cast(tuple[np.ndarray, np.ndarray, np.ndarray], result)


def _core_backward_input(dout: np.ndarray, w: np.ndarray, geometry: ConvGeometry) -> np.ndarray:
    layout = (geometry.x_shape,)
    return cast(np.ndarray, _by_halves(_input_gradient_any_rank, geometry, (dout,), (w,), layout))


def _core_weight_gradient(
    dout: np.ndarray, x: np.ndarray, w: np.ndarray, geometry: ConvGeometry
) -> np.ndarray:
    layout = (None,)
    return cast(
        np.ndarray, _by_halves(_weight_gradient_any_rank, geometry, (dout, x), (w,), layout)
    )


Result = np.ndarray | tuple[np.ndarray, ...]


def _by_halves(
    compute: Callable[..., Result],
    geometry: ConvGeometry,
    batched: tuple[np.ndarray, ...],
    shared: tuple[np.ndarray | None, ...],
    layout: tuple[tuple[int, ...] | None, ...],
) -> Result:
    """``compute(*batched, *shared, geometry)``, on the whole batch or on its two halves at
    once (see ``_halves``).

    layout: per output of ``compute``, its shape for the whole batch where the halves'
    outputs are its two halves (each half writes its own, in its own thread), or None where
    they are added (dw, db: the first half's plus the second's).
    """
    halves = _halves.split(geometry)
    if halves is None:
        return compute(*batched, *shared, geometry)
    whole = [None if shape is None else np.empty(shape, batched[0].dtype) for shape in layout]
    addends: list[list[np.ndarray]] = [[], []]

    def half(index: int, batch: slice) -> None:
        result = compute(*(a[batch] for a in batched), *shared, _halves.part(geometry, batch))
        outputs = result if isinstance(result, tuple) else (result,)
        for target, output in zip(whole, outputs, strict=True):
            if target is None:
                addends[index].append(output)
            else:
                target[batch] = output

    _halves.run(half, halves)
    sums = iter([first + second for first, second in zip(*addends, strict=True)])
    results = tuple(next(sums) if target is None else target for target in whole)
    return results if len(results) > 1 else results[0]


def _by_rank(
    planar: Callable[..., Result],
    volume: Callable[..., Result],
    geometry: ConvGeometry,
    *arrays: np.ndarray | None,
) -> Result:
    """``planar(*arrays, geometry)`` for planes, ``volume(...)`` for volumes, and for a line
    the planar pass on a plane one pixel high, its (N, ., 1, L) results back to (N, ., L)."""
    if geometry.rank == 2:
        return planar(*arrays, geometry)
    if geometry.rank == 3:
        return volume(*arrays, geometry)
    lifted = [a[:, :, None] if a is not None and a.ndim == 3 else a for a in arrays]
    result = planar(*lifted, geometry.planar())
    outputs = result if isinstance(result, tuple) else (result,)
    lines = tuple(a[:, :, 0] if a.ndim == 4 else a for a in outputs)
    return lines if isinstance(result, tuple) else lines[0]


def _forward_any_rank(
    x: np.ndarray, w: np.ndarray, b: np.ndarray | None, geometry: ConvGeometry
) -> Result:
    return _by_rank(_forward, volume_forward, geometry, x, w, b)


def _backward_any_rank(
    dout: np.ndarray, x: np.ndarray, w: np.ndarray, geometry: ConvGeometry
) -> Result:
    return _by_rank(_backward, volume_backward, geometry, dout, x, w)


def _input_gradient_any_rank(dout: np.ndarray, w: np.ndarray, geometry: ConvGeometry) -> Result:
    return _by_rank(_planar_input_gradient, volume_backward_input, geometry, dout, w)


def _weight_gradient_any_rank(
    dout: np.ndarray, x: np.ndarray, w: np.ndarray, geometry: ConvGeometry
) -> Result:
    return _by_rank(_weight_gradient, _volume_weight_gradient, geometry, dout, x, w)


def _planar_input_gradient(dout: np.ndarray, w: np.ndarray, geometry: ConvGeometry) -> np.ndarray:
    if _phases.supports(geometry):
        return _phases.input_gradient(dout, w, geometry)
    return _backward_input(dout, w, geometry)


def _volume_weight_gradient(
    dout: np.ndarray, x: np.ndarray, w: np.ndarray, geometry: ConvGeometry
) -> np.ndarray:
    return volume_backward(dout, x, w, geometry)[1]


def _input_gradient(dout: np.ndarray, w: np.ndarray, geometry: ConvGeometry) -> np.ndarray:
    """dx alone of a zero-padded convolution, for arrays checked against its geometry."""
    if geometry.is_core:
        return _core_backward_input(dout, w, geometry)
    core, crop = geometry.core()
    if 0 in core.size:
        return np.zeros(geometry.x_shape, dtype=dout.dtype)
    return _full_dx(_core_backward_input(dout, w, core), geometry, crop)


def _weight_gradient_of(
    dout: np.ndarray, x: np.ndarray, w: np.ndarray, geometry: ConvGeometry
) -> np.ndarray:
    """dw alone of a convolution, for arrays checked against its geometry."""
    if geometry.is_core:
        return _core_weight_gradient(dout, x, w, geometry)
    core, crop = geometry.core()
    if 0 in core.size:
        return np.zeros_like(w)
    return _core_weight_gradient(dout, _core_input(x, geometry, crop), w, core)


def _core_input(x: np.ndarray, geometry: ConvGeometry, crop: tuple[int, ...]) -> np.ndarray:
    """What the core geometry convolves: x padded by its mode if not zeros, then cropped."""
    source = x if geometry.padding_mode == "zeros" else pad(x, geometry)
    kept = tuple(slice(0, size - cut) for size, cut in zip(source.shape[2:], crop, strict=True))
    return source[(slice(None), slice(None), *kept)]


def _full_dx(dx_core: np.ndarray, geometry: ConvGeometry, crop: tuple[int, ...]) -> np.ndarray:
    """dx of the core input -> dx (N, C, *spatial): cropped pixels zero, padding folded back."""
    g = geometry
    sizes = g.padded if g.padding_mode != "zeros" else g.size
    if any(crop):
        full = np.zeros((g.n, g.c, *sizes), dtype=dx_core.dtype)
        full[
            (slice(None), slice(None), *(slice(0, s - c) for s, c in zip(sizes, crop, strict=True)))
        ] = dx_core
        dx_core = full
    return dx_core if g.padding_mode == "zeros" else fold(dx_core, g)


# --- transposed convolutions -----------------------------------------------------------------


def conv_transpose(
    x: ArrayLike,
    w: ArrayLike,
    b: ArrayLike | None = None,
    **options: Unpack[TransposedOptions],
) -> np.ndarray:
    """The transposed convolution of x with w, as PyTorch's ``conv_transpose{1,2,3}d``.

    x (N, C_in, *spatial), w (C_in, C_out/groups, *kernel), b (C_out,) or None
    -> out (N, C_out, *out), out per axis ``(size - 1)*stride - pad_begin - pad_end +
    dilation*(K-1) + output_padding + 1``. padding: an int, one per axis, or one (begin, end)
    pair per axis (ONNX's ConvTranspose pads).
    """
    x = as_float_array(x, "x")
    w = as_float_array(w, "w", x.dtype)
    geometry = ConvGeometry.transposed(x.shape, w.shape, **options)
    return transposed_forward(x, w, b, geometry)


def conv_transpose_backward(
    dout: ArrayLike,
    x: ArrayLike,
    w: ArrayLike,
    **options: Unpack[TransposedOptions],
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Gradients of a loss w.r.t. x, w and b of :func:`conv_transpose`, given dout w.r.t. out.

    dout (N, C_out, *out), x (N, C_in, *spatial), w (C_in, C_out/groups, *kernel)
    -> dx (N, C_in, *spatial), dw (C_in, C_out/groups, *kernel), db (C_out,)
    """
    x = as_float_array(x, "x")
    w = as_float_array(w, "w", x.dtype)
    dout = as_float_array(dout, "dout", x.dtype)
    geometry = ConvGeometry.transposed(x.shape, w.shape, **options)
    return transposed_backward(dout, x, w, geometry)


def transposed_forward(
    x: ArrayLike, w: ArrayLike, b: ArrayLike | None, geometry: TransposedGeometry
) -> np.ndarray:
    """:func:`conv_transpose` for a geometry already built; the arrays are checked against it."""
    x, w = _checked(x, w, geometry)
    # The input gradient of the convolution whose output gradient is x.
    out = _input_gradient(x, w, geometry.conv)
    if b is not None:
        b = as_float_array(b, "b", x.dtype)
        geometry.check_bias(b.shape)
        out += b.reshape(-1, *(1,) * geometry.rank)
    return out


def transposed_backward(
    dout: ArrayLike, x: ArrayLike, w: ArrayLike, geometry: TransposedGeometry
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """:func:`conv_transpose_backward` for a geometry already built."""
    x, w = _checked(x, w, geometry)
    dout = as_float_array(dout, "dout", x.dtype)
    conv_geometry = geometry.conv
    geometry.check_dout(dout.shape)
    dx = forward(dout, w, None, conv_geometry)  # the convolution's own forward pass
    dw = _weight_gradient_of(x, dout, w, conv_geometry)  # its weight gradient, roles exchanged
    return dx, dw, dout.sum(axis=(0, *range(2, dout.ndim)))
