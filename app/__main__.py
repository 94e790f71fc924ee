"""``python -m app``: the service (:mod:`app.cli`), its large blocks on huge pages.

glibc reads ``GLIBC_TUNABLES`` only as a process starts: without the huge-pages tunable
(:mod:`app.allocator`) the process starts itself again with it, the same command line and
process id, before the service is imported (that takes most of a second).
"""

from __future__ import annotations

import os
import sys

from app.allocator import huge_pages_environment

# Set on the way to the second start: a process never starts itself a third time, even where
# the loader drops GLIBC_TUNABLES (a binary run with raised privileges).
RELAUNCHED = "_CONVENGINE_RELAUNCHED"


def launch() -> None:
    environ = None if RELAUNCHED in os.environ else huge_pages_environment(os.environ)
    if environ is not None:
        os.execve(sys.executable, sys.orig_argv, {**environ, RELAUNCHED: "1"})
    from app.cli import main

    main()


if __name__ == "__main__":
    launch()
