"""``python -m app`` / ``convengine-serve``: run the service with uvicorn on its settings.

Before the engine is imported it sizes the BLAS thread pools so that workers x threads fits
the CPUs this process may use (a container's CPU quota included), fixes glibc's mmap
threshold so that freed memory goes back to the system (app.limits.memory), and with several
workers points the metrics at a shared directory.
"""

from __future__ import annotations

import os
import tempfile

import uvicorn

from app.config import available_cpus, get_settings
from app.limits.memory import keep_heap_small
from app.observe import LOG_CONFIG
from app.server import GuardedHttpProtocol, raise_open_files_limit

_THREAD_VARIABLES = ("OPENBLAS_NUM_THREADS", "OMP_NUM_THREADS", "MKL_NUM_THREADS")


def main() -> None:
    settings = get_settings()
    keep_heap_small()
    raise_open_files_limit()
    threads = max(1, available_cpus() // settings.workers)
    for variable in _THREAD_VARIABLES:
        os.environ.setdefault(variable, str(threads))
    if settings.workers > 1 and not os.environ.get("PROMETHEUS_MULTIPROC_DIR"):
        os.environ["PROMETHEUS_MULTIPROC_DIR"] = tempfile.mkdtemp(prefix="convengine-metrics-")
    uvicorn.run(
        "app.main:app",
        host=settings.host,
        port=settings.port,
        workers=settings.workers,
        log_level=settings.log_level,
        log_config=LOG_CONFIG,
        access_log=False,  # app.observe writes one JSON line per request instead
        timeout_graceful_shutdown=settings.shutdown_timeout,
        limit_concurrency=settings.max_connections,
        http=GuardedHttpProtocol,  # header and send timeouts, a bound on unfinished headers
    )


if __name__ == "__main__":
    main()
