"""The dtype rule: x's dtype is the dtype of the computation and of every result."""

from __future__ import annotations

import numpy as np
import pytest

from convengine import DTypeError, conv2d, conv2d_backward

HYPER = dict(stride=2, padding=1)


def _case(rng):
    return (
        rng.standard_normal((4, 8, 17, 17)),
        rng.standard_normal((6, 8, 3, 3)),
        rng.standard_normal(6),
        rng.standard_normal((4, 6, 9, 9)),
    )


def test_float32_stays_float32_and_agrees_with_float64(rng):
    x, w, b, dout = _case(rng)
    f32 = [a.astype(np.float32) for a in (x, w, b, dout)]
    out32 = conv2d(*f32[:3], **HYPER)
    assert out32.dtype == np.float32
    scale = np.max(np.abs(conv2d(x, w, b, **HYPER)))
    np.testing.assert_allclose(out32, conv2d(x, w, b, **HYPER), rtol=1e-4, atol=1e-4 * scale)
    grads64 = conv2d_backward(dout, x, w, **HYPER)
    for g32, g64 in zip(conv2d_backward(f32[3], f32[0], f32[1], **HYPER), grads64):
        assert g32.dtype == np.float32
        np.testing.assert_allclose(g32, g64, rtol=1e-4, atol=1e-4 * np.max(np.abs(g64)))


@pytest.mark.parametrize(
    "x_dtype, other_dtype", [(np.float32, np.float64), (np.float64, np.float32)]
)
def test_mixed_dtypes_follow_x(x_dtype, other_dtype, rng):
    x, w, b, dout = _case(rng)
    x = x.astype(x_dtype)
    assert conv2d(x, w.astype(other_dtype), b.astype(other_dtype), **HYPER).dtype == x_dtype
    grads = conv2d_backward(dout.astype(other_dtype), x, w.astype(other_dtype), **HYPER)
    assert [g.dtype for g in grads] == [np.dtype(x_dtype)] * 3


@pytest.mark.parametrize(
    "field, bad",
    [
        ("x", np.ones((1, 1, 3, 3), dtype=np.int64)),
        ("x", np.ones((1, 1, 3, 3), dtype=np.complex128)),
        ("x", np.ones((1, 1, 3, 3), dtype=np.float16)),
        ("x", np.ones((1, 1, 3, 3), dtype=bool)),
        ("x", np.empty((1, 1, 3, 3), dtype=object)),
        ("w", np.ones((1, 1, 3, 3), dtype=np.int32)),
        ("b", np.array(["a"])),
    ],
    ids=["int", "complex", "float16", "bool", "object", "int-weights", "string-bias"],
)
def test_other_dtypes_are_refused_by_name(field, bad):
    arrays = {"x": np.ones((1, 1, 3, 3)), "w": np.ones((1, 1, 3, 3)), "b": np.ones(1)}
    arrays[field] = bad
    with pytest.raises(
        DTypeError, match=rf"^{field} has dtype {bad.dtype}; .* float32 or float64"
    ) as info:
        conv2d(arrays["x"], arrays["w"], arrays["b"])
    assert info.value.field == field
    assert isinstance(info.value, TypeError)


def test_nested_lists_are_accepted_as_float64():
    out = conv2d([[[[1.0, 2.0], [3.0, 4.0]]]], [[[[1.0]]]])
    assert out.dtype == np.float64
    np.testing.assert_array_equal(out, [[[[1.0, 2.0], [3.0, 4.0]]]])
