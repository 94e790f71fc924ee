"""API keys: ``Authorization: Bearer <key>`` or ``X-API-Key: <key>``, from a file re-read on change.

The keys file holds one key a line, or the key's SHA-256 in hex (64 hex digits: such a line
is always read as a hash, so make keys that are not 64 hex digits, e.g.
``python -c 'import secrets; print(secrets.token_urlsafe(32))'``). Blank lines and lines
starting with ``#`` are skipped. Only hashes are kept in memory, and a presented key is hashed
and compared with every known hash in constant time. A key is named in logs and metrics by its
id, the first 8 hex digits of its hash (``printf %s KEY | sha256sum | cut -c1-8``), never by
itself. Each request stats the file (mtime, size, inode): a key added or revoked there takes
effect at the next request, without a restart.

Probes and the static playground and documentation pages need no key; everything that
computes or reports (forward, backward, the inference protocol, version, metrics) does, and a
request without a valid key is answered 401 before its body is read.
"""

from __future__ import annotations

import hashlib
import hmac
import logging
import os
import re
from collections.abc import Callable, Iterable
from pathlib import Path
from typing import Any

from starlette.types import ASGIApp, Receive, Scope, Send

from app.errors import Unauthorized, error_response

__all__ = [
    "PUBLIC_PATHS",
    "ApiKeys",
    "KeyFile",
    "key_id",
    "presented",
    "read_keys",
    "refusal",
    "with_key_security",
]

logger = logging.getLogger("app.auth")
# Liveness and readiness probes, and pages that are the same for everyone and compute nothing.
PUBLIC_PATHS = re.compile(
    r"/(healthz|readyz|v2/health/(live|ready)|static/.*|static-offline-docs/.*"
    r"|docs(/.*)?|redoc|openapi\.json|)\Z"
)
_HEX64 = re.compile(r"[0-9a-fA-F]{64}\Z")
_REALM = 'Bearer realm="convengine"'
_SECURITY_SCHEMES = {
    "bearer": {"type": "http", "scheme": "bearer", "description": "an API key"},
    "apiKey": {"type": "apiKey", "in": "header", "name": "X-API-Key"},
}


def _digest(key: str) -> bytes:
    return hashlib.sha256(key.encode()).digest()


def key_id(digest: bytes) -> str:
    """The name of a key in logs and metrics: the first 8 hex digits of its SHA-256."""
    return digest.hex()[:8]


class KeyFile:
    """The known keys' hashes, re-read whenever the file's mtime, size or inode changes."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self.signature: tuple[int, int, int] | None = None
        self.digests: list[bytes] = []
        self.refresh(strict=True)

    def refresh(self, strict: bool = False) -> None:
        try:
            stat = os.stat(self.path)
            signature = (stat.st_mtime_ns, stat.st_size, stat.st_ino)
            if signature == self.signature:
                return
            digests = read_keys(self.path.read_bytes(), self.path)
        except (OSError, ValueError) as exc:
            if strict:
                raise
            # Keep the keys last read: a file being replaced, or saved broken, must neither
            # open nor close the service.
            logger.error("API keys file %s not read, the last keys kept: %s", self.path, exc)
            return
        self.digests = digests
        self.signature = signature
        ids = ", ".join(key_id(d) for d in self.digests) or "none: every key is refused"
        logger.info("API keys read from %s: %s", self.path, ids)

    def match(self, key: str) -> bytes | None:
        """The hash of ``key`` if it is known; every known hash is compared, in constant time."""
        self.refresh()
        presented, found = _digest(key), None
        for digest in self.digests:
            if hmac.compare_digest(presented, digest):
                found = digest
        return found


def read_keys(data: bytes, source: object) -> list[bytes]:
    """The keys' hashes in a keys file's bytes: UTF-8 text (a byte-order mark is not part of
    the first key), a key or its SHA-256 in hex a line, ``#`` comments; ValueError naming
    ``source`` and where the text breaks."""
    try:
        text = data.decode("utf-8-sig")
    except UnicodeDecodeError as exc:
        raise ValueError(
            f"{source} is not UTF-8 text: byte {data[exc.start]:#04x} at offset {exc.start}"
        ) from None
    return [
        bytes.fromhex(line) if _HEX64.match(line) else _digest(line)
        for line in (raw.strip() for raw in text.splitlines())
        if line and not line.startswith("#")
    ]


def _presented(scope: Scope) -> str | None:
    return presented(
        (name.decode("latin-1"), value.decode("latin-1")) for name, value in scope["headers"]
    )


def presented(headers: Iterable[tuple[str, str]]) -> str | None:
    """The key in ``Authorization: Bearer <key>`` or ``X-API-Key`` (HTTP headers or gRPC
    metadata, names in lower case), if any."""
    for name, value in headers:
        text = value.strip()
        if name == "authorization":
            scheme, _, token = text.partition(" ")
            if scheme.lower() == "bearer" and token.strip():
                return token.strip()
        elif name == "x-api-key" and text:
            return text
    return None


def refusal(key: str | None) -> Unauthorized:
    """The 401 for a request without a key (None) or with an unknown one."""
    headers = {"WWW-Authenticate": _REALM}
    if key is None:
        msg = "this service needs an API key: send Authorization: Bearer <key> or X-API-Key"
    else:
        msg = "the API key is not known here (or was revoked)"
        headers["WWW-Authenticate"] += ', error="invalid_token"'
    return Unauthorized(msg, loc=("header", "authorization"), headers=headers)


class ApiKeys:
    """ASGI middleware: 401 with ``WWW-Authenticate`` unless the request carries a known key.

    The key's id goes into ``scope["state"]["api_key"]`` for the access log and metrics.
    """

    def __init__(self, app: ASGIApp, keys_file: Path) -> None:
        self.app, self.keys = app, KeyFile(keys_file)

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http" or PUBLIC_PATHS.match(scope["path"]):
            await self.app(scope, receive, send)
            return
        key = _presented(scope)
        digest = None if key is None else self.keys.match(key)
        if digest is None:
            await error_response(self._refusal(scope, key), scope)(scope, receive, send)
            return
        scope.setdefault("state", {})["api_key"] = key_id(digest)
        await self.app(scope, receive, send)

    @staticmethod
    def _refusal(scope: Scope, key: str | None) -> Unauthorized:
        error = refusal(key)
        if any(name in (b"content-length", b"transfer-encoding") for name, _ in scope["headers"]):
            error.headers["Connection"] = "close"  # the body stays unread
        return error


def with_key_security(openapi: Callable[[], dict[str, Any]]) -> Callable[[], dict[str, Any]]:
    """``app.openapi`` declaring the keys too, so that /docs offers to send one (Authorize)."""

    def schema() -> dict[str, Any]:
        document = openapi()
        document.setdefault("components", {}).setdefault("securitySchemes", _SECURITY_SCHEMES)
        document.setdefault("security", [{"bearer": []}, {"apiKey": []}])
        return document

    return schema
