"""``Conv``: the classic stateful layer, a thin shell over the functional passes."""

from __future__ import annotations

from typing import Unpack

import numpy as np
from numpy.typing import ArrayLike, DTypeLike

from ._arrays import as_float_array
from ._errors import ShapeError
from ._functional import backward, forward
from ._geometry import ConvGeometry, IntOrTuple, Padding
from ._hyperparameters import ConvOptions, LayerOptions

__all__ = ["Conv"]


class Conv:
    """A 2-D convolution layer with the classic tutorial's constructor and attributes.

    ``Conv(X_dim, n_filter, h_filter, w_filter, stride, padding)``, positionally as in the
    original (X_dim is (C, H, W)); dilation, groups, padding_mode, rounding, rng and dtype are
    keyword-only after it, and padding takes every form :func:`conv2d` does.

    ``W`` is (n_filter, C/groups, h_filter, w_filter), ``b`` and ``db`` are (n_filter, 1),
    ``params == [W, b]`` (the same arrays, so an optimiser may update them in place),
    ``forward(X)`` takes (N, C, H, W) and ``backward(dout)`` returns ``(dX, [dW, db])``.

    Weights are He/Kaiming-normal from the fan-in C/groups*h_filter*w_filter, with variance
    2/fan_in; the original divides by sqrt(n_filter/2), the number of filters, which is not
    the fan-in of a convolution.
    """

    def __init__(
        self,
        X_dim: tuple[int, int, int],
        n_filter: int,
        h_filter: int,
        w_filter: int,
        stride: IntOrTuple = 1,
        padding: Padding = 0,
        *,
        rng: np.random.Generator | int | None = None,
        dtype: DTypeLike = np.float64,
        **options: Unpack[LayerOptions],
    ) -> None:
        self.d_X, self.h_X, self.w_X = (int(d) for d in X_dim)
        self.n_filter, self.h_filter, self.w_filter = int(n_filter), int(h_filter), int(w_filter)
        self.stride, self.padding = stride, padding
        self._hyper: ConvOptions = {"stride": stride, "padding": padding, **options}
        groups = max(int(options.get("groups", 1)), 1)
        w_shape = (self.n_filter, self.d_X // groups, self.h_filter, self.w_filter)
        self._geometry = ConvGeometry.build(
            (1, self.d_X, self.h_X, self.w_X), w_shape, **self._hyper
        )
        generator = np.random.default_rng(rng)
        fan_in = self._geometry.col_rows
        self.W = (generator.standard_normal(w_shape) * np.sqrt(2.0 / fan_in)).astype(dtype)
        self.b = np.zeros((self.n_filter, 1), dtype=dtype)
        self.params = [self.W, self.b]
        self.h_out, self.w_out = self._geometry.h_out, self._geometry.w_out
        self._cache: tuple[np.ndarray, ConvGeometry] | None = None

    @property
    def out_dim(self) -> tuple[int, int, int]:
        """The output of one image: (n_filter, h_out, w_out)."""
        return self.n_filter, self.h_out, self.w_out

    def _batch_geometry(self, x: np.ndarray) -> ConvGeometry:
        if x.ndim != 4 or x.shape[1:] != self._geometry.x_shape[1:]:
            raise ShapeError(
                f"X must have shape (N, {', '.join(map(str, self._geometry.x_shape[1:]))}) "
                f"for this layer, got {x.shape}",
                field="x",
            )
        return ConvGeometry.build(x.shape, self.W.shape, **self._hyper)

    def forward(self, X: ArrayLike) -> np.ndarray:
        """X (N, C, H, W) -> out (N, n_filter, h_out, w_out), computed in X's dtype."""
        x = as_float_array(X, "x")
        geometry = self._batch_geometry(x)
        self._cache = (x, geometry)
        w, b = self.W.astype(x.dtype, copy=False), self.b.astype(x.dtype, copy=False)
        return forward(x, w, b.reshape(-1), geometry)

    def backward(self, dout: ArrayLike) -> tuple[np.ndarray, list[np.ndarray]]:
        """dout (N, n_filter, h_out, w_out) -> (dX (N, C, H, W), [dW, db (n_filter, 1)])."""
        if self._cache is None:
            raise RuntimeError("Conv.backward needs a forward pass first")
        x, geometry = self._cache
        d = as_float_array(dout, "dout", x.dtype)
        geometry.check_dout(d.shape)
        dx, dw, db = backward(d, x, self.W.astype(x.dtype, copy=False), geometry)
        return dx, [dw, db.reshape(-1, 1)]
