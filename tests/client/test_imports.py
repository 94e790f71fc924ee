"""What importing the engine and the client pulls in, in a fresh interpreter."""

from __future__ import annotations

import json
import subprocess
import sys

SERVER = {"fastapi", "starlette", "uvicorn", "pydantic", "prometheus_client", "orjson", "isal"}


def _imported_after(statement: str) -> set[str]:
    code = f"import sys, json; {statement}; print(json.dumps(sorted(sys.modules)))"
    result = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, timeout=60, check=True
    )
    return {name.split(".")[0] for name in json.loads(result.stdout)}


def test_the_client_imports_no_server_library():
    modules = _imported_after("import convengine.client")
    assert "httpx" in modules  # the check is live: the client's own library is there
    assert not modules & SERVER, modules & SERVER
    assert "app" not in modules


def test_the_engine_imports_no_http_library():
    modules = _imported_after("import convengine")
    assert "numpy" in modules
    assert not modules & (SERVER | {"httpx", "httpcore", "anyio", "tqdm", "app"})


def test_the_deprecated_app_client_still_re_exports_the_client():
    """From a checkout, ``app.client`` (documented for one more release) is the same client."""
    import app.client
    import convengine.client

    for name in app.client.__all__:
        assert getattr(app.client, name) is getattr(convengine.client, name)
