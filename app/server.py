"""uvicorn's HTTP protocol, bounded against slow and hostile clients.

uvicorn bounds a request's body only through the app (:class:`app.limits.BodyLimit`'s
timeout) and an idle kept-alive connection by ``timeout_keep_alive``, but a connection that
never finishes its header block, or never reads its answer, is held for ever; and its
``limit_concurrency`` counts such connections with the others, so about a thousand of them
turn every request into a 503, ``/healthz`` included (the liveness probe then restarts the
pod in a loop). Behind no proxy (the Kubernetes Service sends traffic straight to the pods)
the server itself must bound them, so this protocol, used by ``python -m app``, adds:

- a header timeout: a connection has ``CONVENGINE_HEADER_TIMEOUT`` seconds from its first
  byte (or its opening) to finish a request's header block, or it is closed;
- a bound on a header block's size: beyond ``CONVENGINE_MAX_HEADER_BYTES`` a request gets 431
  and its connection is closed, as nginx and h11 do, so that no header block keeps the event
  loop parsing (httptools has no bound of its own);
- a bound on connections sending headers: beyond ``CONVENGINE_MAX_PENDING_HEADERS`` the
  oldest of them is closed, so a flood of unfinished header blocks evicts itself while a
  real client, which finishes its headers within milliseconds, is served;
- a send timeout: an answer the client does not read for ``CONVENGINE_SEND_TIMEOUT`` seconds
  (the transport's buffer full all that time) is dropped with the connection, so its bytes
  and reservation go back;
- the connection limit answered by the app, as JSON with a request id, instead of uvicorn's
  plain-text 503 (see :class:`app.observe.Observe`).

A stalled body is bounded by the body timeout and holds memory, not a computation place
(app.limits.admission). nginx, where it runs in front, bounds the same things with
``client_header_timeout``, ``client_body_timeout`` and ``send_timeout``
(deploy/nginx/convengine.conf).
"""

from __future__ import annotations

import asyncio
import resource
from collections import OrderedDict
from typing import Any, ClassVar

import orjson
from uvicorn.protocols.http.httptools_impl import HttpToolsProtocol

from app.config import get_settings
from app.observe import CONNECTIONS_FULL

__all__ = ["GuardedHttpProtocol", "raise_open_files_limit"]


def raise_open_files_limit() -> int:
    """Raise this process's soft limit on open files to its hard limit: each connection is one."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft != hard:
        resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))
    return hard


class GuardedHttpProtocol(HttpToolsProtocol):
    """uvicorn's httptools protocol with header and send timeouts (see the module)."""

    # Connections still sending a header block, oldest first: one event loop per process.
    pending: ClassVar[OrderedDict[GuardedHttpProtocol, None]] = OrderedDict()

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        settings = get_settings()
        self.header_timeout = settings.header_timeout
        self.max_header_bytes = settings.max_header_bytes
        self._header_bytes = 0
        self.max_pending = settings.max_pending_headers
        self.send_timeout = settings.send_timeout
        # Counted here, answered by the app: uvicorn's own check would answer in plain text.
        self.connection_limit, self.limit_concurrency = self.limit_concurrency, None
        self._header_timer: asyncio.TimerHandle | None = None
        self._send_timer: asyncio.TimerHandle | None = None

    def connection_made(self, transport: asyncio.Transport) -> None:  # type: ignore[override]
        super().connection_made(transport)
        self._await_headers()

    def connection_lost(self, exc: Exception | None) -> None:
        self._headers_done()
        self._cancel_send_timer()
        super().connection_lost(exc)

    def on_message_begin(self) -> None:
        super().on_message_begin()
        if self not in self.pending:  # the next request on a kept-alive connection
            self._await_headers()

    def data_received(self, data: bytes) -> None:
        super().data_received(data)
        if self in self.pending:  # still in a header block after parsing all of ``data``
            self._header_bytes += len(data)
            if self._header_bytes > self.max_header_bytes:
                self._refuse_headers()

    def _refuse_headers(self) -> None:
        detail = {
            "loc": ["header"],
            "msg": f"the header block is over {self.max_header_bytes} bytes",
            "type": "too_large",
        }
        body = orjson.dumps({"detail": [detail]})
        head = (
            "HTTP/1.1 431 Request Header Fields Too Large\r\ncontent-type: application/json\r\n"
            f"content-length: {len(body)}\r\nconnection: close\r\n\r\n"
        )
        if not self.transport.is_closing():
            self.transport.write(head.encode() + body)
        self._close()

    def on_headers_complete(self) -> None:
        self._headers_done()
        limit = self.connection_limit
        if limit is not None and (len(self.connections) > limit or len(self.tasks) >= limit):
            self.scope["extensions"] = {CONNECTIONS_FULL: {"limit": limit}}
        super().on_headers_complete()

    def pause_writing(self) -> None:
        super().pause_writing()
        if self._send_timer is None:
            self._send_timer = self.loop.call_later(self.send_timeout, self.transport.abort)

    def resume_writing(self) -> None:
        super().resume_writing()
        self._cancel_send_timer()

    def _await_headers(self) -> None:
        self.pending[self] = None
        self._header_bytes = 0
        self._header_timer = self.loop.call_later(self.header_timeout, self._close)
        while len(self.pending) > self.max_pending:
            oldest, _ = self.pending.popitem(last=False)
            oldest._close()

    def _headers_done(self) -> None:
        self.pending.pop(self, None)
        if self._header_timer is not None:
            self._header_timer.cancel()
            self._header_timer = None

    def _cancel_send_timer(self) -> None:
        if self._send_timer is not None:
            self._send_timer.cancel()
            self._send_timer = None

    def _close(self) -> None:
        self._headers_done()
        if not self.transport.is_closing():
            self.transport.close()
