"""The table of operations and the checked entry points that take a geometry built once."""

from __future__ import annotations

import numpy as np
import pytest

import convengine
from convengine import (
    OPERATIONS,
    ConvGeometry,
    conv,
    conv_backward,
    conv_transpose,
    conv_transpose_backward,
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


def _planned():
    """The table's plan of a forward layer (what the service and explain cost)."""
    return OPERATIONS["forward"].plan({"x": (2, 3, 8, 8), "w": (4, 3, 3, 3)}, {"padding": 1})


def test_cost_counts_both_passes_of_backward():
    geometry = _planned()
    core = ConvGeometry.build((2, 3, 8, 8), (4, 3, 3, 3), padding=1)
    forward_cost = OPERATIONS["forward"].cost(geometry, "float32")
    backward_cost = OPERATIONS["backward"].cost(geometry, np.float32)
    assert backward_cost.flops == 2 * forward_cost.flops == 2 * core.flops()
    assert forward_cost.work_bytes == work_elements(core) * 4


def test_cost_counts_the_arrays_in_and_out_by_the_dtype():
    geometry = _planned()
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


def test_the_hyperparameters_are_one_typed_record_per_kind_of_layer():
    """The table, the public functions and the layer read them from ConvOptions and
    TransposedOptions; a function called with every one of them at its default computes."""
    conv_names = set(convengine.ConvOptions.__optional_keys__)
    transposed_names = set(convengine.TransposedOptions.__optional_keys__)
    for operation in OPERATIONS.values():
        assert operation.hyperparameters in (conv_names, transposed_names), operation.name
    defaults = dict(
        stride=1, padding=0, dilation=1, groups=1, padding_mode="zeros", rounding="exact"
    )
    x, w = np.ones((1, 2, 4, 4)), np.ones((2, 2, 3, 3))
    assert set(defaults) == conv_names
    np.testing.assert_array_equal(convengine.conv(x, w, **defaults), convengine.conv(x, w))
    transposed = dict(stride=1, padding=0, output_padding=0, dilation=1, groups=1)
    assert set(transposed) == transposed_names
    np.testing.assert_array_equal(
        convengine.conv_transpose(x, w, **transposed), convengine.conv_transpose(x, w)
    )
    layer = convengine.Conv(
        (2, 4, 4),
        2,
        3,
        3,
        1,
        1,
        dilation=1,
        groups=2,
        padding_mode="reflect",
        rounding="floor",
        rng=0,
    )
    assert layer.forward(x).shape == (1, 2, 4, 4)
    with pytest.raises(TypeError):
        convengine.conv(x, w, output_padding=1)
