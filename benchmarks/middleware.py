"""What the HTTP middleware costs a request: GET /version through the app, in-process.

    python -m benchmarks.middleware

Three stacks of the same app, called straight through ASGI (no server, no socket): without
the middleware of issue 16 (Inflate, Compress, HeadAsGet, ApiKeys, CORS), with the defaults
(the first three), and with API keys and CORS on too. Medians of 5 rounds of 3000 calls.
"""

from __future__ import annotations

import asyncio
import logging
import statistics
import tempfile
import time
from pathlib import Path
from typing import Any

from starlette.middleware.cors import CORSMiddleware
from starlette.types import ASGIApp, Message

from app.auth import ApiKeys
from app.config import Settings
from app.encoding import Compress, Inflate
from app.head import HeadAsGet
from app.main import create_app

NEW: tuple[object, ...] = (Inflate, Compress, HeadAsGet, ApiKeys, CORSMiddleware)
HEADERS = [(b"host", b"convengine"), (b"accept-encoding", b"gzip, deflate, br")]


def stack(strip: tuple[object, ...], **settings: Any) -> ASGIApp:
    app = create_app(Settings(**settings))
    app.user_middleware = [m for m in app.user_middleware if m.cls not in strip]
    return app


async def per_call(app: ASGIApp, headers: list[tuple[bytes, bytes]], calls: int) -> float:
    """Microseconds per GET /version."""

    async def receive() -> Message:
        return {"type": "http.request", "body": b"", "more_body": False}

    async def send(message: Message) -> None:
        pass

    def scope() -> dict[str, Any]:
        return {
            "type": "http",
            "asgi": {"version": "3.0"},
            "http_version": "1.1",
            "method": "GET",
            "scheme": "http",
            "path": "/version",
            "raw_path": b"/version",
            "query_string": b"",
            "root_path": "",
            "headers": list(headers),
            "client": ("127.0.0.1", 1),
            "server": ("127.0.0.1", 80),
        }

    for _ in range(200):
        await app(scope(), receive, send)
    started = time.perf_counter()
    for _ in range(calls):
        await app(scope(), receive, send)
    return (time.perf_counter() - started) / calls * 1e6


async def run() -> list[str]:
    keys = Path(tempfile.mkdtemp(prefix="convengine-bench-")) / "keys"
    keys.write_text("bench-key\n")
    with_key = [*HEADERS, (b"authorization", b"Bearer bench-key")]
    cases = {
        "without the new middleware": (stack(NEW), HEADERS),
        "defaults (Inflate, Compress, HeadAsGet)": (stack(()), HEADERS),
        "API keys and CORS on too": (
            stack((), api_keys_file=keys, cors_origins=["https://lab.example"]),
            with_key,
        ),
    }
    times: dict[str, list[float]] = {label: [] for label in cases}
    for _ in range(5):
        for label, (app, headers) in cases.items():
            times[label].append(await per_call(app, headers, 3000))
    return [
        f"{label}: {statistics.median(t):.0f} us per GET /version" for label, t in times.items()
    ]


def main() -> None:
    logging.disable(logging.CRITICAL)  # the access log line is the same in every stack
    print("\n".join(asyncio.run(run())))


if __name__ == "__main__":
    main()
