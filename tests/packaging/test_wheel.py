"""The wheel holds the engine and its client, and a client-only install needs no server.

The wheel is built from a copy of the checkout (so the build's own files stay out of it),
then installed in a fresh virtualenv from the package registry: first alone (the engine),
then with the ``client`` extra, which must pull in none of the service's libraries.
"""

from __future__ import annotations

import email
import json
import os
import re
import shutil
import subprocess
import sys
import tomllib
import zipfile
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest

import convengine

from ..servers import start_service

ROOT = Path(__file__).resolve().parents[2]
SERVER = {"fastapi", "starlette", "uvicorn", "pydantic", "prometheus-client", "orjson", "isal"}
SKIPPED = ("__pycache__", ".*", "build", "dist", "*.egg-info", "artifacts", "node_modules")


def _run(*command: str | Path, cwd: Path | None = None) -> str:
    result = subprocess.run(
        [str(part) for part in command], cwd=cwd, capture_output=True, text=True, timeout=240
    )
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    return result.stdout


@pytest.fixture(scope="module")
def wheel(tmp_path_factory) -> Path:
    source = tmp_path_factory.mktemp("checkout") / "convengine"
    shutil.copytree(ROOT, source, ignore=shutil.ignore_patterns(*SKIPPED))
    out = tmp_path_factory.mktemp("dist")
    _run(sys.executable, "-m", "pip", "wheel", source, "--no-deps", "-w", out, "-q")
    (built,) = out.glob("convengine-*.whl")
    return built


def _metadata(wheel: Path) -> email.message.Message:
    with zipfile.ZipFile(wheel) as archive:
        (name,) = [n for n in archive.namelist() if n.endswith(".dist-info/METADATA")]
        return email.message_from_bytes(archive.read(name))


def test_the_wheel_holds_the_engine_and_client_only(wheel):
    with zipfile.ZipFile(wheel) as archive:
        names = archive.namelist()
    tops = {name.split("/")[0] for name in names}
    assert tops == {"convengine", f"convengine-{convengine.__version__}.dist-info"}
    assert {"convengine/py.typed", "convengine/__init__.py", "convengine/_operations.py"} <= set(
        names
    )
    for module in ("__init__", "_async/client", "_sync/client", "_wire", "_fleet"):
        assert f"convengine/client/{module}.py" in names
    assert not [n for n in names if n.startswith(("app/", "benchmarks/", "scripts/", "tests/"))]
    assert "convengine/bench.py" not in names
    info = f"convengine-{convengine.__version__}.dist-info"
    assert f"{info}/licenses/LICENSE" in names
    assert f"{info}/entry_points.txt" not in names  # no console script into the app package


def test_the_metadata_lists_each_extra_and_one_version(wheel):
    metadata = _metadata(wheel)
    assert metadata["Version"] == convengine.__version__
    assert metadata["License-Expression"] == "MIT"
    assert "Typing :: Typed" in metadata.get_all("Classifier")
    requires: dict[str, set[str]] = {}
    for line in metadata.get_all("Requires-Dist"):
        requirement, _, marker = line.partition(";")
        extra = marker.split("==")[1].strip(' "') if marker else ""
        requires.setdefault(extra, set()).add(_name(requirement))
    assert requires[""] == {"numpy", "threadpoolctl"}
    assert requires["client"] == {"httpx", "tqdm"}
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    server = {_name(r) for r in project["optional-dependencies"]["server"]}
    assert requires["server"] == server and {"fastapi", "uvicorn", "isal"} <= server


@pytest.fixture(scope="module")
def venv(tmp_path_factory) -> Path:
    path = tmp_path_factory.mktemp("venv") / "env"
    _run(sys.executable, "-m", "venv", path)
    return path


def _installed(venv: Path) -> set[str]:
    listed = _run(venv / "bin/python", "-m", "pip", "list", "--format", "json")
    return {package["name"].lower().replace("_", "-") for package in json.loads(listed)}


@pytest.fixture(scope="module")
def service(tmp_path_factory) -> Iterator[str]:
    service = start_service(tmp_path_factory.mktemp("service"))
    service.wait_ready(timeout=60)
    yield service.url
    service.stop()


PIP = ("-m", "pip", "install", "-q", "--disable-pip-version-check")
CALL = """
import json, sys
import numpy as np
import convengine.client
from convengine.client import ConvClient
x = np.arange(2 * 3 * 5 * 5, dtype=np.float64).reshape(2, 3, 5, 5) / 7
w = np.linspace(-1, 1, 4 * 3 * 3 * 3).reshape(4, 3, 3, 3)
with ConvClient(sys.argv[1]) as client:
    out = client.forward(x, w, stride=2, padding=1)
    dx, dw, db = client.backward(np.ones_like(out), x, w, stride=2, padding=1)
print(json.dumps({"file": convengine.client.__file__, "out": out.tolist(), "db": db.tolist(),
                  "modules": sorted({m.split(".")[0] for m in sys.modules})}))
"""


def test_a_client_only_install_has_no_server_and_calls_a_live_one(wheel, venv, service, tmp_path):
    """``pip install <wheel>`` is the engine; ``[client]`` adds httpx and tqdm, no server."""
    python = venv / "bin/python"
    _run(python, *PIP, wheel)
    engine_only = _installed(venv)
    assert {"convengine", "numpy", "threadpoolctl"} <= engine_only
    assert not engine_only & (SERVER | {"httpx", "tqdm"})
    result = subprocess.run(
        [python, "-c", "import convengine.client"], cwd=tmp_path, capture_output=True, text=True
    )
    assert "convengine.client needs httpx: install the client extra" in result.stderr
    _run(python, *PIP, f"{wheel}[client]")
    with_client = _installed(venv)
    assert {"httpx", "tqdm"} <= with_client and not with_client & SERVER
    # From a folder of its own: the installed package, not the checkout's.
    script = tmp_path / "call.py"
    script.write_text(CALL)
    answer = json.loads(_run(python, script, service, cwd=tmp_path))
    assert Path(answer["file"]).is_relative_to(venv)
    assert not set(answer["modules"]) & {"fastapi", "starlette", "uvicorn", "pydantic", "app"}
    x = np.arange(2 * 3 * 5 * 5, dtype=np.float64).reshape(2, 3, 5, 5) / 7
    w = np.linspace(-1, 1, 4 * 3 * 3 * 3).reshape(4, 3, 3, 3)
    want = convengine.conv(x, w, stride=2, padding=1)
    np.testing.assert_allclose(answer["out"], want, rtol=1e-12)
    np.testing.assert_allclose(answer["db"], np.full(4, 2 * 3 * 3), rtol=1e-12)
    # The wheel brings no package named app: `python -m app` there is the user's, or nothing.
    result = subprocess.run(
        [python, "-m", "app"],
        cwd=tmp_path,
        capture_output=True,
        text=True,
        timeout=60,
        env={**os.environ, "PYTHONPATH": ""},
    )
    assert result.returncode != 0 and "No module named app" in result.stderr


def _name(requirement: str) -> str:
    """A requirement's project name: "protobuf>=5.27,<7" and "protobuf<7,>=5.27" alike."""
    match = re.match(r"[A-Za-z0-9_.-]+", requirement.strip())
    assert match is not None, requirement
    return match.group()
