"""Settings, from ``CONVENGINE_*`` environment variables."""

from __future__ import annotations

import math
import os
import re
import socket
from functools import lru_cache
from pathlib import Path
from typing import Annotated, Literal

import orjson
from pydantic import Field, FilePath, field_validator
from pydantic_settings import BaseSettings, NoDecode, SettingsConfigDict

__all__ = [
    "Settings",
    "available_cpus",
    "budget_within",
    "container_memory_limit",
    "get_settings",
]

MiB = 1 << 20
# What the process holds whatever it serves, outside the memory budget: the interpreter, NumPy
# and FastAPI (about 120 MiB after warm-up), and per computation thread the engine's kept work
# buffers (at most 160 MiB each, convengine/_kernels/layout.py).
BASELINE_BYTES = 256 * MiB
BUFFERS_PER_THREAD = 160 * MiB


def available_cpus() -> int:
    """CPUs this process may use: its affinity, capped by a cgroup v2 CPU quota."""
    cpus = len(os.sched_getaffinity(0))
    try:
        quota, period = Path("/sys/fs/cgroup/cpu.max").read_text().split()
        if quota != "max":
            cpus = min(cpus, max(1, math.ceil(int(quota) / int(period))))
    except (OSError, ValueError):
        pass
    return cpus


def container_memory_limit() -> int:
    """The memory this process may use: its cgroup's limit (v2, then v1), else the machine's."""
    for path in ("/sys/fs/cgroup/memory.max", "/sys/fs/cgroup/memory/memory.limit_in_bytes"):
        try:
            text = Path(path).read_text().strip()
        except OSError:
            continue
        if text.isdigit() and int(text) < 1 << 60:  # v1 says "no limit" with a huge number
            return int(text)
    return os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")


def budget_within(limit: int, max_concurrent: int) -> int:
    """The memory budget in bytes of a process allowed ``limit`` bytes: the limit less the
    baseline and the engine's kept buffers of ``max_concurrent`` threads, at least 256 MiB."""
    return max(256 * MiB, limit - BASELINE_BYTES - max_concurrent * BUFFERS_PER_THREAD)


# A browser's Origin: scheme://host[:port], no path, no quotes or brackets.
_ORIGIN = re.compile(r"[a-z][a-z0-9+.-]*://[^/\s\"'\[\],]+")


class Settings(BaseSettings):
    """Every knob of the service; each is ``CONVENGINE_<NAME>`` in the environment."""

    model_config = SettingsConfigDict(env_prefix="CONVENGINE_", extra="ignore")

    host: str = Field("127.0.0.1", description="address to listen on (0.0.0.0: every one)")
    port: int = Field(8000, ge=0, le=65535, description="TCP port to listen on")
    workers: int = Field(
        1, ge=1, le=64, description="worker processes; the CPUs are shared out between them"
    )
    log_level: Literal["critical", "error", "warning", "info", "debug", "trace"] = Field(
        "info", description="least severe level logged (the access log is always written)"
    )
    replica: str = Field(
        default_factory=socket.gethostname,
        description="this process's name in the X-Replica header and the logs",
    )
    grpc_port: int = Field(
        8001,
        ge=0,
        le=65535,
        description="port of the inference protocol over gRPC, on the same host; 0 turns it off",
    )
    shutdown_timeout: int = Field(
        30,
        ge=0,
        description="seconds in-flight requests (HTTP and gRPC) get to finish after SIGTERM",
    )

    max_body_bytes: int = Field(
        256 * MiB, ge=1024, description="largest request body; larger ones get 413"
    )
    max_json_bytes: int = Field(
        64 * MiB, ge=1024, description="largest JSON body: parsed JSON costs many times its size"
    )
    max_decoded_bytes: int = Field(
        512 * MiB, ge=1024, description="largest total of decoded arrays (after unzipping)"
    )
    max_work_bytes: int = Field(
        2048 * MiB, ge=MiB, description="largest memory one convolution may allocate"
    )
    max_gflop: float = Field(
        2000.0, gt=0, description="largest computation one request may ask for, in GFLOP"
    )
    body_timeout: float = Field(
        60.0, gt=0, description="seconds a request body may take to arrive; slower ones get 408"
    )
    max_connections: int = Field(
        1024, ge=1, description="open connections uvicorn accepts; beyond, 503"
    )
    max_concurrent: int = Field(
        default_factory=available_cpus,
        ge=1,
        description="convolutions computed at once; by default the CPUs this process may use "
        "(its affinity and the container's CPU quota)",
    )
    max_waiting: int = Field(
        32, ge=0, description="requests that may wait for a computation slot; more get 503"
    )
    memory_budget_mb: int | None = Field(
        None,
        ge=64,
        description="MiB that requests may reserve at once (bodies, arrays, work, answers); "
        "by default the container's memory limit less the process's baseline",
    )
    memory_wait: float = Field(
        10.0, gt=0, description="seconds a request may wait for room in the memory budget"
    )
    header_timeout: float = Field(
        10.0, gt=0, description="seconds a connection may take to send a request's header block"
    )
    max_header_bytes: int = Field(
        64 * 1024,
        ge=4096,
        description="bytes of one request's header block; beyond, 431 and the connection closed",
    )
    max_pending_headers: int = Field(
        256,
        ge=1,
        description="connections still sending their header block; beyond, the oldest close",
    )
    send_timeout: float = Field(
        60.0, gt=0, description="seconds an answer may wait for a client that does not read it"
    )

    def memory_budget(self) -> int:
        """The memory budget in bytes: the setting, or the container's memory limit less the
        baseline and the engine's kept buffers (at least 256 MiB)."""
        if self.memory_budget_mb is not None:
            return self.memory_budget_mb * MiB
        return budget_within(container_memory_limit(), self.max_concurrent)

    # Deployment-grade HTTP (app.encoding, app.auth, CORS): each off or harmless by default.
    compress_min_bytes: int = Field(
        1024, ge=0, description="smallest answer gzipped for a client that accepts gzip"
    )
    compress_level: int = Field(
        1, ge=0, le=3, description="gzip level of answers, ISA-L's: 0 (fastest) to 3"
    )
    api_keys_file: FilePath | None = Field(
        None, description="keys (or their SHA-256 in hex), one a line; unset: no keys needed"
    )
    cors_origins: Annotated[list[str], NoDecode] = Field(
        default_factory=list, description="origins that browsers may call from, comma-separated"
    )

    @field_validator("log_level", mode="before")
    @classmethod
    def _lower_case(cls, value: object) -> object:
        return value.lower() if isinstance(value, str) else value

    @field_validator("api_keys_file", "memory_budget_mb", mode="before")
    @classmethod
    def _unset_when_empty(cls, value: object) -> object:
        return None if value == "" else value

    @field_validator("api_keys_file", mode="after")
    @classmethod
    def _keys_readable(cls, path: Path | None) -> Path | None:
        if path is not None:
            from app.auth import read_keys  # the file's format is the key check's

            read_keys(path.read_bytes(), path)
        return path

    @field_validator("cors_origins", mode="before")
    @classmethod
    def _split_origins(cls, value: object) -> object:
        if isinstance(value, str) and value.lstrip().startswith("["):
            text = value
            try:  # pydantic-settings' usual form for a list: JSON
                value = orjson.loads(text)
            except orjson.JSONDecodeError as exc:
                raise ValueError(f"{text[:80]!r} is not a JSON list of origins: {exc}") from exc
        elif isinstance(value, str):
            value = [part for part in value.replace(",", " ").split() if part]
        if isinstance(value, list):
            for origin in value:
                if origin != "*" and (not isinstance(origin, str) or not _ORIGIN.fullmatch(origin)):
                    raise ValueError(
                        f"{str(origin)[:80]!r} is not an origin: write scheme://host[:port] with "
                        "no path or trailing slash, or *"
                    )
        return value


@lru_cache
def get_settings() -> Settings:
    return Settings()
