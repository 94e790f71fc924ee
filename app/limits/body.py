"""The body's bounds: its size, and the time it may take to arrive."""

from __future__ import annotations

import anyio
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from app.errors import BadRequest, PayloadTooLarge, RequestTimeout, error_response

__all__ = ["BodyLimit"]


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
        kind = headers.get(b"content-type", b"").split(b";")[0].strip().lower()
        # Every type the JSON decoder reads: application/json and any +json type.
        is_json = kind == b"application/json" or kind.endswith(b"+json")
        limit = self.max_json if is_json else self.max_body
        what = "JSON body" if is_json else "body"
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
