"""CORS: which origins' pages may call the service from a browser, and with what."""

from __future__ import annotations

from typing import Any

__all__ = ["cors_options"]

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
