"""Per-request observation: request id, replica name, metrics and one JSON log line."""

from __future__ import annotations

import logging
import time
import uuid

from starlette.datastructures import MutableHeaders
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from app import metrics
from app.errors import Overloaded, error_response, internal_error_response
from app.logs import REQUEST_ID

__all__ = ["CONNECTIONS_FULL", "Observe"]

# A scope extension set by app.server's protocol when every connection place is taken.
CONNECTIONS_FULL = "convengine.connections_full"

access_log = logging.getLogger("convengine.access")
error_log = logging.getLogger("app.errors")
_MAX_ID = 128
# A metric label per method a client invents would grow the metrics without bound.
_METHODS = frozenset({"GET", "HEAD", "POST", "PUT", "PATCH", "DELETE", "OPTIONS"})


def _request_id(scope: Scope) -> str:
    for name, value in scope["headers"]:
        if name == b"x-request-id":
            text: str = value.decode("latin-1")
            if 0 < len(text) <= _MAX_ID and text.isprintable():
                return text
    return uuid.uuid4().hex


class Observe:
    """ASGI middleware: echo or make ``X-Request-ID``, name the replica, count and log."""

    def __init__(self, app: ASGIApp, replica: str) -> None:
        self.app, self.replica = app, replica

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        started = time.perf_counter()
        request_id = _request_id(scope)
        seen = {"in": 0, "out": 0, "status": 500, "started": 0}

        async def counting_receive() -> Message:
            message = await receive()
            seen["in"] += len(message.get("body", b""))
            return message

        async def observing_send(message: Message) -> None:
            if message["type"] == "http.response.start":
                seen["status"], seen["started"] = message["status"], 1
                headers = MutableHeaders(scope=message)
                headers["x-request-id"] = request_id
                headers["x-replica"] = self.replica
            elif message["type"] == "http.response.body":
                seen["out"] += len(message.get("body", b""))
            await send(message)

        token = REQUEST_ID.set(request_id)  # every record logged from here on names it
        try:
            full = scope.get("extensions", {}).get(CONNECTIONS_FULL)
            if full is not None:
                await self._refuse(scope, receive, observing_send, full["limit"])
            else:
                await self.app(scope, counting_receive, observing_send)
        except Exception:
            # A bug: one log record, with the request id, and a JSON 500 carrying the id. Not
            # re-raised, so that neither Starlette nor uvicorn logs it again.
            error_log.exception(
                "unexpected error on %s %s (request id %s)",
                scope["method"][:16],
                scope["path"][:200],
                request_id,
            )
            if not seen["started"]:
                await internal_error_response(scope, request_id)(scope, receive, observing_send)
        finally:
            self._record(scope, request_id, seen, time.perf_counter() - started)
            REQUEST_ID.reset(token)

    @staticmethod
    async def _refuse(scope: Scope, receive: Receive, send: Send, limit: int) -> None:
        problem = Overloaded(
            f"all {limit} connections this replica accepts are open: retry shortly",
            loc=(),
            headers={"Retry-After": "1", "Connection": "close"},
        )
        await error_response(problem, scope)(scope, receive, send)

    def _record(self, scope: Scope, request_id: str, seen: dict[str, int], seconds: float) -> None:
        route = getattr(scope.get("route"), "path", "unmatched")
        method = scope["method"] if scope["method"] in _METHODS else "other"
        state = scope.get("state", {})
        # Set by the route once it knows the operation (a known /v2 model only): bounded.
        operation = state.get("operation", "")
        metrics.REQUESTS.labels(route, operation, method, str(seen["status"])).inc()
        metrics.REQUEST_SECONDS.labels(route, operation, method).observe(seconds)
        metrics.REQUEST_BYTES.labels(route).observe(seen["in"])
        metrics.RESPONSE_BYTES.labels(route).observe(seen["out"])
        client = scope.get("client")
        key = state.get("api_key")  # the key's id (app.auth), never the key
        if key is not None:
            metrics.KEY_REQUESTS.labels(key, str(seen["status"])).inc()
        line = {
            "request_id": request_id,
            "replica": self.replica,
            "method": scope["method"][:16],
            "route": route,
            "operation": operation or None,
            "path": scope["path"],
            "status": seen["status"],
            "duration_ms": round(seconds * 1000, 3),
            "bytes_in": seen["in"],
            "bytes_out": seen["out"],
            "client": client[0] if client else None,
            "key": key,
        }
        # app.logs writes the fields beside ts, level, logger and msg.
        access_log.info(
            "%s %s %d", line["method"], line["path"], seen["status"], extra={"fields": line}
        )
