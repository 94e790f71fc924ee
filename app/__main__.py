"""``python -m app``: the service (:mod:`app.cli`), its large blocks on huge pages.

glibc reads ``GLIBC_TUNABLES`` only as a process starts: without the huge-pages tunable
(:mod:`app.allocator`) the process starts itself again with it, the same command line and
process id, before the service is imported (that takes most of a second).
"""

from __future__ import annotations

import os
import sys

from app.allocator import huge_pages_environment


def launch() -> None:
    environ = huge_pages_environment(os.environ)
    if environ is not None:
        os.execve(sys.executable, sys.orig_argv, environ)
    from app.cli import main

    main()


if __name__ == "__main__":
    launch()
