"""POST /explain and convengine.explain: the dry run agrees with the real routes, answers and
refusals alike, on every test geometry and on random ones."""

from __future__ import annotations

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

import convengine
from benchmarks.payloads import read, request
from convengine import OPERATIONS

from ..engine.test_against_oracle import GRID
from ..engine.test_errors import GEOMETRY_ERRORS
from ..tensors import DTYPES, sample
from .conftest import serve
from .test_operations_served import LAYERS

pytestmark = pytest.mark.anyio

_FORWARD_OF = {"backward": "forward", "conv_transpose_backward": "conv_transpose"}


def _dry_run(operation, shapes, hyper, dtype="float32"):
    body = {"operation": operation, **{k: {"shape": list(s)} for k, s in shapes.items()}}
    return {**body, "dtype": dtype, **_json(hyper)}


def _json(hyper):
    def plain(value):
        return [plain(v) for v in value] if isinstance(value, tuple | list) else value

    return {key: plain(value) for key, value in hyper.items()}


async def _both(client, operation, shapes, hyper, rng, dtype="float32"):
    """The dry run's answer and the real request's, for arrays of ``shapes`` in ``dtype``."""
    dry = await client.post("/explain", json=_dry_run(operation, shapes, hyper, dtype))
    arrays = {k: sample(rng, s, dtype) for k, s in shapes.items()}
    real = await client.post(
        OPERATIONS[operation].path, **request("b64", arrays, hyper, "application/x-npz")
    )
    return dry, real


def _shapes(operation, x_shape, w_shape, out_shape):
    shapes = {"x": x_shape, "w": w_shape}
    if "dout" in OPERATIONS[operation].inputs:
        shapes["dout"] = out_shape
    return shapes


async def _agree(
    client, x_shape, w_shape, hyper, rng, operations=("forward", "backward"), dtype="float32"
):
    """Status and body of the dry run against the real request, for each operation."""
    checked = 0
    for name in operations:
        if not set(hyper) <= OPERATIONS[name].hyperparameters:
            continue
        forward = _FORWARD_OF.get(name, name)
        first = await client.post(
            "/explain",
            json=_dry_run(forward, _shapes(forward, x_shape, w_shape, None), hyper, dtype),
        )
        out_shape = (
            tuple(first.json()["outputs"]["out"]["shape"]) if first.status_code == 200 else x_shape
        )
        dry, real = await _both(
            client, name, _shapes(name, x_shape, w_shape, out_shape), hyper, rng, dtype
        )
        assert dry.status_code == real.status_code, (name, dry.text, real.text)
        if real.status_code == 200:
            answer = dry.json()
            got = read(real, list(OPERATIONS[name].outputs))
            assert answer["operation"] == name
            assert {k: (tuple(v["shape"]), v["dtype"]) for k, v in answer["outputs"].items()} == {
                k: (a.shape, a.dtype.name) for k, a in got.items()
            }
            empty = len(x_shape) == len(w_shape) and x_shape[0] == 0
            assert (answer["flops"] > 0) != empty
            assert answer["memory_bytes"] >= sum(a.nbytes for a in got.values())
        else:
            assert dry.json() == real.json()
        checked += 1
    return checked


@pytest.mark.parametrize(("x_shape", "w_shape", "hyper"), GRID.values(), ids=GRID)
async def test_agrees_with_the_routes_on_the_oracle_grid(client, x_shape, w_shape, hyper, rng):
    assert await _agree(client, x_shape, w_shape, hyper, rng) == 2


@pytest.mark.parametrize("name", LAYERS)
async def test_agrees_with_the_routes_on_every_rank_and_transposed(client, name, rng):
    kind, x_shape, w_shape, hyper = LAYERS[name]
    ops = (
        ("conv_transpose", "conv_transpose_backward")
        if kind == "transposed"
        else ("forward", "backward")
    )
    assert await _agree(client, x_shape, w_shape, hyper, rng, ops) == 2


@pytest.mark.parametrize(
    ("x_shape", "w_shape", "hyper"),
    [(x, w, hyper) for _, x, w, hyper, *_ in GEOMETRY_ERRORS],
    ids=[case[0] for case in GEOMETRY_ERRORS],
)
async def test_refuses_exactly_as_the_routes_do(client, x_shape, w_shape, hyper, rng):
    assert await _agree(client, x_shape, w_shape, hyper, rng, ("forward",)) == 1


@settings(
    max_examples=40, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)
@given(
    x=st.tuples(st.integers(1, 2), st.integers(1, 4), st.integers(1, 9), st.integers(1, 9)),
    f=st.integers(1, 4),
    k=st.tuples(st.integers(1, 5), st.integers(1, 5)),
    stride=st.integers(1, 3),
    padding=st.integers(0, 3),
    dilation=st.integers(1, 2),
    groups=st.sampled_from([1, 2]),
    rounding=st.sampled_from(["exact", "floor"]),
    batch=st.sampled_from(["batch", "one sample", "empty"]),
    dtype=st.sampled_from(DTYPES),
)
async def test_agrees_with_the_routes_on_random_geometry(
    x, f, k, stride, padding, dilation, groups, rounding, batch, dtype
):
    rng = np.random.default_rng(0)
    hyper = dict(
        stride=stride, padding=padding, dilation=dilation, groups=groups, rounding=rounding
    )
    w = (f, max(1, x[1] // groups), *k)
    x = {"batch": x, "one sample": x[1:], "empty": (0, *x[1:])}[batch]
    async with serve() as client:
        await _agree(client, x, w, hyper, rng, dtype=dtype)


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("batch", ["one sample", "empty"])
@pytest.mark.parametrize("name", LAYERS)
async def test_agrees_on_every_tensor(client, name, batch, dtype, rng):
    kind, x_shape, w_shape, hyper = LAYERS[name]
    x_shape = x_shape[1:] if batch == "one sample" else (0, *x_shape[1:])
    ops = (
        ("conv_transpose", "conv_transpose_backward")
        if kind == "transposed"
        else ("forward", "backward")
    )
    assert await _agree(client, x_shape, w_shape, hyper, rng, ops, dtype) == 2


def test_the_library_costs_each_dtype_as_it_computes():
    """Half precision holds half of float32's arrays, and works in float32; complex numbers
    take four real products."""
    shapes = dict(x=(4, 8, 32, 32), w=(16, 8, 3, 3), padding=1)
    cost = {d: convengine.explain("forward", dtype=d, **shapes) for d in DTYPES}
    records = {d: convengine.OPERATIONS["forward"] for d in DTYPES}
    assert cost["float16"].flops == cost["bfloat16"].flops == cost["float32"].flops
    assert cost["complex64"].flops == cost["complex128"].flops == 4 * cost["float32"].flops
    assert cost["float16"].memory_bytes > cost["float32"].memory_bytes  # the float32 copies
    assert cost["complex64"].memory_bytes < cost["complex128"].memory_bytes
    geometry = records["float16"].plan({"x": (4, 8, 32, 32), "w": (16, 8, 3, 3)}, {"padding": 1})
    half, single = (records["float16"].cost(geometry, d) for d in ("float16", "float32"))
    assert half.input_bytes * 2 == single.input_bytes
    assert half.output_bytes * 2 == single.output_bytes
    assert convengine.explain("forward", x=(0, 8, 32, 32), w=(16, 8, 3, 3)).flops == 0
    # A JSON answer writes two numbers per complex element, and reserves room for them.
    complex_cost = records["complex64"].cost(geometry, "complex64")
    assert complex_cost.output_numbers == 2 * complex_cost.output_elements
    assert single.output_numbers == single.output_elements


@pytest.mark.parametrize(("x_shape", "w_shape", "hyper"), GRID.values(), ids=GRID)
async def test_the_library_and_the_route_give_the_same_explanation(client, x_shape, w_shape, hyper):
    dry = await client.post(
        "/explain", json=_dry_run("forward", {"x": x_shape, "w": w_shape}, hyper)
    )
    assert (
        dry.json()
        == convengine.explain("forward", x=x_shape, w=w_shape, dtype="float32", **hyper).to_dict()
    )


async def test_the_dtype_of_the_answer_is_x_s(client):
    body = {
        "operation": "forward",
        "x": {"shape": [1, 1, 4, 4], "dtype": "float64"},
        "w": {"shape": [1, 1, 3, 3], "dtype": "float32"},
    }
    answer = (await client.post("/explain", json=body)).json()
    assert answer["outputs"] == {"out": {"shape": [1, 1, 2, 2], "dtype": "float64"}}
    # Without a dtype: the top-level one, float64 by default, as in a JSON request.
    del body["x"]["dtype"]
    answer = (await client.post("/explain", json={**body, "dtype": "float32"})).json()
    assert answer["outputs"]["out"]["dtype"] == "float32"


@pytest.mark.parametrize(
    ("body", "loc", "message"),
    [
        (
            {"x": {"shape": [1, 1, 4, 4]}},
            ["body", "operation"],
            "operation must be one of forward, backward, conv_transpose, conv_transpose_backward, got None",
        ),
        (
            {"operation": "fwd"},
            ["body", "operation"],
            "operation must be one of forward, backward, conv_transpose, conv_transpose_backward, got 'fwd'",
        ),
        (
            {"operation": "forward", "x": {"shape": [1, 1, 4, 4]}},
            ["body", "w"],
            "array 'w' is required",
        ),
        (
            {"operation": "forward", "x": [[1.0]], "w": {"shape": [1, 1, 1, 1]}},
            ["body", "x"],
            'x must be {"shape": [...], "dtype": "float32" | ...} in a dry run (dtype optional: float16, bfloat16, float32, float64, complex64, complex128), got [[1.0]]',
        ),
        (
            {"operation": "forward", "x": {"shape": [1, -1, 4, 4]}, "w": {"shape": [1, 1, 1, 1]}},
            ["body", "x", "shape"],
            "x.shape must be a list of at most 8 non-negative integers, got [1, -1, 4, 4]",
        ),
        (
            {
                "operation": "forward",
                "x": {"shape": [1, 1, 4, 4], "dtype": "int8"},
                "w": {"shape": [1, 1, 1, 1]},
            },
            ["body", "x", "dtype"],
            "x has dtype 'int8'; the service takes float16, bfloat16, float32, float64, complex64, complex128",
        ),
    ],
    ids=[
        "no-operation",
        "unknown-operation",
        "missing-array",
        "numbers-not-a-spec",
        "negative-axis",
        "int8",
    ],
)
async def test_refuses_what_is_not_a_dry_run(client, body, loc, message):
    response = await client.post("/explain", json=body)
    assert response.status_code == 422
    detail = response.json()["detail"][0]
    assert (detail["loc"], detail["msg"]) == (loc, message)


async def test_a_body_of_arrays_is_refused_before_it_is_read_whole(client):
    huge = b'{"operation": "forward", "x": {"shape": [1]}, "pad": "' + b"x" * 100_000 + b'"}'
    response = await client.post(
        "/explain", content=huge, headers={"content-type": "application/json"}
    )
    assert response.status_code == 413
    assert "send shapes, not arrays" in response.json()["detail"][0]["msg"]
    assert (await client.get("/healthz")).status_code == 200


async def test_explain_is_in_the_openapi_document(client):
    document = (await client.get("/openapi.json")).json()
    entry = document["paths"]["/explain"]["post"]
    assert entry["operationId"] == "explain"
    example = entry["requestBody"]["content"]["application/json"]["example"]
    assert example["operation"] == "forward"
    answer = await client.post("/explain", json=example)
    assert answer.status_code == 200, answer.text
    assert set(document["components"]["schemas"]["Explanation"]["properties"]) == {
        "operation",
        "outputs",
        "flops",
        "memory_bytes",
        "path",
    }


def test_the_library_takes_arrays_and_tensors_for_shapes():
    x = np.zeros((2, 3, 8, 8), np.float32)
    explained = convengine.explain("forward", x=x, w=(4, 3, 3, 3), padding=1)
    assert explained.outputs["out"] == convengine.ArraySpec((2, 4, 8, 8), "float32")

    class Tensor:
        """What a framework's tensor shows: a shape (a tuple subclass) and a dtype of its own
        type that names itself "torch.float64" (torch is not installed for the tests)."""

        class Size(tuple):
            pass

        class DType:
            def __str__(self):
                return "torch.float64"

        def __init__(self, *shape):
            self.shape, self.dtype = Tensor.Size(shape), Tensor.DType()

    explained = convengine.explain(
        "conv_transpose", x=Tensor(1, 4, 3, 3), w=Tensor(4, 2, 2, 2), stride=2
    )
    assert explained.outputs["out"] == convengine.ArraySpec((1, 2, 6, 6), "float64")


@pytest.mark.parametrize(
    ("arguments", "error", "message"),
    [
        (dict(x=(1, 1, 4, 4)), TypeError, "forward needs w: give each its shape"),
        (
            dict(x=(1, 1, 4, 4), w=(1, 1, 3, 3), output_padding=1),
            TypeError,
            "forward takes no argument 'output_padding'",
        ),
        (
            dict(x=(1, 1, 4, 4), w=(1, 1, 3, 3), dtype=np.int16),
            convengine.DTypeError,
            "x has dtype int16; the engine takes float16, bfloat16, float32, float64, complex64 or complex128",
        ),
        (
            dict(x="1, 1, 4, 4", w=(1, 1, 3, 3)),
            convengine.ShapeError,
            "x must be a shape (a sequence of ints), got '1, 1, 4, 4'",
        ),
        (
            dict(x=(1, 1, 4.0, 4), w=(1, 1, 3, 3)),
            convengine.ShapeError,
            "x must be a shape of non-negative ints, got (1, 1, 4.0, 4)",
        ),
        (
            dict(x=(1, 1, 4, 4), w=(1, 1, 3, 3), stride=3),
            convengine.ShapeError,
            "output height (4 + 2*0 - 1*(3-1) - 1)/3 + 1 = 1.33333 is not a whole number",
        ),
    ],
    ids=["missing", "unknown", "int16", "text", "float-axis", "stride"],
)
def test_the_library_refuses_as_a_call_would(arguments, error, message):
    with pytest.raises(error, match=None) as raised:
        convengine.explain("forward", **arguments)
    assert str(raised.value).startswith(message)


@pytest.mark.parametrize(
    ("name", "x", "w", "hyper", "path"),
    [
        ("forward", (1, 8, 25, 25), (16, 8, 3, 3), {"padding": 1, "stride": 2}, "im2col"),
        ("forward", (1, 8, 12, 12), (16, 8, 3, 3), {"padding": 1}, "small"),
        ("forward", (1, 1, 8, 8), (1, 1, 3, 3), {"padding": 1}, "gather"),
        ("forward", (1, 32, 28, 28), (32, 32, 3, 3), {"padding": 1}, "winograd"),
        ("forward", (1, 8, 12, 12), (16, 8, 1, 1), {}, "pointwise"),
        ("forward", (1, 8, 12, 12), (8, 1, 3, 3), {"groups": 8, "padding": 1}, "depthwise"),
        ("forward", (1, 4, 6, 6, 6), (4, 4, 3, 3, 3), {"padding": 1}, "flat"),
        ("conv_transpose", (1, 4, 3, 3), (4, 2, 2, 2), {"stride": 2}, "phases"),
        ("conv_transpose", (1, 16, 12, 12), (16, 8, 4, 4), {"stride": 2, "padding": 1}, "subpixel"),
        (
            "conv_transpose_backward",
            (1, 16, 12, 12),
            (16, 8, 3, 3),
            {"stride": 2},
            "dx: im2col, dw: im2col",
        ),
    ],
    ids=[
        "im2col",
        "small",
        "gather",
        "winograd",
        "pointwise",
        "depthwise",
        "flat-volume",
        "unpatchify",
        "upsample",
        "transposed-backward",
    ],
)
async def test_the_dry_run_names_the_kernel_the_selector_picks(client, name, x, w, hyper, path):
    shapes = {"x": x, "w": w}
    if name == "conv_transpose_backward":
        shapes["dout"] = (
            convengine.explain("conv_transpose", **shapes, **hyper).outputs["out"].shape
        )
    dry = await client.post("/explain", json=_dry_run(name, shapes, hyper))
    assert dry.status_code == 200, dry.text
    assert dry.json()["path"] == path
