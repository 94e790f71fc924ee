"""Content codings: gzip and deflate request bodies inflated as they stream in, answers gzipped.

Requests: ``Inflate`` sits outside ``BodyLimit``, so the limits count inflated bytes, as if
the body had come uncompressed: a compression bomb is cut off as soon as it passes the limit,
having cost no more memory than an uncompressed body of that size. Any other coding is a 415
that names the accepted ones.

Answers: Starlette's ``GZipMiddleware``, behind a choice made per request. Answers of at least
``minimum_size`` bytes are gzipped when ``Accept-Encoding`` allows gzip; binary answers
(``.npz``, ``.npy``, the inference protocol's binary tensors) only when the client asks for
gzip by itself (``Accept-Encoding: gzip``, as tritonclient's ``response_compression_algorithm``
and ``ConvClient(compress=True)`` send), not when gzip is one of the codings every HTTP
library offers by default: float arrays shrink by a few percent for a compression that costs
more time than computing them.
"""

from __future__ import annotations

import zlib

import anyio.lowlevel
from starlette.middleware.gzip import DEFAULT_EXCLUDED_CONTENT_TYPES, GZipMiddleware
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from app.errors import BadRequest, PayloadTooLarge, UnsupportedMediaType, error_response

__all__ = ["ACCEPTED", "BINARY_TYPES", "Compress", "Inflate", "accepted_codings"]

ACCEPTED = ("gzip", "deflate")
BINARY_TYPES = ("application/x-npz", "application/x-npy", "application/octet-stream")
_CHUNK = 256 << 10  # inflated bytes handed on per message: the most a limit is overshot by
_ALIASES = {"x-gzip": "gzip"}


def _header(scope: Scope, name: bytes) -> bytes | None:
    for key, value in scope["headers"]:
        if key == name:
            return bytes(value)
    return None


def accepted_codings(accept_encoding: str) -> list[str]:
    """The codings an ``Accept-Encoding`` value allows (q > 0), lower-case, in its order."""
    codings = []
    for item in accept_encoding.split(","):
        coding, *params = (part.strip() for part in item.split(";"))
        q = 1.0
        for param in params:
            key, _, value = param.partition("=")
            if key.strip().lower() == "q":
                try:
                    q = float(value)
                except ValueError:
                    q = 0.0
        if coding and q > 0:
            codings.append(coding.lower())
    return codings


class _Decoder:
    """One body's decompressor, handing out at most ``_CHUNK`` bytes a call."""

    def __init__(self, coding: str) -> None:
        self.coding = coding
        self.head = b""  # deflate: the first bytes, until zlib-wrapped or raw is known
        self.zobj: zlib._Decompress | None = None
        self.tail = b""  # input not yet inflated

    def _start(self, data: bytes) -> None:
        if self.coding == "gzip":
            self.zobj = zlib.decompressobj(16 + zlib.MAX_WBITS)
            return
        # HTTP's deflate is the zlib format; some clients send raw deflate: accept both.
        cmf_flg = int.from_bytes(data[:2]) if len(data) >= 2 else 0
        zlib_header = data[0] & 0x0F == 8 and cmf_flg % 31 == 0 and cmf_flg > 0
        self.zobj = zlib.decompressobj(zlib.MAX_WBITS if zlib_header else -zlib.MAX_WBITS)

    def inflate(self, data: bytes, last: bool) -> bytes:
        """Inflated bytes of ``data`` (and of earlier input), at most ``_CHUNK`` of them."""
        if self.zobj is None:
            self.head += data
            if len(self.head) < 2 and not last:
                return b""
            data, self.head = self.head, b""
            if not data:
                return b""
            self._start(data)
        assert self.zobj is not None
        if self.zobj.eof and data:
            if self.coding != "gzip":
                raise BadRequest(f"data after the end of the {self.coding} body")
            self.zobj = zlib.decompressobj(16 + zlib.MAX_WBITS)  # another gzip member
        try:
            out = self.zobj.decompress(data, _CHUNK)
        except zlib.error as exc:
            raise BadRequest(f"the {self.coding} body cannot be inflated: {exc}") from exc
        self.tail = self.zobj.unconsumed_tail or self.zobj.unused_data
        return out

    def finish(self) -> None:
        if self.zobj is None or not self.zobj.eof:
            raise BadRequest(f"the {self.coding} body ends before its compressed stream does")


class Inflate:
    """ASGI middleware: inflate ``Content-Encoding: gzip`` and ``deflate`` request bodies.

    The inner application sees the inflated body without Content-Encoding and Content-Length,
    in messages of at most 256 KiB, so the limits inside count inflated bytes. The compressed
    bytes themselves are bounded by ``max_body_bytes`` too (declared or received).
    """

    def __init__(self, app: ASGIApp, max_body_bytes: int) -> None:
        self.app, self.max_body = app, max_body_bytes

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        coding = (_header(scope, b"content-encoding") or b"").decode("latin-1").strip().lower()
        if coding in ("", "identity"):
            await self.app(scope, receive, send)
            return
        coding = _ALIASES.get(coding, coding)
        problem = self._refusal(scope, coding)
        if problem is not None:
            problem.headers["Connection"] = "close"
            await error_response(problem, scope)(scope, receive, send)
            return
        scope["headers"] = [
            (key, value)
            for key, value in scope["headers"]
            if key not in (b"content-encoding", b"content-length")
        ]
        await self.app(scope, self._inflating(receive, coding), send)

    def _refusal(self, scope: Scope, coding: str) -> UnsupportedMediaType | PayloadTooLarge | None:
        if coding not in ACCEPTED:
            return UnsupportedMediaType(
                f"Content-Encoding {coding[:40]!r} is not supported: send the body as is, "
                f"or compressed with {' or '.join(ACCEPTED)}",
                loc=("header", "content-encoding"),
                headers={"Accept-Encoding": ", ".join(ACCEPTED)},
            )
        declared = _header(scope, b"content-length")
        if declared is not None and declared.isdigit() and int(declared) > self.max_body:
            return PayloadTooLarge(
                f"the compressed body of {int(declared)} bytes is over the limit of "
                f"{self.max_body} bytes",
                loc=("header", "content-length"),
            )
        return None

    def _inflating(self, receive: Receive, coding: str) -> Receive:
        decoder = _Decoder(coding)
        received, more, done = 0, True, False

        async def inflated_receive() -> Message:
            nonlocal received, more, done
            if done:
                return await receive()
            while True:
                if decoder.tail:
                    data, decoder.tail = decoder.tail, b""
                    await anyio.lowlevel.checkpoint()  # a bomb's tail must not hog the loop
                elif more:
                    message = await receive()
                    if message["type"] != "http.request":
                        return message
                    data, more = message.get("body", b""), message.get("more_body", False)
                    received += len(data)
                    if received > self.max_body:
                        raise PayloadTooLarge(
                            f"the compressed body grew past the limit of {self.max_body} bytes",
                            headers={"Connection": "close"},
                        )
                else:
                    out = decoder.inflate(b"", last=True)
                    if out:
                        return {"type": "http.request", "body": out, "more_body": True}
                    if decoder.tail:
                        continue
                    decoder.finish()
                    done = True
                    return {"type": "http.request", "body": b"", "more_body": False}
                out = decoder.inflate(data, last=not more)
                if out:
                    return {"type": "http.request", "body": out, "more_body": True}

        return inflated_receive


class Compress:
    """ASGI middleware: gzip answers the client accepts, binary ones only when asked for."""

    def __init__(self, app: ASGIApp, minimum_size: int, level: int) -> None:
        self.app = app
        self.any_type = GZipMiddleware(app, minimum_size, level)
        self.text_only = GZipMiddleware(
            app,
            minimum_size,
            level,
            exclude_content_types=(*DEFAULT_EXCLUDED_CONTENT_TYPES, *BINARY_TYPES),
        )

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        codings = accepted_codings((_header(scope, b"accept-encoding") or b"").decode("latin-1"))
        if "gzip" not in codings:
            await self.app(scope, receive, send)
        elif [coding for coding in codings if coding != "identity"] == ["gzip"]:
            await self.any_type(scope, receive, send)
        else:
            await self.text_only(scope, receive, send)
