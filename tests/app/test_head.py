"""HEAD answers wherever GET does, with the same status and headers and no body."""

from __future__ import annotations

import os
from collections.abc import Iterator

import httpx
import pytest
from starlette.routing import Mount

from app.config import Settings
from app.main import create_app

from ..servers import start_service

pytestmark = pytest.mark.anyio
PATH_PARAMETERS = {"{name}": "conv2d", "{version}": "1"}
VARYING = {"date", "x-request-id", "content-length"}  # content-length: /metrics changes


def _get_paths(routes) -> Iterator[str]:
    """A URL for every GET route and static mount, included routers opened."""
    for route in routes:
        inner = getattr(route, "original_router", None)  # FastAPI's included routers
        if inner is not None:
            yield from _get_paths(inner.routes)
        elif isinstance(route, Mount):
            yield f"{route.path}/{sorted(os.listdir(route.app.directory))[0]}"  # type: ignore[attr-defined]
        elif "GET" in (getattr(route, "methods", None) or ()):
            path = route.path
            for name, value in PATH_PARAMETERS.items():
                path = path.replace(name, value)
            yield path


GET_PATHS = sorted(set(_get_paths(create_app(Settings()).routes)))


def test_every_kind_of_get_route_is_listed():
    assert {"/healthz", "/metrics", "/v2/models/conv2d/versions/1/ready", "/", "/docs"} <= set(
        GET_PATHS
    )
    assert any(path.startswith("/static/") for path in GET_PATHS)
    assert any(path.startswith("/static-offline-docs/") for path in GET_PATHS)
    assert len(GET_PATHS) >= 18


def _same_answer(get: httpx.Response, head: httpx.Response) -> None:
    assert head.status_code == get.status_code == 200, (get.request.url, get.status_code)
    assert head.content == b""
    shown = {k: v for k, v in head.headers.items() if k not in VARYING}
    assert shown == {k: v for k, v in get.headers.items() if k not in VARYING}
    if not get.request.url.path.endswith("/metrics"):
        assert head.headers.get("content-length") == get.headers.get("content-length")


@pytest.mark.parametrize("path", GET_PATHS)
async def test_head_answers_like_get(client, path):
    _same_answer(await client.get(path), await client.head(path))


async def test_head_on_a_post_route_is_still_405(client):
    assert (await client.head("/forward")).status_code == 405


async def test_head_is_counted_as_head(client):
    await client.head("/version")
    metrics = (await client.get("/metrics")).text
    assert (
        'convengine_requests_total{method="HEAD",operation="",route="/version",status="200"}'
        in metrics
    )


def test_head_through_uvicorn_on_every_get_route(tmp_path):
    service = start_service(tmp_path, log_level="warning")
    try:
        service.wait_ready()
        with httpx.Client(base_url=service.url, timeout=10) as client:
            for path in GET_PATHS:
                _same_answer(client.get(path), client.head(path))
    finally:
        service.stop()
