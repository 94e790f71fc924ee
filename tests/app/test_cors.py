"""CORS: off by default; listed origins may call, preflight included; never credentials."""

from __future__ import annotations

import pydantic
import pytest

from app.config import Settings

from .conftest import serve

pytestmark = pytest.mark.anyio
ALLOWED, REFUSED = "https://lab.example", "https://elsewhere.example"
FORWARD = {"x": [[[[1.0]]]], "w": [[[[3.0]]]]}


def preflight(origin: str) -> dict:
    return {
        "origin": origin,
        "access-control-request-method": "POST",
        "access-control-request-headers": "authorization, content-type, content-encoding",
    }


async def test_off_by_default(client):
    assert Settings().cors_origins == []
    response = await client.options("/forward", headers=preflight(ALLOWED))
    assert response.status_code == 405
    answer = await client.post("/forward", json=FORWARD, headers={"origin": ALLOWED})
    assert answer.status_code == 200
    assert "access-control-allow-origin" not in answer.headers


async def test_preflight_from_an_allowed_origin():
    async with serve(Settings(cors_origins=[ALLOWED, "http://127.0.0.1:3000"])) as client:
        response = await client.options("/forward", headers=preflight(ALLOWED))
        assert response.status_code == 200
        assert response.headers["access-control-allow-origin"] == ALLOWED
        allowed = response.headers["access-control-allow-headers"].lower()
        assert {"authorization", "content-type", "content-encoding", "x-api-key"} <= {
            h.strip() for h in allowed.split(",")
        }
        assert "POST" in response.headers["access-control-allow-methods"]
        assert "access-control-allow-credentials" not in response.headers
        answer = await client.post("/forward", json=FORWARD, headers={"origin": ALLOWED})
        assert answer.json()["out"] == [[[[3.0]]]]
        assert answer.headers["access-control-allow-origin"] == ALLOWED
        assert "x-request-id" in answer.headers["access-control-expose-headers"].lower()


async def test_preflight_from_a_refused_origin():
    async with serve(Settings(cors_origins=[ALLOWED])) as client:
        response = await client.options("/forward", headers=preflight(REFUSED))
        assert response.status_code == 400
        assert "access-control-allow-origin" not in response.headers
        assert response.headers["content-type"] == "application/json"
        assert response.json()["detail"] == [
            {
                "loc": ["header", "origin"],
                "msg": "this preflight is refused: its origin may not call this service",
                "type": "cors",
            }
        ]
        answer = await client.post("/forward", json=FORWARD, headers={"origin": REFUSED})
        assert "access-control-allow-origin" not in answer.headers  # the browser hides it


async def test_a_wildcard_never_allows_credentials():
    async with serve(Settings(cors_origins=["*"])) as client:
        headers = {**preflight(REFUSED), "cookie": "session=1"}
        response = await client.options("/forward", headers=headers)
        assert response.status_code == 200
        assert response.headers["access-control-allow-origin"] == "*"
        assert "access-control-allow-credentials" not in response.headers
        answer = await client.post("/forward", json=FORWARD, headers={"origin": REFUSED})
        assert answer.headers["access-control-allow-origin"] == "*"
        assert "access-control-allow-credentials" not in answer.headers


async def test_with_keys_preflights_need_none_and_a_401_is_readable(tmp_path):
    keys = tmp_path / "keys"
    keys.write_text("browser-key-123\n")
    async with serve(Settings(cors_origins=[ALLOWED], api_keys_file=keys)) as client:
        response = await client.options("/forward", headers=preflight(ALLOWED))
        assert response.status_code == 200
        refused = await client.post("/forward", json=FORWARD, headers={"origin": ALLOWED})
        assert refused.status_code == 401
        assert refused.headers["access-control-allow-origin"] == ALLOWED
        assert "www-authenticate" in refused.headers["access-control-expose-headers"].lower()
        headers = {"origin": ALLOWED, "authorization": "Bearer browser-key-123"}
        assert (await client.post("/forward", json=FORWARD, headers=headers)).status_code == 200


def test_origins_come_comma_separated_from_the_environment(monkeypatch):
    monkeypatch.setenv("CONVENGINE_CORS_ORIGINS", f"{ALLOWED}, http://127.0.0.1:8080")
    assert Settings().cors_origins == [ALLOWED, "http://127.0.0.1:8080"]
    monkeypatch.setenv("CONVENGINE_CORS_ORIGINS", "")
    assert Settings().cors_origins == []
    # pydantic-settings' usual form for a list is JSON: read as a list, not one literal origin.
    monkeypatch.setenv("CONVENGINE_CORS_ORIGINS", f'["{ALLOWED}", "http://127.0.0.1:8080"]')
    assert Settings().cors_origins == [ALLOWED, "http://127.0.0.1:8080"]
    for broken in ('["https://a.example"', f'["{ALLOWED}/"]', "[1, 2]", "https://a.example/path"):
        monkeypatch.setenv("CONVENGINE_CORS_ORIGINS", broken)
        with pytest.raises(ValueError, match="origin"):
            Settings()


@pytest.mark.parametrize("origin", ["https://lab.example/", "lab.example", "https://a.b/path"])
def test_a_malformed_origin_stops_the_start(origin):
    with pytest.raises(pydantic.ValidationError, match="is not an origin"):
        Settings(cors_origins=[origin])
