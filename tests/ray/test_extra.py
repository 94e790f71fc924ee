"""Ray Serve is installed where the tests run: ``make install`` adds the ``ray`` extra, under
the lock, so tests/ray never skips in CI for want of it."""

from __future__ import annotations

import importlib.util
import re
import sys
import tomllib
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]


def test_make_install_adds_the_ray_extra_under_the_lock():
    makefile = (ROOT / "Makefile").read_text()
    tools = re.search(r"^\$\(TOOLS\):.*\n((?:\t.*\n)+)", makefile, re.M)
    assert tools is not None
    assert "$(PIP) -c requirements.lock -e '.[dev,client,ray]'" in tools[1]
    extras = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"][
        "optional-dependencies"
    ]
    assert extras["ray"] == ["ray[serve]==2.60.0"]


def test_a_venv_made_by_make_install_has_ray():
    """Once ``make install`` has run with this pyproject.toml (its stamp newer), ray imports."""
    stamp, project = Path(sys.prefix) / ".tools", ROOT / "pyproject.toml"
    if stamp.exists() and stamp.stat().st_mtime >= project.stat().st_mtime:
        assert importlib.util.find_spec("ray") is not None, "make install did not install ray"
