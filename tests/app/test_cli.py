"""``python -m app``: help, a flag per setting over its variable, one-line refusals, warnings."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import httpx
import pytest

from app.cli import BadSetting, flag, settings_from, unknown_variables, variable
from app.config import Settings

from ..servers import Service, free_port


def _run(*args: str, **env: str) -> subprocess.CompletedProcess[str]:
    clean = {k: v for k, v in os.environ.items() if not k.startswith("CONVENGINE_")}
    return subprocess.run(
        [sys.executable, "-m", "app", *args],
        env={**clean, **env},
        capture_output=True,
        text=True,
        timeout=60,
    )


def test_help_names_every_setting_as_a_flag_and_its_variable_and_exits_0():
    done = _run("--help")
    assert done.returncode == 0, done.stderr
    assert done.stdout.startswith("usage: python -m app")
    for name in Settings.model_fields:
        assert flag(name) in done.stdout and variable(name) in done.stdout, name
    assert "an integer from 0 to 65535" in done.stdout  # what --port accepts


@pytest.mark.parametrize(
    ("args", "env", "named", "accepts"),
    [
        ((), {"CONVENGINE_PORT": "abc"}, "CONVENGINE_PORT='abc'", "an integer from 0 to 65535"),
        (("--port", "70000"), {}, "--port='70000'", "an integer from 0 to 65535"),
        ((), {"CONVENGINE_LOG_LEVEL": "loud"}, "CONVENGINE_LOG_LEVEL", "one of critical, error"),
        (("--workers=0",), {}, "--workers='0'", "an integer from 1 to 64"),
        ((), {"CONVENGINE_MAX_GFLOP": "-1"}, "CONVENGINE_MAX_GFLOP", "a number above 0"),
        ((), {"CONVENGINE_MEMORY_BUDGET_MB": "1"}, "CONVENGINE_MEMORY_BUDGET_MB", "at least 64"),
        (("--cors-origins", "example.com"), {}, "--cors-origins", "is not an origin"),
        ((), {"CONVENGINE_API_KEYS_FILE": "/no/such/file"}, "CONVENGINE_API_KEYS_FILE", "file"),
    ],
    ids=[
        "env-port",
        "flag-port",
        "env-log-level",
        "flag-workers",
        "env-gflop",
        "env-budget",
        "flag-cors",
        "env-keys-file",
    ],
)
def test_a_bad_value_is_one_line_naming_it_and_what_it_takes_exit_2(args, env, named, accepts):
    done = _run(*args, **env)
    assert done.returncode == 2
    assert "Traceback" not in done.stderr
    (line,) = done.stderr.splitlines()
    assert line.startswith("python -m app: ") and named in line and accepts in line, line


def test_a_flag_wins_over_its_variable_and_levels_take_any_case(monkeypatch):
    monkeypatch.setenv("CONVENGINE_PORT", "1234")
    monkeypatch.setenv("CONVENGINE_LOG_LEVEL", "WARNING")
    settings = settings_from({"port": "4321"})
    assert (settings.port, settings.log_level) == (4321, "warning")
    assert settings_from({"log_level": "Debug"}).log_level == "debug"
    with pytest.raises(BadSetting, match=r"^--max-waiting='-1' is refused"):
        settings_from({"max_waiting": "-1"})


def test_unknown_variables_are_named_with_the_closest_setting():
    warnings = unknown_variables({"CONVENGINE_PROT": "1", "CONVENGINE_PORT": "1", "HOME": "/"})
    assert warnings == [
        "CONVENGINE_PROT is not a setting and is ignored: did you mean CONVENGINE_PORT?"
    ]


def test_the_process_serves_on_its_flags_over_variables_and_warns_of_a_misspelt_one(tmp_path: Path):
    port = free_port()
    env = {**os.environ, "CONVENGINE_PORT": str(free_port()), "CONVENGINE_REPLICA": "from-env"}
    env.update(CONVENGINE_MAX_WAITNG="3", CONVENGINE_LOG_LEVEL="INFO")
    log_path = tmp_path / "service.log"
    with log_path.open("wb") as log:
        process = subprocess.Popen(
            [
                sys.executable,
                "-m",
                "app",
                "--port",
                str(port),
                "--replica",
                "from-flag",
                "--max-waiting",
                "7",
            ],
            env=env,
            stdout=log,
            stderr=subprocess.STDOUT,
        )
    service = Service(process, port, log_path)
    try:
        service.wait_ready()
        health = httpx.get(f"{service.url}/healthz", timeout=10)
        assert health.headers["x-replica"] == "from-flag"
        assert httpx.get(f"{service.url}/limits", timeout=10).json()["max_waiting"] == 7
    finally:
        log = service.stop()
    lines = [json.loads(line) for line in log.splitlines()]
    warnings = [line for line in lines if line["level"] == "warning"]
    assert [w["msg"] for w in warnings] == [
        "CONVENGINE_MAX_WAITNG is not a setting and is ignored: did you mean CONVENGINE_MAX_WAITING?"
    ]
