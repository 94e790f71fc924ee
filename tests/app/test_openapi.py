"""The OpenAPI document works: clean unique operationIds, typed answers, and the requests
Swagger UI's "Try it out" builds from the document's own examples all answer 200."""

from __future__ import annotations

import io
import re
from typing import Any

import numpy as np
import pytest

from convengine import OPERATIONS

pytestmark = pytest.mark.anyio

EXPECTED_IDS = {
    "healthz", "readyz", "version", "metrics", "limits",
    "forward", "backward", "conv_transpose", "conv_transpose_backward",
    "server_metadata", "server_live", "server_ready",
    "model_metadata", "model_version_metadata", "model_ready", "model_version_ready",
    "model_infer", "model_version_infer",
}  # fmt: skip


@pytest.fixture
async def document(client) -> dict[str, Any]:
    return (await client.get("/openapi.json")).json()


def _operations(document: dict[str, Any]) -> list[tuple[str, str, dict[str, Any]]]:
    return [
        (method, path, entry)
        for path, methods in document["paths"].items()
        for method, entry in methods.items()
    ]


async def test_operation_ids_are_the_table_s_names_and_readable_and_unique(document):
    ids = [entry["operationId"] for _, _, entry in _operations(document)]
    assert len(ids) == len(set(ids)), sorted(ids)
    assert all(re.fullmatch(r"[a-z][a-z0-9_]*", i) for i in ids), ids
    assert set(ids) >= EXPECTED_IDS, EXPECTED_IDS - set(ids)
    by_path = {path: entry["operationId"] for _, path, entry in _operations(document)}
    for operation in OPERATIONS.values():
        assert by_path[operation.path] == operation.name


@pytest.mark.parametrize(
    ("path", "model", "fields"),
    [
        ("/healthz", "Health", {"status"}),
        ("/readyz", "Readiness", {"status"}),
        ("/version", "Version", {"name", "version", "numpy", "python"}),
        ("/limits", "Limits", {"max_body_bytes", "max_concurrent", "memory_budget_bytes"}),
    ],
)
async def test_health_version_and_limits_have_typed_answers(client, document, path, model, fields):
    content = document["paths"][path]["get"]["responses"]["200"]["content"]
    assert content["application/json"]["schema"] == {"$ref": f"#/components/schemas/{model}"}
    schema = document["components"]["schemas"][model]
    assert fields <= schema["properties"].keys()
    answer = (await client.get(path)).json()
    assert set(answer) == set(schema["properties"])  # the document says what comes


async def test_the_description_is_today_s(document):
    text = document["info"]["description"]
    assert "1, 2 or 3 spatial axes" in text and "transposed" in text
    assert "(F, C/groups, KH, KW)" not in text


def _npy(value: Any) -> bytes:
    stream = io.BytesIO()
    np.save(stream, np.asarray(value, dtype=np.float32))
    return stream.getvalue()


def _json_requests(body: dict[str, Any]) -> list[dict[str, Any]]:
    """What Try it out sends for JSON: each example as it is."""
    return [{"json": example["value"]} for example in body["examples"].values()]


def _multipart_request(body: dict[str, Any], example: dict[str, Any]) -> dict[str, Any]:
    """What Try it out sends for a multipart form: a file chosen for each array of the example
    (the user's .npy files), an empty file part for each array left out, and each text field
    as the document pre-fills it."""
    files: list[tuple[str, tuple[str, bytes, str]]] = []
    fields: dict[str, str] = {}
    for name, prop in body["schema"]["properties"].items():
        if prop.get("format") == "binary":
            data = _npy(example[name]) if name in example else b""
            files.append((name, (f"{name}.npy" if data else "", data, "application/octet-stream")))
        else:
            assert "example" in prop and prop["example"] != "string", (name, prop)
            fields[name] = prop["example"]
    return {"files": files, "data": fields}


def _npz_request(operation_example: dict[str, Any], inputs: tuple[str, ...]) -> dict[str, Any]:
    """An .npz file of the example's arrays, its hyperparameters typed into the query boxes."""
    stream = io.BytesIO()
    np.savez(
        stream,
        **{k: np.asarray(v, np.float32) for k, v in operation_example.items() if k in inputs},
    )
    params = {k: str(v) for k, v in operation_example.items() if k not in inputs}
    return {
        "content": stream.getvalue(),
        "headers": {"content-type": "application/x-npz"},
        "params": params,
    }


@pytest.mark.parametrize("name", list(OPERATIONS))
async def test_try_it_out_answers_200_for_every_payload_form_with_its_example(
    client, document, name
):
    operation = OPERATIONS[name]
    entry = document["paths"][operation.path]["post"]
    content = entry["requestBody"]["content"]
    json_example = next(iter(content["application/json"]["examples"].values()))["value"]
    requests = [
        *_json_requests(content["application/json"]),
        _multipart_request(content["multipart/form-data"], json_example),
        _npz_request(json_example, operation.inputs),
    ]
    assert set(content) == {"application/json", "multipart/form-data", "application/x-npz"}
    # Swagger UI sends the first media type of the 200 answer as Accept.
    accept = next(iter(entry["responses"]["200"]["content"]))
    for request in requests:
        headers = {**request.pop("headers", {}), "accept": accept}
        response = await client.post(operation.path, headers=headers, **request)
        assert response.status_code == 200, (request, response.text)
        assert set(response.json()) >= set(operation.outputs)


async def test_a_blank_multipart_field_is_absent(client):
    files = [
        ("x", ("x.npy", _npy([[[[1.0, 2.0], [3.0, 4.0]]]]), "application/octet-stream")),
        ("w", ("w.npy", _npy([[[[1.0]]]]), "application/octet-stream")),
        ("b", ("", b"", "application/octet-stream")),  # a file input left empty
    ]
    data = {"stride": "", "padding": "1"}  # a text box cleared: the default stride
    response = await client.post(
        "/forward", files=files, data=data, headers={"accept": "application/json"}
    )
    assert response.status_code == 200, response.text
    assert np.asarray(response.json()["out"]).shape == (1, 1, 4, 4)
    missing = await client.post("/forward", files=[files[1], ("x", ("", b"", "x/y"))])
    assert missing.status_code == 422
    assert missing.json()["detail"][0]["loc"][-1] == "x"
