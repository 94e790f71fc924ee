"""``Conv``: the classic stateful layer, a thin shell over the functional passes."""

from __future__ import annotations

import numpy as np
from numpy.typing import ArrayLike, DTypeLike

from ._conv import as_float_array
from ._errors import ShapeError
from ._functional import backward, forward
from ._geometry import ConvGeometry, pair

__all__ = ["Conv"]


class Conv:
    """A 2-D convolution layer holding its weights ``W`` and bias ``b``.

    Built for inputs of shape (C, H, W); ``forward(X)`` takes (N, C, H, W) and caches what
    ``backward(dout)`` needs. Weights are He/Kaiming-normal from the fan-in C/groups*KH*KW.
    """

    def __init__(
        self,
        input_dim: tuple[int, int, int],
        num_filters: int,
        filter_size: int | tuple[int, int] = 3,
        stride: object = 1,
        padding: object = 0,
        dilation: object = 1,
        groups: int = 1,
        *,
        rng: np.random.Generator | int | None = None,
        dtype: DTypeLike = np.float64,
    ) -> None:
        c, h, w = (int(d) for d in input_dim)
        kh, kw = pair(filter_size, "filter_size", 1)
        w_shape = (int(num_filters), c // max(int(groups), 1), kh, kw)
        self._hyper = {"stride": stride, "padding": padding, "dilation": dilation}
        self._geometry = ConvGeometry.build((1, c, h, w), w_shape, groups=groups, **self._hyper)
        generator = np.random.default_rng(rng)
        fan_in = self._geometry.col_rows
        self.W = (generator.standard_normal(w_shape) * np.sqrt(2.0 / fan_in)).astype(dtype)
        self.b = np.zeros(num_filters, dtype=dtype)
        self.params = [self.W, self.b]
        self._cache: tuple[np.ndarray, ConvGeometry] | None = None

    @property
    def out_dim(self) -> tuple[int, int, int]:
        """The output of one image: (F, H_out, W_out)."""
        return self._geometry.out_shape[1:]

    def _batch_geometry(self, x: np.ndarray) -> ConvGeometry:
        if x.ndim != 4 or x.shape[1:] != self._geometry.x_shape[1:]:
            raise ShapeError(
                f"X must have shape (N, {', '.join(map(str, self._geometry.x_shape[1:]))}) "
                f"for this layer, got {x.shape}",
                field="x",
            )
        return ConvGeometry.build(
            x.shape, self.W.shape, groups=self._geometry.groups, **self._hyper
        )

    def forward(self, X: ArrayLike) -> np.ndarray:
        """X (N, C, H, W) -> out (N, F, H_out, W_out), computed in X's dtype."""
        x = as_float_array(X, "x")
        geometry = self._batch_geometry(x)
        self._cache = (x, geometry)
        return forward(
            x, self.W.astype(x.dtype, copy=False), self.b.astype(x.dtype, copy=False), geometry
        )

    def backward(self, dout: ArrayLike) -> tuple[np.ndarray, list[np.ndarray]]:
        """dout (N, F, H_out, W_out) -> (dX (N, C, H, W), [dW, db]) for the last forward."""
        if self._cache is None:
            raise RuntimeError("Conv.backward needs a forward pass first")
        x, geometry = self._cache
        d = as_float_array(dout, "dout", x.dtype)
        geometry.check_dout(d.shape)
        dx, dw, db = backward(d, x, self.W.astype(x.dtype, copy=False), geometry)
        return dx, [dw, db]
