"""Content codings: gzip and deflate request bodies inflated as they stream in, answers gzipped.

Requests: ``Inflate`` sits outside ``BodyLimit``, so the limits count inflated bytes, as if
the body had come uncompressed: a compression bomb is cut off as soon as it passes the limit,
having cost no more memory than an uncompressed body of that size. Any other coding is a 415
that names the accepted ones.

Answers are gzipped by ISA-L (igzip, about ten times zlib's speed at the same ratio), when
``Accept-Encoding`` allows gzip and the answer has at least ``minimum_size`` bytes, by what the
answer is: numbers written out as text (JSON nested lists, typed tensors' data, the inference
protocol's JSON data) shrink to about half, and are gzipped for any client that accepts gzip;
bytes of floats (``.npz``, ``.npy``, base64 in JSON, the protocol's binary tensors) shrink by a
quarter at best (base64) or a few percent (raw), for a compression that costs more time than a
LAN takes to carry what it saves, and are gzipped only when the client asks for gzip by itself
(``Accept-Encoding: gzip`` alone, as tritonclient's ``response_compression_algorithm`` and
``ConvClient(compress=True)`` send, or gzip preferred to no coding by its q-value), not when
gzip is one of the codings every HTTP library offers by default. The q-values are honoured
(:func:`acceptance`, RFC 9110 12.5.3): gzip named with a lower q than ``identity`` (or ``*``)
is not chosen, ``*`` offers gzip, ``x-gzip`` is gzip.

The computed answers are coded where they are made, in the computation thread
(:func:`gzip_answer`, from ``app.pipeline``); :class:`Compress` codes the rest (errors,
documents, the playground) as they stream out.
"""

from __future__ import annotations

import zlib
from dataclasses import dataclass
from functools import lru_cache
from typing import Any

import anyio.lowlevel
from isal import isal_zlib
from starlette.datastructures import Headers, MutableHeaders
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from app.errors import BadRequest, PayloadTooLarge, UnsupportedMediaType, error_response

__all__ = [
    "ACCEPTED",
    "BINARY_TYPES",
    "CODED",
    "Acceptance",
    "Compress",
    "Inflate",
    "acceptance",
    "gzip_answer",
]

ACCEPTED = ("gzip", "deflate")
BINARY_TYPES = ("application/x-npz", "application/x-npy", "application/octet-stream")
# Already compressed, or media that do not shrink: never gzipped.
_UNSQUEEZABLE = ("image/", "audio/", "video/", "font/", "application/gzip", "application/zip")
_CHUNK = 256 << 10  # inflated bytes handed on per message: the most a limit is overshot by
_ALIASES = {"x-gzip": "gzip"}


def _header(scope: Scope, name: bytes) -> bytes | None:
    for key, value in scope["headers"]:
        if key == name:
            return bytes(value)
    return None


def _weighted(accept_encoding: str) -> list[tuple[str, float]]:
    """Each coding an ``Accept-Encoding`` value names, lower-case, with its q-value (0 to 1;
    one that is not a number counts as 0), in its order."""
    weighted = []
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
        if coding:
            weighted.append((coding.lower(), min(q, 1.0) if q > 0 else 0.0))  # nan: 0
    return weighted


@dataclass(frozen=True)
class Acceptance:
    """What an ``Accept-Encoding`` value says of an answer gzipped against one sent as it is:
    the q-value of each (RFC 9110 12.5.3), and whether gzip is the one coding it names."""

    gzip: float
    identity: float
    gzip_alone: bool

    @property
    def any_answer(self) -> bool:
        """gzip for an answer that shrinks well (text): allowed, and not less wanted than
        no coding."""
        return self.gzip > 0 and self.gzip >= self.identity

    @property
    def asked(self) -> bool:
        """gzip for any answer, binary too: the client asked for it by itself (the only coding
        it names) or prefers it to no coding."""
        return self.any_answer and (self.gzip_alone or self.gzip > self.identity)


def acceptance(accept_encoding: str) -> Acceptance:
    """gzip against no coding, as an ``Accept-Encoding`` value weighs them: a coding's own
    entry (``x-gzip`` is gzip), else ``*``'s; no coding is acceptable unless excluded
    (``identity;q=0``, or ``*;q=0`` without an ``identity`` entry)."""
    if len(accept_encoding) <= _KEPT_VALUE:
        return _kept_acceptance(accept_encoding)
    return _acceptance(accept_encoding)


# A client sends the same Accept-Encoding with every request, and each answer reads it twice
# (the computed answer's coding, the middleware): the last few short values are kept.
_KEPT_VALUE = 128


def _acceptance(accept_encoding: str) -> Acceptance:
    named: dict[str, float] = {}
    for coding, q in _weighted(accept_encoding):
        named.setdefault(_ALIASES.get(coding, coding), q)
    star = named.get("*")
    gzip = named.get("gzip", star or 0.0)
    identity = named.get("identity", 1.0 if star is None else star)
    offered = [coding for coding, q in named.items() if q > 0 and coding != "identity"]
    return Acceptance(gzip, identity, gzip_alone=offered == ["gzip"])


_kept_acceptance = lru_cache(maxsize=32)(_acceptance)


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


# A key of an answer's ``http.response.start`` message: its coding was chosen where it was
# made (app.pipeline, from the answer's form), and this middleware passes it on as it is.
CODED = "convengine.coded"


def gzip_answer(
    content: list[bytes], accept_encoding: str, text: bool, minimum_size: int, level: int
) -> tuple[list[bytes], dict[str, str]]:
    """An answer's pieces and its coding headers: gzipped (ISA-L) when the client accepts
    gzip, the answer has ``minimum_size`` bytes or more, and either it is ``text`` (numbers
    written out, which shrink to about half) or the client asked for gzip by itself (see the
    module); piece by piece, through one compressor."""
    headers = {"vary": "Accept-Encoding"}
    accepts = acceptance(accept_encoding)
    if not (accepts.asked or (text and accepts.any_answer)):
        return content, headers
    if sum(len(piece) for piece in content) < minimum_size:
        return content, headers
    compressor = isal_zlib.compressobj(level, isal_zlib.DEFLATED, 16 + 15)
    squeezed = [compressor.compress(piece) for piece in content]
    squeezed.append(compressor.flush())
    return [piece for piece in squeezed if piece], {**headers, "content-encoding": "gzip"}


class Compress:
    """ASGI middleware: gzip the answers nothing coded before, as :func:`gzip_answer` would
    (text types; binary ones only when asked for), streamed through one ISA-L compressor."""

    def __init__(self, app: ASGIApp, minimum_size: int, level: int) -> None:
        self.app, self.minimum_size, self.level = app, minimum_size, level

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        accepts = acceptance((_header(scope, b"accept-encoding") or b"").decode("latin-1"))
        if not accepts.any_answer:
            await self.app(scope, receive, send)
            return
        answer = _Gzipping(send, accepts.asked, self.minimum_size, self.level)
        await self.app(scope, receive, answer.send)


class _Gzipping:
    """One answer on its way out: passed on as it is, or gzipped piece by piece."""

    def __init__(self, send: Send, any_type: bool, minimum_size: int, level: int) -> None:
        self.downstream, self.any_type = send, any_type
        self.minimum_size, self.level = minimum_size, level
        self.start: Message | None = None  # held until the first piece decides
        self.compressor: Any = None
        self.passing = False

    async def send(self, message: Message) -> None:
        kind = message["type"]
        if kind == "http.response.start":
            coded = message.pop(CODED, False)
            self.passing = coded or not self._compressible(message)
            if self.passing:
                await self.downstream(message)
            else:
                self.start = message
            return
        if kind != "http.response.body" or self.passing:
            await self.downstream(message)
            return
        body, more = message.get("body", b""), message.get("more_body", False)
        if self.start is not None:
            start, self.start = self.start, None
            if not more and len(body) < self.minimum_size:
                self.passing = True
                await self.downstream(start)
                await self.downstream(message)
                return
            headers = MutableHeaders(raw=start["headers"])
            del headers["content-length"]
            headers["content-encoding"] = "gzip"
            headers.add_vary_header("Accept-Encoding")
            self.compressor = isal_zlib.compressobj(self.level, isal_zlib.DEFLATED, 16 + 15)
            data = self._squeeze(body, more)
            if not more:  # whole in one piece: its length is known
                headers["content-length"] = str(len(data))
            await self.downstream(start)
        else:
            data = self._squeeze(body, more)
        await self.downstream({"type": "http.response.body", "body": data, "more_body": more})

    def _squeeze(self, body: bytes, more: bool) -> bytes:
        data: bytes = self.compressor.compress(body)
        return data if more else data + self.compressor.flush()

    def _compressible(self, start: Message) -> bool:
        headers = Headers(raw=start.get("headers", []))
        if "content-encoding" in headers or start["status"] in (204, 206, 304):
            return False
        length = headers.get("content-length", "")
        if length.isdigit() and int(length) < self.minimum_size:
            return False
        kind = headers.get("content-type", "").partition(";")[0].strip().lower()
        squeezable = kind == "image/svg+xml" or not kind.startswith(_UNSQUEEZABLE)
        return self.any_type or (kind not in BINARY_TYPES and squeezable)
