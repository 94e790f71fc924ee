"""CORS: which origins' pages may call the service from a browser, and with what."""

from __future__ import annotations

from typing import Any

import orjson
from starlette.datastructures import Headers
from starlette.middleware.cors import CORSMiddleware
from starlette.responses import Response

__all__ = ["Cors", "cors_options"]

# What a page's fetch() may send and read: the key, the body's type and coding, tracing.
_REQUEST_HEADERS = [
    "Accept",
    "Authorization",
    "Content-Encoding",
    "Content-Type",
    "Inference-Header-Content-Length",
    "X-API-Key",
    "X-Request-ID",
]
_RESPONSE_HEADERS = [
    "Inference-Header-Content-Length",
    "Retry-After",
    "WWW-Authenticate",
    "X-Replica",
    "X-Request-ID",
]


class Cors(CORSMiddleware):
    """Starlette's CORS middleware, whose refused preflights are JSON refusals like the rest."""

    def preflight_response(self, request_headers: Headers) -> Response:
        answer = super().preflight_response(request_headers)
        if answer.status_code < 400:
            return answer
        reason = bytes(answer.body).decode("latin-1")  # "Disallowed CORS origin, method"
        refused = reason.removeprefix("Disallowed CORS ")
        detail = {
            "loc": ["header", "origin" if "origin" in refused else "access-control-request"],
            "msg": f"this preflight is refused: its {refused} may not call this service",
            "type": "cors",
        }
        headers = {
            k: v for k, v in answer.headers.items() if k not in ("content-length", "content-type")
        }
        return Response(
            orjson.dumps({"detail": [detail]}),
            status_code=answer.status_code,
            headers=headers,
            media_type="application/json",
        )


def cors_options(origins: list[str]) -> dict[str, Any]:
    """Keyword arguments of Starlette's CORSMiddleware for ``origins`` (``["*"]``: any).

    Never credentials: keys travel in a header that the page sets itself, which needs no
    cookies, and browsers refuse credentials with a wildcard origin anyway.
    """
    return {
        "allow_origins": origins,
        "allow_methods": ["GET", "HEAD", "POST"],
        "allow_headers": _REQUEST_HEADERS,
        "expose_headers": _RESPONSE_HEADERS,
        "allow_credentials": False,
        "max_age": 600,
    }
