"""The body's bounds: its size, and the time it may take to arrive."""

from __future__ import annotations

from collections.abc import Callable

import anyio
from starlette.requests import Request
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from app.errors import BadRequest, PayloadTooLarge, RequestTimeout, error_response

__all__ = [
    "BINARY_EXPANSION",
    "JSON_EXPANSION",
    "BodyLimit",
    "declared",
    "holding",
    "is_json",
    "reading_bytes",
]

# What reading and decoding a body holds, per byte of it. JSON: the parsed document, measured
# at 9x (six-digit integers), 13x (one-digit integers), 15x ("1.5,") and 26x (pairs of numbers
# in their own lists) its size with the array beside it; 32x bounds them. Binary formats: the
# body, and its arrays decoded beside it (an archive that inflates beyond that takes the rest
# when it declares it, app.codecs.base.Budget).
JSON_EXPANSION = 32
BINARY_EXPANSION = 2


def is_json(content_type: str | bytes | None) -> bool:
    """Every type the JSON decoder reads: application/json and any +json type."""
    text = content_type.decode("latin-1") if isinstance(content_type, bytes) else content_type
    kind = (text or "").split(";")[0].strip().lower()
    return kind == "application/json" or kind.endswith("+json")


def holding(json_bytes: int | None) -> Callable[[int], int]:
    """What a body holds while it is read and decoded once ``n`` of its bytes have arrived:
    the first ``json_bytes`` of them parsed as JSON (all of them for None), the rest binary."""

    def held(n: int) -> int:
        return reading_bytes(n, n if json_bytes is None else json_bytes)

    return held


def declared(request: Request) -> int | None:
    """The body's declared length, if it has one (not chunked, not compressed)."""
    length = request.headers.get("content-length", "")
    # A compressed body reaches the routes inflated, without one (app.encoding.Inflate).
    if length.isascii() and length.isdigit() and len(length) < 19:
        return int(length)
    return None


def reading_bytes(length: int, json_bytes: int) -> int:
    """What a body of ``length`` bytes, ``json_bytes`` of them JSON, holds while it is read and
    decoded."""
    json_bytes = min(json_bytes, length)
    return JSON_EXPANSION * json_bytes + BINARY_EXPANSION * (length - json_bytes)


class BodyLimit:
    """ASGI middleware: 413 for a body over the limit, 408 for one that arrives too slowly.

    A declared Content-Length over the limit is refused before reading a byte; a body that
    grows past the limit (chunked, or a lying Content-Length) fails as soon as it does.
    JSON bodies have their own, lower limit: parsed JSON costs many times its size. A body
    must arrive whole within ``body_timeout`` seconds, so slow senders cannot hold a
    computation place for ever.
    """

    def __init__(
        self, app: ASGIApp, max_body_bytes: int, max_json_bytes: int, body_timeout: float
    ) -> None:
        self.app, self.max_body, self.max_json = app, max_body_bytes, max_json_bytes
        self.body_timeout = body_timeout

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        headers = dict(scope["headers"])
        json_body = is_json(headers.get(b"content-type"))
        limit = self.max_json if json_body else self.max_body
        what = "JSON body" if json_body else "body"
        declared = headers.get(b"content-length")
        if declared is not None:
            problem: BadRequest | PayloadTooLarge | None = None
            if not declared.isdigit():
                problem = BadRequest(
                    f"Content-Length {declared[:20]!r} is not a number",
                    loc=("header", "content-length"),
                )
            elif int(declared) > limit:
                problem = PayloadTooLarge(
                    f"the {what} of {int(declared)} bytes is over the limit of {limit} bytes",
                    loc=("header", "content-length"),
                )
            if problem is not None:
                problem.headers["Connection"] = "close"
                await error_response(problem, scope)(scope, receive, send)
                return
        received, complete = 0, False
        deadline = anyio.current_time() + self.body_timeout

        async def limited_receive() -> Message:
            nonlocal received, complete
            if complete:  # after the body: waiting for a disconnect is not bounded here
                return await receive()
            try:
                with anyio.fail_after(max(0.0, deadline - anyio.current_time())):
                    message = await receive()
            except TimeoutError:
                raise RequestTimeout(
                    f"the {what} did not arrive within {self.body_timeout:g} seconds",
                    headers={"Connection": "close"},
                ) from None
            if message["type"] == "http.request":
                complete = not message.get("more_body", False)
                received += len(message.get("body", b""))
                if received > limit:
                    raise PayloadTooLarge(
                        f"the {what} grew past the limit of {limit} bytes",
                        headers={"Connection": "close"},
                    )
            return message

        await self.app(scope, limited_receive, send)
