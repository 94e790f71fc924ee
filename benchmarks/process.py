"""`python -m app` on free 127.0.0.1 ports, for the benchmarks that measure a real process."""

from __future__ import annotations

import os
import socket
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

import httpx

__all__ = ["Running", "free_port", "running_service"]


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


@dataclass(frozen=True)
class Running:
    url: str  # HTTP
    grpc_target: str  # host:port, or "" with gRPC off
    pid: int = 0  # the service's process


@contextmanager
def running_service(grpc: bool = False, **settings: str) -> Iterator[Running]:
    """The service, ready, with ``CONVENGINE_<NAME>`` for each setting; gRPC off unless asked
    (so that no two processes contend for 8001)."""
    port, grpc_port = free_port(), free_port() if grpc else 0
    env = {**os.environ, "CONVENGINE_PORT": str(port), "CONVENGINE_GRPC_PORT": str(grpc_port)}
    env.update({"CONVENGINE_LOG_LEVEL": "warning"})
    env.update({f"CONVENGINE_{name.upper()}": value for name, value in settings.items()})
    log = Path(tempfile.mkdtemp(prefix="convengine-bench-")) / "service.log"
    with log.open("wb") as sink:
        # Its log (standard error) to the file too, as a collector would take it: a terminal
        # would slow every request by its access log line.
        service = subprocess.Popen(
            [sys.executable, "-m", "app"], env=env, stdout=sink, stderr=subprocess.STDOUT
        )
    url = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 60
        while True:
            try:
                if httpx.get(f"{url}/readyz", timeout=1).status_code == 200:
                    break
            except httpx.TransportError:
                pass
            if time.monotonic() > deadline:
                raise SystemExit(f"the service did not start:\n{log.read_text()}")
            time.sleep(0.1)
        yield Running(url, f"127.0.0.1:{grpc_port}" if grpc else "", service.pid)
    finally:
        service.terminate()
        service.wait(timeout=30)
