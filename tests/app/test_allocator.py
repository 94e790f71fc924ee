"""python -m app starts itself again with glibc's malloc on huge pages (app.allocator)."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import httpx
import pytest

from app import allocator
from app.__main__ import RELAUNCHED
from app.allocator import HUGE_PAGES, huge_pages_environment
from tests.servers import Service, free_port


@pytest.fixture
def glibc(monkeypatch):
    """The version glibc reports, as a test sets it."""

    def report(version: str | None) -> None:
        def confstr(name: str) -> str | None:
            if version is None:
                raise ValueError("unrecognized configuration name")
            return version

        monkeypatch.setattr(allocator.os, "confstr", confstr)

    return report


@pytest.mark.parametrize(
    ("tunables", "expected"),
    [
        (None, f"{HUGE_PAGES}=1"),
        ("", f"{HUGE_PAGES}=1"),
        ("glibc.malloc.arena_max=2", f"glibc.malloc.arena_max=2:{HUGE_PAGES}=1"),
        ("glibc.pthread.rseq=0:", f"glibc.pthread.rseq=0:{HUGE_PAGES}=1"),
    ],
)
def test_the_tunable_is_added_to_what_the_environment_says(glibc, tunables, expected):
    glibc("glibc 2.36")
    environ = {"PATH": "/bin"} | ({} if tunables is None else {"GLIBC_TUNABLES": tunables})
    assert huge_pages_environment(environ) == {"PATH": "/bin", "GLIBC_TUNABLES": expected}
    assert environ.get("GLIBC_TUNABLES") == tunables  # the caller's mapping left alone


@pytest.mark.parametrize(
    "tunables", [f"{HUGE_PAGES}=1", f"{HUGE_PAGES}=0", f"glibc.malloc.arena_max=2:{HUGE_PAGES}=2"]
)
def test_an_operators_own_setting_is_kept(glibc, tunables):
    glibc("glibc 2.36")
    assert huge_pages_environment({"GLIBC_TUNABLES": tunables}) is None


@pytest.mark.parametrize(
    "version", [None, "glibc 2.34", "glibc 1.99", "musl 1.2.4", "glibc x.y", ""]
)
def test_nothing_without_a_glibc_that_has_the_tunable(glibc, version):
    glibc(version)
    assert huge_pages_environment({}) is None


def _start(tmp_path: Path, **environ: str) -> Service:
    port = free_port()
    inherited = {k: v for k, v in os.environ.items() if k not in ("GLIBC_TUNABLES", RELAUNCHED)}
    env = {**inherited, "CONVENGINE_PORT": str(port), "CONVENGINE_GRPC_PORT": "0", **environ}
    log_path = tmp_path / "service.log"
    with log_path.open("wb") as log:
        process = subprocess.Popen(
            [sys.executable, "-m", "app", "--log-level", "info"],
            env=env,
            stdout=log,
            stderr=subprocess.STDOUT,
        )
    return Service(process, port, log_path)


def _environment_of(pid: int) -> dict[str, str]:
    pairs = Path(f"/proc/{pid}/environ").read_bytes().split(b"\0")
    return dict(pair.decode().partition("=")[::2] for pair in pairs if pair)


@pytest.mark.parametrize(
    ("given", "running"),
    [
        ({}, f"{HUGE_PAGES}=1"),
        ({"GLIBC_TUNABLES": f"{HUGE_PAGES}=0"}, f"{HUGE_PAGES}=0"),
        ({RELAUNCHED: "1"}, None),  # started once already: never again
    ],
    ids=["added", "operator-off", "once"],
)
def test_the_service_runs_with_the_tunable_in_the_same_process(tmp_path, given, running):
    service = _start(tmp_path, **given)
    try:
        service.wait_ready()
        # The same process the command started (exec keeps it), flags and all.
        assert f"Started server process [{service.process.pid}]" in service.log()
        assert _environment_of(service.process.pid).get("GLIBC_TUNABLES") == running
        assert httpx.get(f"{service.url}/healthz").status_code == 200
    finally:
        service.stop()
