"""Health, readiness, version, the OpenAPI document and the offline docs page."""

from __future__ import annotations

import pytest

import convengine
from app.config import Settings
from app.main import create_app

pytestmark = pytest.mark.anyio


async def test_health_ready_version(client):
    assert (await client.get("/healthz")).json() == {"status": "ok"}
    assert (await client.get("/readyz")).json() == {"status": "ready"}
    version = (await client.get("/version")).json()
    assert version["version"] == convengine.__version__
    assert set(version) == {"name", "version", "numpy", "python"}


async def test_not_ready_before_warm_up():
    import httpx

    app = create_app(Settings())  # no lifespan: never warmed up
    transport = httpx.ASGITransport(app=app)
    async with httpx.AsyncClient(transport=transport, base_url="http://t") as client:
        response = await client.get("/readyz")
    assert response.status_code == 503
    assert response.json() == {"status": "starting"}


async def test_openapi_documents_every_request_form(client):
    schema = (await client.get("/openapi.json")).json()
    for path in ("/forward", "/backward"):
        operation = schema["paths"][path]["post"]
        content = operation["requestBody"]["content"]
        assert set(content) == {"application/json", "multipart/form-data", "application/x-npz"}
        assert content["application/json"]["examples"]
        assert {"400", "406", "413", "415", "422", "503"} <= set(operation["responses"])
        assert {p["name"] for p in operation["parameters"]} == {
            "stride",
            "padding",
            "dilation",
            "groups",
            "padding_mode",
            "rounding",
        }
    components = schema["components"]["schemas"]
    assert {"ForwardJSON", "BackwardJSON", "ErrorResponse", "TypedTensor", "B64Tensor"} <= set(
        components
    )
    stride = components["ForwardJSON"]["properties"]["stride"]
    assert {"minimum": 1, "maximum": 1 << 20, "type": "integer"}.items() <= stride["oneOf"][
        0
    ].items()


async def test_docs_render_from_local_assets(client):
    page = await client.get("/docs")
    assert page.status_code == 200
    assert "cdn" not in page.text.lower()
    for asset in ("swagger-ui-bundle.js", "swagger-ui.css"):
        assert f"/static-offline-docs/{asset}" in page.text
        served = await client.get(f"/static-offline-docs/{asset}")
        assert served.status_code == 200 and len(served.content) > 10_000
