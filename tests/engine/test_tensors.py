"""Every tensor PyTorch's convolutions take, against the oracle: one sample without its batch
axis, empty batches, float16 and bfloat16, complex64 and complex128; PyTorch's convention for
complex gradients from central differences of a real loss; the cost's memory bound."""

from __future__ import annotations

import tracemalloc

import ml_dtypes
import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from convengine import (
    OPERATIONS,
    DTypeError,
    ShapeError,
    conv,
    conv_backward,
    conv_transpose,
    conv_transpose_backward,
)

from ..tensors import DTYPES, assert_rounded, dtype_of, sample
from .oracle import oracle

# name: (layer, x shape, w shape, hyperparameters), each rank, convolutions and transposed
LAYERS = {
    "conv1d": ("conv", (2, 3, 9), (4, 3, 3), dict(stride=2, padding=1, rounding="floor")),
    "conv2d-groups": ("conv", (2, 4, 5, 6), (6, 2, 3, 2), dict(groups=2, padding=(1, 0))),
    "conv2d-reflect": ("conv", (1, 2, 5, 5), (3, 2, 3, 3), dict(padding=2, padding_mode="reflect")),
    "conv3d": ("conv", (1, 2, 4, 3, 5), (2, 2, 2, 2, 3), dict(padding=(1, 0, 1), stride=(2, 1, 2))),
    "transposed1d": ("transposed", (2, 3, 4), (3, 2, 3), dict(stride=2, padding=1)),
    "transposed2d": ("transposed", (1, 4, 3, 3), (4, 1, 3, 2), dict(stride=2, groups=2)),
    "transposed3d": (
        "transposed",
        (1, 2, 2, 3, 2),
        (2, 2, 2, 2, 2),
        dict(stride=2, output_padding=(1, 0, 1)),
    ),
}
FUNCTIONS = {"conv": (conv, conv_backward), "transposed": (conv_transpose, conv_transpose_backward)}
OPERATION = {
    "conv": ("forward", "backward"),
    "transposed": ("conv_transpose", "conv_transpose_backward"),
}


def _arrays(rng, name, dtype, batch):
    layer, x_shape, w_shape, hyper = LAYERS[name]
    x_shape = {"batch": x_shape, "one": x_shape[1:], "empty": (0, *x_shape[1:])}[batch]
    channels = w_shape[1] * hyper.get("groups", 1) if layer == "transposed" else w_shape[0]
    return (
        layer,
        hyper,
        sample(rng, x_shape, dtype),
        sample(rng, w_shape, dtype),
        sample(rng, (channels,), dtype),
    )


def _check(name, dtype, batch, rng):
    layer, hyper, x, w, b = _arrays(rng, name, dtype, batch)
    run, gradients = FUNCTIONS[layer]
    forward, backward = OPERATION[layer]
    out = run(x, w, b, **hyper)
    want = oracle(forward, {"x": x, "w": w, "b": b}, hyper)["out"]
    scale = np.abs(x.astype(want.dtype)).max(initial=1) * np.abs(w.astype(want.dtype)).sum()
    assert_rounded(out, want, dtype, scale)
    dout = sample(rng, out.shape, dtype)
    got = dict(zip(("dx", "dw", "db"), gradients(dout, x, w, **hyper), strict=True))
    expected = oracle(backward, {"dout": dout, "x": x, "w": w}, hyper)
    scale = np.abs(dout.astype(want.dtype)).max(initial=1) * max(w.size, x.size)
    for key in ("dx", "dw", "db"):
        assert_rounded(got[key], expected[key], dtype, scale)
    return out, got


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("batch", ["batch", "one", "empty"])
@pytest.mark.parametrize("name", LAYERS)
def test_every_tensor_against_the_oracle(name, batch, dtype, rng):
    out, grads = _check(name, dtype, batch, rng)
    x_shape = LAYERS[name][1]
    if batch == "one":  # answered without the batch axis
        assert out.ndim == len(x_shape) - 1 and grads["dx"].ndim == len(x_shape) - 1
    if batch == "empty":  # empty outputs, zero dw and db
        assert out.shape[0] == 0 and grads["dx"].shape[0] == 0
        assert not grads["dw"].any() and not grads["db"].any()


@settings(max_examples=40, deadline=None)
@given(
    seed=st.integers(0, 2**32 - 1),
    name=st.sampled_from(sorted(LAYERS)),
    batch=st.sampled_from(["batch", "one", "empty"]),
    dtype=st.sampled_from(DTYPES),
)
def test_random_tensors_against_the_oracle(seed, name, batch, dtype):
    _check(name, dtype, batch, np.random.default_rng(seed))


@settings(max_examples=30, deadline=None)
@given(
    seed=st.integers(0, 2**32 - 1),
    c=st.integers(1, 3),
    f=st.integers(1, 3),
    size=st.tuples(st.integers(1, 7), st.integers(1, 7)),
    k=st.tuples(st.integers(1, 3), st.integers(1, 3)),
    stride=st.integers(1, 3),
    padding=st.integers(0, 2),
    dtype=st.sampled_from(DTYPES),
    one=st.booleans(),
)
def test_random_geometry_of_every_dtype(seed, c, f, size, k, stride, padding, dtype, one):
    rng = np.random.default_rng(seed)
    k = tuple(min(a, b + 2 * padding) for a, b in zip(k, size, strict=True))
    x = sample(rng, (c, *size) if one else (2, c, *size), dtype)
    w = sample(rng, (f, c, *k), dtype)
    hyper = dict(stride=stride, padding=padding, rounding="floor")
    want = oracle("forward", {"x": x, "w": w}, hyper)["out"]
    scale = np.abs(x.astype(want.dtype)).max() * np.abs(w.astype(want.dtype)).sum()
    assert_rounded(conv(x, w, **hyper), want, dtype, scale)


@pytest.mark.parametrize("half", ["float16", "bfloat16"])
def test_half_answers_round_to_nearest_even(half):
    """A float32 sum exactly between two half values is rounded to the even one."""
    dtype = dtype_of(half)
    ulp = 2.0 ** (-10 if half == "float16" else -7)  # at 1.0
    x = np.array([[[1.0, 1.0 + ulp, 1.0, 1.0 + ulp]]], dtype)
    b = np.array([ulp / 2], dtype)  # exact in both types
    w = np.ones((1, 1, 1), dtype)
    out = conv(x, w, b)
    # 1 + ulp/2 -> 1 (even); 1 + 3ulp/2 -> 1 + 2ulp (even)
    np.testing.assert_array_equal(out[0, 0].astype(np.float64), [1, 1 + 2 * ulp, 1, 1 + 2 * ulp])
    assert out.dtype == dtype


def test_half_precision_accumulates_in_float32():
    """4096 products of 1 by 2**-12 add up to 1: a float16 sum would stop at 0.5 (where the
    next addend is under half an ulp)."""
    x = np.full((1, 4096, 1), 2.0**-12, np.float16)
    w = np.ones((1, 4096, 1), np.float16)
    assert conv(x, w)[0, 0] == 1.0


@pytest.mark.parametrize("layer", ["conv", "transposed"])
def test_complex_gradients_are_pytorchs(layer, rng):
    """PyTorch's out.backward(dout) for complex tensors: for the real loss L = Re Σ conj(dout)
    · out, each gradient is ∂L/∂Re z + i ∂L/∂Im z, checked here by central differences of L
    (PyTorch itself agrees: tests/parity, and the README's figures)."""
    name = "conv2d-groups" if layer == "conv" else "transposed2d"
    _, x_shape, w_shape, hyper = LAYERS[name]
    run, gradients = FUNCTIONS[layer]
    x, w = sample(rng, x_shape, "complex128"), sample(rng, w_shape, "complex128")
    dout = sample(rng, run(x, w, **hyper).shape, "complex128")

    def loss(x, w):
        return np.real(np.vdot(dout, run(x, w, **hyper)))

    dx, dw, _ = gradients(dout, x, w, **hyper)
    for array, grad, which in ((x, dx, "x"), (w, dw, "w")):
        for index in [tuple(rng.integers(0, s) for s in array.shape) for _ in range(4)]:
            numeric = 0j
            for step in (1e-6, 1e-6j):
                plus, minus = array.copy(), array.copy()
                plus[index] += step
                minus[index] -= step
                args = {"x": x, "w": w, which: plus}, {"x": x, "w": w, which: minus}
                slope = (loss(**args[0]) - loss(**args[1])) / 2e-6
                numeric += slope * (1 if step == 1e-6 else 1j)
            assert abs(numeric - grad[index]) < 1e-6 * (1 + abs(numeric)), (
                which,
                index,
                numeric,
                grad[index],
            )


def test_a_complex_array_beside_a_real_x_is_refused(rng):
    x, w = sample(rng, (1, 2, 4), "float64"), sample(rng, (1, 2, 3), "complex128")
    with pytest.raises(DTypeError, match="w is complex128 but x is float64") as info:
        conv(x, w)
    assert info.value.field == "w"
    # A real w beside a complex x takes x's dtype.
    x = sample(rng, (1, 2, 4), "complex64")
    assert conv(x, w.real).dtype == np.complex64


def test_empty_axes_other_than_the_batch_are_refused():
    for x_shape, axis in (((2, 0, 5), "C"), ((3, 0), "L"), ((1, 2, 4, 0), "W")):
        w_shape = (1, 2, 3) if len(x_shape) < 4 else (1, 2, 1, 1)
        with pytest.raises(ShapeError, match=f"x has an empty axis {axis}: shape") as info:
            conv(np.zeros(x_shape), np.zeros(w_shape))
        assert info.value.field == "x"


def test_the_rank_comes_from_w():
    """x of (C, L) with w of 3 axes is one line; with w of 4 axes it is refused naming both
    forms."""
    assert conv(np.ones((2, 5)), np.ones((3, 2, 2))).shape == (3, 4)
    with pytest.raises(ShapeError, match=r"x must be 4-D \(N, C, H, W\) or 3-D \(C, H, W\)"):
        conv(np.ones((2, 5)), np.ones((3, 2, 2, 2)))
    with pytest.raises(ShapeError, match=r"x must be 3-D \(N, C_in, L\) or 2-D \(C_in, L\)"):
        conv_transpose(np.ones((2,)), np.ones((2, 2, 2)))


@pytest.mark.parametrize("dtype", ["float16", "bfloat16", "complex64", "complex128"])
@pytest.mark.parametrize(
    "name", ["forward", "backward", "conv_transpose", "conv_transpose_backward"]
)
def test_the_cost_bounds_what_a_call_allocates(name, dtype, rng):
    """The work the table reckons (and the service admits by) holds what the adaptation and
    the kernels allocate, outputs included."""
    operation = OPERATIONS[name]
    layer = "transposed" if "transpose" in name else "conv"
    x_shape, w_shape = (4, 8, 24, 24), ((8, 6, 3, 3) if layer == "transposed" else (6, 8, 3, 3))
    hyper = {"stride": 2, "padding": 1} if layer == "transposed" else {"padding": 1}
    arrays = {"x": sample(rng, x_shape, dtype), "w": sample(rng, w_shape, dtype)}
    if "dout" in operation.inputs:
        forward = OPERATIONS["conv_transpose" if layer == "transposed" else "forward"]
        out = forward.plan({k: a.shape for k, a in arrays.items()}, hyper).out_shape
        arrays["dout"] = sample(rng, out, dtype)
    geometry = operation.plan({k: a.shape for k, a in arrays.items()}, hyper)
    cost = operation.cost(geometry, dtype)
    tracemalloc.start()
    try:
        operation.run(geometry, arrays)
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    assert peak <= cost.work_bytes + cost.output_bytes, (peak, cost)


def test_bfloat16_is_named_without_its_package():
    """The engine needs nothing beyond NumPy: a dtype named bfloat16 is costed by its name."""
    geometry = OPERATIONS["forward"].plan({"x": (1, 1, 4), "w": (1, 1, 3)}, {})
    by_name = OPERATIONS["forward"].cost(geometry, "bfloat16")
    assert by_name == OPERATIONS["forward"].cost(geometry, ml_dtypes.bfloat16)
    assert by_name.input_bytes == 2 * (4 + 3 + 1)  # x, w and b, two bytes each


def test_every_operations_batch_arrays_are_the_layers():
    """The tensor layer drops or empties the batch axis of BATCHED arrays: every operation's
    batched arrays are among them."""
    from convengine._tensors import BATCHED

    for operation in OPERATIONS.values():
        assert operation.batched <= BATCHED, operation.name
