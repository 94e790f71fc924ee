"""Bounds on what one request may cost: body bytes, work, and computations at once."""

from __future__ import annotations

from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from functools import partial
from typing import TypeVar

import anyio
import anyio.to_thread
from anyio import CapacityLimiter
from starlette.requests import Request
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from app.errors import (
    BadRequest,
    InvalidInput,
    Overloaded,
    PayloadTooLarge,
    RequestTimeout,
    error_response,
)
from convengine import ConvGeometry

__all__ = ["BodyLimit", "Gate", "check_work"]

T = TypeVar("T")
MiB = 1 << 20


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
        is_json = headers.get(b"content-type", b"").lower().startswith(b"application/json")
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
                await error_response(problem, scope["path"])(scope, receive, send)
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


class Gate:
    """At most ``slots`` computations at once and ``waiting`` more in line; beyond, 503."""

    def __init__(self, slots: int, waiting: int) -> None:
        self.limiter = CapacityLimiter(slots)
        self.capacity = slots + waiting
        self.admitted = 0  # touched only on the event loop: no lock needed

    @asynccontextmanager
    async def admit(self) -> AsyncIterator[None]:
        if self.admitted >= self.capacity:
            raise Overloaded(
                f"all {self.capacity} computation and waiting places are taken: retry shortly",
                loc=(),
                headers={"Retry-After": "1"},
            )
        self.admitted += 1
        try:
            yield
        finally:
            self.admitted -= 1

    async def run(self, work: Callable[[], T]) -> T:
        """``work()`` in a worker thread, once a computation slot is free."""
        return await anyio.to_thread.run_sync(work, limiter=self.limiter)

    async def serve(self, request: Request, work: Callable[[bytes], T]) -> T:
        """Admit ``request``, read its body, and run ``work(body)`` in a computation slot.

        The body is read only once admitted, so refused requests hold no memory.
        """
        async with self.admit():
            body = await request.body()
            return await self.run(partial(work, body))


def check_work(
    geometry: ConvGeometry, itemsize: int, passes: int, max_bytes: int, max_gflop: float
) -> None:
    """422 for a convolution that would need more memory or arithmetic than allowed."""
    need = geometry.work_elements() * itemsize
    if need > max_bytes:
        raise InvalidInput(
            f"this convolution would need about {need / MiB:,.0f} MiB of working memory "
            f"(output {geometry.out_shape}, padded input {geometry.padded_hw}), over the "
            f"service's limit of {max_bytes / MiB:,.0f} MiB: "
            "send a smaller batch, image or padding",
            type="work_limit",
        )
    gflop = geometry.flops() * passes / 1e9
    if gflop > max_gflop:
        raise InvalidInput(
            f"this convolution would take {gflop:,.1f} GFLOP, over the service's limit of "
            f"{max_gflop:,.1f} GFLOP: split the batch into several requests",
            type="work_limit",
        )
