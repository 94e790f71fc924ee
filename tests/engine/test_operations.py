"""The table of operations and the checked entry points that take a geometry built once."""

from __future__ import annotations

import numpy as np
import pytest

from convengine import (
    OPERATIONS,
    ConvGeometry,
    conv,
    conv_backward,
    conv_transpose,
    conv_transpose_backward,
)


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
    forward_cost = OPERATIONS["forward"].cost(geometry, "float32")
    backward_cost = OPERATIONS["backward"].cost(geometry, np.float32)
    assert backward_cost.flops == 2 * forward_cost.flops == 2 * geometry.flops()
    assert forward_cost.work_bytes == geometry.work_elements() * 4


def test_cost_counts_the_arrays_in_and_out_by_the_dtype():
    geometry = ConvGeometry.build((2, 3, 8, 8), (4, 3, 3, 3), padding=1)
    forward = OPERATIONS["forward"].cost(geometry, np.float64)
    # x, w and b in; out (2, 4, 8, 8) out.
    assert forward.input_bytes == 8 * (2 * 3 * 8 * 8 + 4 * 3 * 3 * 3 + 4)
    assert (forward.output_elements, forward.output_bytes) == (512, 8 * 512)
    backward = OPERATIONS["backward"].cost(geometry, np.float32)
    # dx, dw and db out.
    assert backward.output_elements == 2 * 3 * 8 * 8 + 4 * 3 * 3 * 3 + 4
    assert backward.memory_bytes == (
        backward.input_bytes + backward.work_bytes + backward.output_bytes
    )


_FORWARD_OF = {"backward": "forward", "conv_transpose_backward": "conv_transpose"}


@pytest.mark.parametrize("name", sorted(OPERATIONS))
@pytest.mark.parametrize(
    ("x_shape", "w_shape", "hyper"),
    [
        ((2, 4, 9, 7), (4, 2, 3, 2), {"groups": 2, "stride": 2, "padding": 1}),
        ((1, 3, 11), (3, 3, 4), {"dilation": 2}),
        ((2, 2, 5, 4, 6), (2, 1, 2, 3, 1), {"groups": 2}),
    ],
    ids=["planes", "line", "volume"],
)
def test_the_table_announces_the_shape_of_every_array_the_engine_answers(
    name, x_shape, w_shape, hyper, rng
):
    """Each array's shape, by name, as the geometry gives it, is what the engine computes."""
    operation = OPERATIONS[name]
    if "rounding" in operation.hyperparameters:
        hyper = {**hyper, "rounding": "floor"}
    arrays = {"x": rng.standard_normal(x_shape), "w": rng.standard_normal(w_shape)}
    if "dout" in operation.inputs:
        forward = OPERATIONS[_FORWARD_OF[name]]
        out = forward.run(forward.plan({k: a.shape for k, a in arrays.items()}, hyper), arrays)
        arrays["dout"] = rng.standard_normal(out["out"].shape)
    geometry = operation.plan({k: a.shape for k, a in arrays.items()}, hyper)
    announced = operation.shapes(geometry)
    assert set(announced) == {*operation.inputs, *operation.outputs}
    for key, array in arrays.items():
        assert announced[key] == array.shape
    for key, array in operation.run(geometry, arrays).items():
        assert announced[key] == array.shape, key
    if "b" in announced:
        assert operation.run(geometry, {**arrays, "b": np.ones(announced["b"])})
