"""Per-request observation: request id, replica name, metrics and one JSON log line."""

from __future__ import annotations

import logging
import time
import uuid
from dataclasses import dataclass

from starlette.datastructures import MutableHeaders
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from app import metrics
from app.errors import Overloaded, error_response, internal_error_response
from app.logs import REQUEST_ID

__all__ = ["CONNECTIONS_FULL", "Exchange", "Observe", "record", "request_id"]

# A scope extension set by app.server's protocol when every connection place is taken.
CONNECTIONS_FULL = "convengine.connections_full"

access_log = logging.getLogger("convengine.access")
error_log = logging.getLogger("app.errors")
_MAX_ID = 128
# A metric label per method a client invents would grow the metrics without bound.
_METHODS = frozenset({"GET", "HEAD", "POST", "PUT", "PATCH", "DELETE", "OPTIONS", "GRPC"})


def _request_id(scope: Scope) -> str:
    for name, value in scope["headers"]:
        if name == b"x-request-id":
            return request_id(value.decode("latin-1"))
    return request_id(None)


def request_id(sent: str | None) -> str:
    """The id a client sent (X-Request-ID, or gRPC metadata), if it is usable; else a new one."""
    if sent is not None and 0 < len(sent) <= _MAX_ID and sent.isprintable():
        return sent
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
        client = scope.get("client")
        state = scope.get("state", {})
        record(
            Exchange(
                request_id=request_id,
                replica=self.replica,
                method=scope["method"],
                route=getattr(scope.get("route"), "path", "unmatched"),
                # Set by the route once it knows the operation (a known /v2 model only): bounded.
                operation=state.get("operation", ""),
                path=scope["path"],
                status=str(seen["status"]),
                seconds=seconds,
                bytes_in=seen["in"],
                bytes_out=seen["out"],
                client=client[0] if client else None,
                key=state.get("api_key"),  # the key's id (app.auth), never the key
            )
        )


@dataclass
class Exchange:
    """One request and its answer, as the metrics and the access log see them, whatever the
    transport (HTTP here, gRPC in app.rpc.service: method "GRPC", status the code's name)."""

    request_id: str
    replica: str
    method: str
    route: str
    operation: str
    path: str
    status: str
    seconds: float
    bytes_in: int
    bytes_out: int
    client: str | None
    key: str | None


def record(exchange: Exchange) -> None:
    """Count ``exchange`` in the metrics and write its access log line."""
    route, status, operation = exchange.route, exchange.status, exchange.operation
    method = exchange.method if exchange.method in _METHODS else "other"
    metrics.REQUESTS.labels(route, operation, method, status).inc()
    metrics.REQUEST_SECONDS.labels(route, operation, method).observe(exchange.seconds)
    metrics.REQUEST_BYTES.labels(route).observe(exchange.bytes_in)
    metrics.RESPONSE_BYTES.labels(route).observe(exchange.bytes_out)
    if exchange.key is not None:
        metrics.KEY_REQUESTS.labels(exchange.key, status).inc()
    line = {
        "request_id": exchange.request_id,
        "replica": exchange.replica,
        "method": exchange.method[:16],
        "route": route,
        "operation": operation or None,
        "path": exchange.path,
        "status": int(status) if status.isdigit() else status,
        "duration_ms": round(exchange.seconds * 1000, 3),
        "bytes_in": exchange.bytes_in,
        "bytes_out": exchange.bytes_out,
        "client": exchange.client,
        "key": exchange.key,
    }
    # app.logs writes the fields beside ts, level, logger and msg.
    access_log.info("%s %s %s", line["method"], line["path"], status, extra={"fields": line})
