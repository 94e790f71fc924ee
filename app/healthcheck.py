"""``python -m app.healthcheck``: exit 0 when the local service answers /healthz, else 1.

The container's HEALTHCHECK; it reads the same settings as the service, so a changed port is
followed.
"""

from __future__ import annotations

import sys
import urllib.error
import urllib.request

from app.config import get_settings


def main() -> int:
    url = f"http://127.0.0.1:{get_settings().port}/healthz"
    try:
        with urllib.request.urlopen(url, timeout=2) as response:
            return 0 if response.status == 200 else 1
    except (urllib.error.URLError, OSError):
        return 1


if __name__ == "__main__":
    sys.exit(main())
