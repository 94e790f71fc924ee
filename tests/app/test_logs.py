"""One log format: every line a process writes is one JSON object (app.logs)."""

from __future__ import annotations

import hashlib
import json
import logging
import logging.config
import re
import socket
import sys
import time
from pathlib import Path

import httpx
import pytest

from app.logs import REQUEST_ID, JsonFormatter, log_config

from ..servers import start_service

TS = re.compile(r"^\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{3}Z$")


def _lines(log: str) -> list[dict[str, object]]:
    lines = [json.loads(line) for line in log.splitlines()]  # fails on any line not JSON
    for line in lines:
        assert TS.match(str(line["ts"])), line
        assert {"level", "logger", "msg"} <= line.keys(), line
    return lines


def _record(msg: str) -> logging.LogRecord:
    return logging.LogRecord("app.test", logging.ERROR, __file__, 1, msg, (), None)


def test_a_record_is_one_line_with_utc_milliseconds_level_logger_and_the_request_id():
    record = _record("boom")
    record.created = 1767225600.25  # 2026-01-01T00:00:00.250Z
    try:
        raise ValueError("inner")
    except ValueError:
        record.exc_info = sys.exc_info()
    token = REQUEST_ID.set("req-1")
    try:
        text = JsonFormatter().format(record)
    finally:
        REQUEST_ID.reset(token)
    assert "\n" not in text
    line = json.loads(text)
    assert line["ts"] == "2026-01-01T00:00:00.250Z"
    assert (line["level"], line["logger"], line["msg"]) == ("error", "app.test", "boom")
    assert line["request_id"] == "req-1" and "ValueError: inner" in line["exc"]
    assert "request_id" not in json.loads(JsonFormatter().format(_record("outside")))


def test_every_project_logger_reaches_the_one_handler(capsys):
    config = log_config("INFO")
    touched = [logging.getLogger(), *map(logging.getLogger, config["loggers"])]
    saved = [(lg, lg.handlers[:], lg.level, lg.propagate) for lg in touched]
    logging.config.dictConfig(config)
    try:
        for name in ("app.auth", "app.errors", "app.limits.memory", "uvicorn.error", "app.cli"):
            logging.getLogger(name).warning("from %s", name)
    finally:
        for logger, handlers, level, propagate in saved:
            logger.handlers[:], logger.level, logger.propagate = handlers, level, propagate
    lines = [json.loads(line) for line in capsys.readouterr().err.splitlines()]
    assert [line["logger"] for line in lines] == [
        "app.auth",
        "app.errors",
        "app.limits.memory",
        "uvicorn.error",
        "app.cli",
    ]


@pytest.mark.parametrize("workers", ["1", "2"])
def test_every_line_of_a_real_process_is_json_with_a_level(tmp_path: Path, workers: str):
    keys = tmp_path / "keys.txt"
    keys.write_text("first-key\n")
    service = start_service(tmp_path, workers=workers, api_keys_file=str(keys))
    try:
        service.wait_ready(streak=3)
        bearer = {"authorization": "Bearer second-key", "x-request-id": "reload-1"}
        keys.write_text("first-key\nsecond-key\n")
        time.sleep(0.05)  # a new mtime even on coarse clocks; size and inode change anyway
        response = httpx.get(f"{service.url}/version", headers=bearer, timeout=10)
        assert response.status_code == 200
        with socket.create_connection((service.host, service.port), timeout=10) as raw:
            raw.sendall(b"NOT HTTP AT ALL\r\n\r\n")  # uvicorn's own warning
            assert raw.recv(1024).startswith(b"HTTP/1.1 400")
    finally:
        lines = _lines(service.stop())
    messages = [(line["logger"], line["msg"]) for line in lines]
    assert ("uvicorn.error", "Application startup complete.") in messages
    assert ("uvicorn.error", "Application shutdown complete.") in messages
    assert ("uvicorn.error", "Invalid HTTP request received.") in messages
    # The README's promise: the ids of all keys logged each time the file is read.
    ids = [hashlib.sha256(k.encode()).hexdigest()[:8] for k in ("first-key", "second-key")]
    reloads = [line for line in lines if line["logger"] == "app.auth"]
    assert reloads[-1]["msg"] == f"API keys read from {keys}: {', '.join(ids)}"
    assert reloads[-1]["request_id"] == "reload-1" and reloads[-1]["level"] == "info"
    (access,) = [line for line in lines if line.get("route") == "/version"]
    assert (
        access["request_id"] == "reload-1" and access["status"] == 200 and access["key"] == ids[1]
    )
