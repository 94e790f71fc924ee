"""Real service processes for tests: `python -m app` on a free 127.0.0.1 port."""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path

import httpx


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


@dataclass
class Service:
    process: subprocess.Popen[bytes]
    port: int
    log_path: Path
    host: str = "127.0.0.1"
    grpc_port: int = 0  # the inference protocol over gRPC; 0: off
    starts: int = 1  # the "Application startup complete" lines to expect (one per worker)

    @property
    def grpc_target(self) -> str:
        return f"{self.host}:{self.grpc_port}"

    @property
    def url(self) -> str:
        # Its own address: replicas may share a port on several loopback addresses.
        return f"http://{self.host}:{self.port}"

    def wait_ready(self, timeout: float = 60, streak: int = 1) -> None:
        """Until /readyz answers 200 ``streak`` times in a row and every worker has logged its
        start (the kernel may hand all the probes to the first worker up)."""
        deadline, ready = time.monotonic() + timeout, 0
        while ready < streak or self.log().count("Application startup complete") < self.starts:
            assert self.process.poll() is None, f"the service exited:\n{self.log()}"
            assert time.monotonic() < deadline, f"not ready in {timeout} s:\n{self.log()}"
            try:
                ok = httpx.get(f"{self.url}/readyz", timeout=1).status_code == 200
            except httpx.TransportError:
                ok = False
            ready = ready + 1 if ok else 0
            if not ok:
                time.sleep(0.1)

    def stop(self, timeout: float = 30) -> str:
        """SIGTERM, wait, and return the log; a clean shutdown is asserted."""
        if self.process.poll() is None:
            self.process.send_signal(signal.SIGTERM)
        self.process.wait(timeout=timeout)
        log = self.log()
        # uvicorn re-raises the signal once it has shut down: -SIGTERM is a clean exit.
        assert self.process.returncode in (0, -signal.SIGTERM), log
        assert "Traceback" not in log, log
        return log

    def log(self) -> str:
        return self.log_path.read_text(errors="replace")


def start_service(log_dir: Path, **settings: str) -> Service:
    """``python -m app`` with ``CONVENGINE_<NAME>`` for each setting given; gRPC on a free
    port of its own unless ``grpc_port`` is given (0 turns it off)."""
    port = int(settings.pop("port", 0)) or free_port()
    grpc_port = int(settings.pop("grpc_port", -1))
    grpc_port = free_port() if grpc_port < 0 else grpc_port
    env = {**os.environ, "CONVENGINE_PORT": str(port), "CONVENGINE_GRPC_PORT": str(grpc_port)}
    env.update({f"CONVENGINE_{k.upper()}": str(v) for k, v in settings.items()})
    host = str(settings.get("host", "127.0.0.1"))
    log_path = log_dir / f"service-{host}-{port}.log"
    with log_path.open("wb") as log:
        process = subprocess.Popen(
            [sys.executable, "-m", "app"], env=env, stdout=log, stderr=subprocess.STDOUT
        )
    logs_starts = str(settings.get("log_level", "info")).lower() in ("trace", "debug", "info")
    starts = int(settings.get("workers", 1)) if logs_starts else 0
    return Service(process, port, log_path, host, grpc_port, starts)
