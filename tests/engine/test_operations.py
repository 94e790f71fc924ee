"""The table of operations and the checked entry points that take a geometry built once."""

from __future__ import annotations

import numpy as np
import pytest

from convengine import (
    OPERATIONS,
    ConvGeometry,
    ShapeError,
    backward,
    conv,
    conv2d,
    conv2d_backward,
    conv_backward,
    conv_transpose,
    conv_transpose_backward,
    forward,
)
from convengine._kernels import work_elements


@pytest.mark.parametrize("name", OPERATIONS)
def test_each_operation_runs_its_example_like_the_library_api(name):
    operation = OPERATIONS[name]
    example = dict(operation.example)
    arrays = {
        k: np.asarray(example.pop(k), dtype=np.float64) for k in operation.inputs if k in example
    }
    geometry = operation.plan({k: a.shape for k, a in arrays.items()}, example)
    outputs = operation.run(geometry, arrays)
    assert tuple(outputs) == operation.outputs
    library = {
        "forward": conv,
        "backward": conv_backward,
        "conv_transpose": conv_transpose,
        "conv_transpose_backward": conv_transpose_backward,
    }[name]
    expected = library(*(arrays.get(k) for k in operation.inputs), **example)
    expected = expected if isinstance(expected, tuple) else (expected,)
    for got, want in zip(outputs.values(), expected, strict=True):
        np.testing.assert_array_equal(got, want)


def test_the_table_describes_every_array():
    for operation in OPERATIONS.values():
        assert set(operation.arrays) == {*operation.inputs, *operation.outputs}
        assert operation.optional <= set(operation.inputs)
        assert operation.required == tuple(
            n for n in operation.inputs if n not in operation.optional
        )
    assert str(OPERATIONS["forward"].arrays["b"]) == "bias, (F,)"
    assert str(OPERATIONS["forward"].arrays["x"]) == "input, (N, C, *spatial)"
    assert [OPERATIONS["backward"].arrays["dw"].ndim(rank) for rank in (1, 2, 3)] == [3, 4, 5]


def test_cost_counts_both_passes_of_backward():
    geometry = ConvGeometry.build((2, 3, 8, 8), (4, 3, 3, 3), padding=1)
    forward_cost = OPERATIONS["forward"].cost(geometry, 4)
    backward_cost = OPERATIONS["backward"].cost(geometry, 4)
    assert backward_cost.flops == 2 * forward_cost.flops == 2 * geometry.flops()
    assert forward_cost.work_bytes == work_elements(geometry) * 4


def test_checked_entry_points_refuse_arrays_that_do_not_fit_the_geometry():
    geometry = ConvGeometry.build((1, 2, 5, 5), (3, 2, 3, 3))
    x, w = np.ones((1, 2, 5, 5)), np.ones((3, 2, 3, 3))
    np.testing.assert_array_equal(forward(x, w, None, geometry), conv2d(x, w))
    with pytest.raises(
        ShapeError,
        match=r"x has shape \(1, 2, 6, 6\) but this geometry was built for \(1, 2, 5, 5\)",
    ):
        forward(np.ones((1, 2, 6, 6)), w, None, geometry)
    with pytest.raises(ShapeError, match="b must have shape"):
        forward(x, w, np.ones(2), geometry)
    dout = np.ones((1, 3, 3, 3))
    for got, want in zip(backward(dout, x, w, geometry), conv2d_backward(dout, x, w), strict=True):
        np.testing.assert_array_equal(got, want)
    with pytest.raises(ShapeError, match="w has shape"):
        backward(dout, x, np.ones((3, 2, 2, 2)), geometry)
