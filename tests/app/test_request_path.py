"""The redesigned request path: one validated request per operation, geometry built once,
everything derived from the table of operations and the one list of hyperparameters."""

from __future__ import annotations

import ast
import io
import pathlib
from typing import get_args

import numpy as np
import pydantic
import pytest

import convengine
from app import pipeline, schemas
from app.config import Settings
from app.limits import WorkLimits
from app.schemas import HYPERPARAMETERS, Hyperparameters, parse_text, request_model
from benchmarks.payloads import REQUEST_FORMS, read, request
from convengine import OPERATIONS, ConvGeometry, conv2d, conv2d_backward

from .conftest import serve

pytestmark = pytest.mark.anyio
ROOT = pathlib.Path(__file__).resolve().parents[2]


def _specs(**shapes):
    return {name: {"shape": shape, "dtype": "float32"} for name, shape in shapes.items()}


def test_a_non_whole_output_is_a_validation_error_of_the_model():
    model = request_model(OPERATIONS["forward"])
    with pytest.raises(pydantic.ValidationError) as info:
        model.model_validate({"stride": 2, **_specs(x=(1, 1, 32, 32), w=(1, 1, 3, 3))})
    (error,) = info.value.errors()
    assert error["type"] == "shape_error"
    assert error["ctx"]["field"] == "stride"
    assert error["msg"].startswith(
        "output height (32 + 2*0 - 1*(3-1) - 1)/2 + 1 = 15.5 is not a whole number"
    )


def test_the_validated_request_carries_the_geometry_it_built():
    model = request_model(OPERATIONS["backward"])
    request = model.model_validate(
        {"padding": "same", **_specs(x=(2, 3, 8, 8), w=(4, 3, 3, 3), dout=(2, 4, 8, 8))}
    )
    built = ConvGeometry.build((2, 3, 8, 8), (4, 3, 3, 3), padding="same")
    assert request.geometry.core == built and request.geometry.batch == 2
    # One sample is planned as a batch of one, and shaped without the batch axis.
    one = model.model_validate(
        {"padding": "same", **_specs(x=(3, 8, 8), w=(4, 3, 3, 3), dout=(4, 8, 8))}
    )
    assert one.geometry.core == ConvGeometry.build((1, 3, 8, 8), (4, 3, 3, 3), padding="same")
    assert one.geometry.shapes()["dx"] == (3, 8, 8) and one.geometry.batch is None
    assert request.engine_arguments() == {
        "stride": 1,
        "padding": "same",
        "dilation": 1,
        "groups": 1,
        "padding_mode": "zeros",
        "rounding": "exact",
    }


def test_work_limits_apply_only_with_limits_in_the_context():
    model = request_model(OPERATIONS["forward"])
    data = _specs(x=(64, 64, 64, 64), w=(64, 64, 3, 3))
    model.model_validate(data)
    with pytest.raises(pydantic.ValidationError, match="GFLOP, over the service's limit"):
        model.model_validate(data, context={"limits": WorkLimits(1 << 40, 0.5)})


def test_text_forms_are_read_only_when_asked():
    model = request_model(OPERATIONS["forward"])
    data = {"stride": "2", "padding": "[1, 1]", **_specs(x=(1, 1, 9, 9), w=(1, 1, 3, 3))}
    assert model.model_validate(data, context={"text": True}).geometry.core.stride == (2, 2)
    with pytest.raises(pydantic.ValidationError, match="valid integer"):
        model.model_validate(data)


@pytest.mark.parametrize(
    "text",
    ["\u00b2", "\u0663", "1" * 40, "--1", "1,,2", "+1", "0x10", "1_000", " ", "\u0661,\u0662"],
)
def test_text_that_is_not_an_ascii_number_stays_text(text):
    assert parse_text(text) == text


@pytest.mark.parametrize(
    ("text", "value"),
    [("2", 2), (" 2 ", 2), ("2,1", [2, 1]), ("[2, 1]", [2, 1]), ("same", "same"), ("-1", -1)],
)
def test_text_forms(text, value):
    assert parse_text(text) == value


@pytest.mark.parametrize("form", [*REQUEST_FORMS, "protocol"])
async def test_one_geometry_per_request(monkeypatch, form):
    built = []
    original = ConvGeometry.build.__func__  # type: ignore[attr-defined]

    def counting(cls, *args, **kwargs):
        geometry = original(cls, *args, **kwargs)
        built.append(geometry)
        return geometry

    monkeypatch.setattr(ConvGeometry, "build", classmethod(counting))
    rng = np.random.default_rng(0)
    x = rng.standard_normal((2, 3, 9, 9)).astype(np.float32)
    w = rng.standard_normal((4, 3, 3, 3)).astype(np.float32)
    dout = rng.standard_normal((2, 4, 5, 5)).astype(np.float32)
    hyper = {"stride": 2, "padding": 1}
    async with serve() as client:
        for path, arrays, names in (
            ("forward", {"x": x, "w": w}, ["out"]),
            ("backward", {"x": x, "w": w, "dout": dout}, ["dx", "dw", "db"]),
        ):
            built.clear()
            # Validated and planned afresh, not taken from an earlier request.
            pipeline._validated.cache_clear()
            schemas._planned.cache_clear()
            if form == "protocol":
                model = OPERATIONS[path].model_name(2)
                document = {
                    "parameters": hyper,
                    "inputs": [
                        {
                            "name": name,
                            "shape": list(a.shape),
                            "datatype": "FP32",
                            "data": a.ravel().tolist(),
                        }
                        for name, a in arrays.items()
                    ],
                }
                response = await client.post(f"/v2/models/{model}/infer", json=document)
            else:
                response = await client.post(f"/{path}", **request(form, arrays, hyper))
            assert response.status_code == 200, response.text
            assert len(built) == 1, f"{path} as {form} built {len(built)} geometries"
            if form != "protocol":
                result = read(response, names)
                expected = (
                    {"out": conv2d(x, w, **hyper)}
                    if path == "forward"
                    else dict(zip(names, conv2d_backward(dout, x, w, **hyper)))
                )
                for name in names:
                    np.testing.assert_allclose(result[name], expected[name], rtol=1e-5, atol=1e-5)


async def test_a_request_like_the_last_one_is_not_validated_again():
    """The validated request and its plan are kept for the next with the same shapes, dtypes
    and hyperparameters (a training loop's steps); a different one is planned afresh, and a
    refusal is never kept."""
    rng = np.random.default_rng(1)
    x = rng.standard_normal((1, 2, 7, 7)).astype(np.float32)
    w = rng.standard_normal((3, 2, 3, 3)).astype(np.float32)
    async with serve() as client:
        pipeline._validated.cache_clear()
        schemas._planned.cache_clear()
        for hyper, planned in (({"padding": 1}, 1), ({"padding": 1}, 1), ({"padding": 2}, 2)):
            response = await client.post("/forward", **request("npz", {"x": x, "w": w}, hyper))
            assert response.status_code == 200, response.text
            assert schemas._planned.cache_info().misses == planned
            assert pipeline._validated.cache_info().misses == planned
            np.testing.assert_allclose(
                read(response, ["out"])["out"], conv2d(x, w, **hyper), rtol=1e-5, atol=1e-5
            )
        # x in float64: another dtype, another plan; a refusal is planned each time.
        body = request("npz", {"x": x.astype(np.float64), "w": w}, {"padding": 1})
        assert (await client.post("/forward", **body)).status_code == 200
        assert schemas._planned.cache_info().misses == 3
        for _ in range(2):
            refused = request("npz", {"x": x, "w": w}, {"padding": 1, "stride": 9, "dilation": 9})
            assert (await client.post("/forward", **refused)).status_code == 422
        assert schemas._planned.cache_info().misses == 5
        assert pipeline._validated.cache_info().hits == 1
        # The same numbers in JSON, as another type: validated as sent, then kept.
        for _ in range(2):
            body = {"x": x.tolist(), "w": w.tolist(), "dtype": "float32", "padding": True}
            refused = await client.post("/forward", json=body)
            assert refused.status_code == 422, refused.text
            accepted = await client.post("/forward", json={**body, "padding": 1})
            assert accepted.status_code == 200, accepted.text
        assert pipeline._validated.cache_info().hits == 2
        # A list from JSON cannot be a key: validated every time, never kept, same answer.
        kept = pipeline._validated.cache_info()
        for _ in range(2):
            listed = {"x": x.tolist(), "w": w.tolist(), "dtype": "float32", "padding": [1, 1]}
            response = await client.post("/forward", json=listed)
            assert response.status_code == 200, response.text
            np.testing.assert_allclose(
                read(response, ["out"])["out"], conv2d(x, w, padding=1), rtol=1e-5, atol=1e-5
            )
        assert pipeline._validated.cache_info() == kept
        # Long text (a valid stride padded with spaces) is validated, never kept as a key.
        npz = io.BytesIO()
        np.savez(npz, x=x, w=w)
        for _ in range(2):
            response = await client.post(
                "/forward",
                params={"stride": " " * 4000 + "1"},
                content=npz.getvalue(),
                headers={"content-type": "application/x-npz"},
            )
            assert response.status_code == 200, response.text
        assert pipeline._validated.cache_info() == kept


async def test_routes_protocol_models_and_openapi_come_from_the_table(client):
    schema = (await client.get("/openapi.json")).json()
    for operation in OPERATIONS.values():
        post = schema["paths"][operation.path]["post"]
        assert post["description"] == operation.summary or post["summary"]
        multipart = post["requestBody"]["content"]["multipart/form-data"]["schema"]
        assert set(multipart["properties"]) == {*operation.inputs, *operation.hyperparameters}
        assert operation.hyperparameters <= HYPERPARAMETERS
        assert multipart["required"] == list(operation.required)
        answers = set(post["responses"]["200"]["content"])
        assert ("application/x-npy" in answers) == (len(operation.outputs) == 1)
        for rank in (1, 2, 3):
            metadata = (await client.get(f"/v2/models/{operation.model_name(rank)}")).json()
            assert [t["name"] for t in metadata["inputs"]] == list(operation.inputs)
            assert [t["name"] for t in metadata["outputs"]] == list(operation.outputs)
            for tensor in (*metadata["inputs"], *metadata["outputs"]):
                assert len(tensor["shape"]) == operation.arrays[tensor["name"]].ndim(rank)
            for name in operation.hyperparameters:
                assert name in metadata["parameters"]["hyperparameters"]
        # Each operation's example is a request the service answers.
        response = await client.post(operation.path, json=dict(operation.example))
        assert response.status_code == 200, response.text
        assert set(response.json()) >= set(operation.outputs)


async def test_the_protocol_registers_its_own_error_shape(client):
    response = await client.post("/v2/models/conv2d/infer", content=b"x" * 10)
    assert set(response.json()) == {"error"}
    response = await client.post("/forward", content=b"x" * 10)
    assert set(response.json()) == {"detail"}


async def test_digits_of_other_scripts_are_refused_by_name_everywhere():
    x, w = np.ones((1, 1, 4, 4)), np.ones((1, 1, 3, 3))
    async with serve(Settings()) as client:
        for value in ("²", "٣", "9" * 400, "--1"):
            for form in ("multipart", "npz"):
                response = await client.post(
                    "/forward", **request(form, {"x": x, "w": w}, {"stride": value})
                )
                assert response.status_code == 422, (form, value, response.text)
                detail = response.json()["detail"][0]
                assert detail["loc"][-1] == "stride"
            document = {
                "parameters": {"stride": value},
                "inputs": [
                    {"name": "x", "shape": [1, 1, 4, 4], "datatype": "FP64", "data": [1.0] * 16},
                    {"name": "w", "shape": [1, 1, 3, 3], "datatype": "FP64", "data": [1.0] * 9},
                ],
            }
            response = await client.post("/v2/models/conv2d/infer", json=document)
            assert response.status_code == 400 and "stride" in response.json()["error"]
        headers = {"inference-header-content-length": "²".encode()}
        response = await client.post("/v2/models/conv2d/infer", content=b"{}", headers=headers)
        assert response.status_code == 400, response.text


async def test_protocol_outputs_named_twice_are_refused(client):
    document = {
        "inputs": [
            {"name": "x", "shape": [1, 1, 2, 2], "datatype": "FP64", "data": [1.0] * 4},
            {"name": "w", "shape": [1, 1, 1, 1], "datatype": "FP64", "data": [1.0]},
        ],
        "outputs": [{"name": "out"}] * 16,
    }
    response = await client.post("/v2/models/conv2d/infer", json=document)
    assert response.status_code == 400
    assert "asked for twice" in response.json()["error"]


def test_hyperparameters_are_named_once():
    """Outside the one list (and the engine's keyword arguments), no module spells them out."""
    names = set(Hyperparameters.model_fields)
    allowed = {"app/schemas.py"}
    for path in sorted((ROOT / "app").rglob("*.py")):
        relative = str(path.relative_to(ROOT))
        if relative in allowed:
            continue
        strings = {
            node.value
            for node in ast.walk(ast.parse(path.read_text()))
            if isinstance(node, ast.Constant) and isinstance(node.value, str)
        }
        assert not names & strings, f"{relative} names {names & strings}"


def _imports(path: pathlib.Path):
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            yield node.module, [alias.name for alias in node.names]
        elif isinstance(node, ast.Import):
            for alias in node.names:
                yield alias.name, []


# The engine benchmark (once convengine/bench.py) times a bare matmul split into the batch
# halves the engine computes at once: it asks the engine's own rule for them.
INTERNALS_BENCHMARKED = {("benchmarks/engine.py", "_kernels"), ("benchmarks/engine.py", "_halves")}


def test_no_module_imports_a_private_name_of_another_package():
    for package in ("app", "convengine", "benchmarks"):
        for path in sorted((ROOT / package).rglob("*.py")):
            for module, names in _imports(path):
                top = module.split(".")[0]
                if top not in ("app", "convengine", "benchmarks", "tests"):
                    continue
                assert top != "tests", f"{path} imports {module}"
                own = path.relative_to(ROOT).parts[:-1]
                parts = module.split(".")
                private = [p for p in parts if p.startswith("_")] + [
                    n for n in names if n.startswith("_")
                ]
                relative = str(path.relative_to(ROOT))
                private = [p for p in private if (relative, p) not in INTERNALS_BENCHMARKED]
                if private:
                    assert tuple(parts[: len(own)]) == own, f"{path} imports {module}.{names}"


def test_the_service_s_hyperparameters_are_the_engine_s():
    """The one list of the service is the union of the engine's records, with their choices."""
    engine = set(convengine.ConvOptions.__optional_keys__) | set(
        convengine.TransposedOptions.__optional_keys__
    )
    assert set(Hyperparameters.model_fields) == engine
    for name, literal in (
        ("padding_mode", convengine.PaddingMode),
        ("rounding", convengine.Rounding),
    ):
        assert get_args(Hyperparameters.model_fields[name].annotation) == get_args(literal)
