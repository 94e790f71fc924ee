"""The one place where a service error becomes a gRPC status.

Each error class of :mod:`app.errors` has a code, found along the error's MRO as Starlette
finds an HTTP handler; the details are the message REST's ``/v2`` answers in ``{"error"}``
(:func:`app.protocol.error_message`), and the error's headers travel as trailing metadata
(``retry-after`` for UNAVAILABLE, ``www-authenticate`` for UNAUTHENTICATED).

=====================  ====  ===================
error                  HTTP  gRPC
=====================  ====  ===================
BadRequest             400   INVALID_ARGUMENT
Unauthorized           401   UNAUTHENTICATED
NotFound               404   NOT_FOUND
NotAcceptable          406   INVALID_ARGUMENT
RequestTimeout         408   DEADLINE_EXCEEDED
PayloadTooLarge        413   RESOURCE_EXHAUSTED
UnsupportedMediaType   415   INVALID_ARGUMENT
InvalidInput           422   INVALID_ARGUMENT
Overloaded             503   UNAVAILABLE
=====================  ====  ===================

A request never gets UNKNOWN or INTERNAL for bad input: INTERNAL is kept for bugs (app.rpc.service
logs them with the request id), and ``tests/app/test_grpc_status.py`` checks that every
subclass of :class:`ServiceError` has a code of its own.
"""

from __future__ import annotations

from dataclasses import dataclass

import grpc

from app.errors import (
    BadRequest,
    InvalidInput,
    NotAcceptable,
    NotFound,
    Overloaded,
    PayloadTooLarge,
    RequestTimeout,
    ServiceError,
    Unauthorized,
    UnsupportedMediaType,
)
from app.protocol import error_message

__all__ = ["CODES", "Status", "status_of"]

CODES: dict[type[ServiceError], grpc.StatusCode] = {
    BadRequest: grpc.StatusCode.INVALID_ARGUMENT,
    Unauthorized: grpc.StatusCode.UNAUTHENTICATED,
    NotFound: grpc.StatusCode.NOT_FOUND,
    NotAcceptable: grpc.StatusCode.INVALID_ARGUMENT,
    RequestTimeout: grpc.StatusCode.DEADLINE_EXCEEDED,
    PayloadTooLarge: grpc.StatusCode.RESOURCE_EXHAUSTED,
    UnsupportedMediaType: grpc.StatusCode.INVALID_ARGUMENT,
    InvalidInput: grpc.StatusCode.INVALID_ARGUMENT,
    Overloaded: grpc.StatusCode.UNAVAILABLE,
}
# HTTP headers that mean nothing to a gRPC client.
_HTTP_ONLY = frozenset({"connection", "content-length", "content-type"})


@dataclass(frozen=True)
class Status:
    code: grpc.StatusCode
    details: str
    trailing_metadata: tuple[tuple[str, str], ...]


def status_of(error: ServiceError) -> Status:
    """The gRPC status answering ``error``: its class's code (or its nearest base's)."""
    # A bare ServiceError (status 500) is a bug, not bad input.
    code = next(
        (CODES[kind] for kind in type(error).__mro__ if kind in CODES), grpc.StatusCode.INTERNAL
    )
    trailers = tuple(
        (name.lower(), value)
        for name, value in error.headers.items()
        if name.lower() not in _HTTP_ONLY
    )
    return Status(code, error_message(error.detail), trailers)
