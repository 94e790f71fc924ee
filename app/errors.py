"""The service's errors, and the one place where every error becomes an HTTP response.

Hierarchy::

    Exception
    └── ServiceError                 status and FastAPI-style ``detail`` items
        ├── BadRequest               400  a body that cannot be parsed at all
        ├── Unauthorized             401  a missing or unknown API key
        ├── NotFound                 404  an unknown model (inference protocol)
        ├── NotAcceptable            406  an Accept header we cannot answer
        ├── RequestTimeout           408  a body that arrives too slowly
        ├── PayloadTooLarge          413  a body over the size limit
        ├── UnsupportedMediaType     415  a Content-Type we do not read
        ├── InvalidInput             422  a readable request that is wrong
        └── Overloaded               503  every computation slot and queue place taken

Errors from lower layers are translated here: the engine's ``ConvError`` (a 422 pointing at
the field it names), pydantic's ``ValidationError`` and FastAPI's ``RequestValidationError``.
A client that disconnects mid-upload gets nginx's 499 (which it never reads). Anything else
is a bug: it is logged with its traceback and answered with a bare 500.

Under ``/v2`` (the Open Inference Protocol) the same errors take that protocol's shape,
``{"error": "<message>"}``, and a 422 becomes its 400.
"""

from __future__ import annotations

import logging
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from typing import Any

import orjson
import pydantic
from fastapi import FastAPI, Request, Response
from fastapi.exceptions import RequestValidationError
from starlette.exceptions import HTTPException as StarletteHTTPException
from starlette.requests import ClientDisconnect

from app import metrics
from convengine import ConvError, DTypeError

__all__ = [
    "BadRequest",
    "InvalidInput",
    "NotAcceptable",
    "NotFound",
    "Overloaded",
    "PayloadTooLarge",
    "RequestTimeout",
    "ServiceError",
    "Unauthorized",
    "UnsupportedMediaType",
    "engine_errors",
    "error_response",
    "install_error_handlers",
    "validation_errors",
]

logger = logging.getLogger("app.errors")
Loc = Sequence[str | int]
# Hyperparameters travel in the body (JSON, multipart) or in the query (.npz); arrays never.
HYPERPARAMETERS = frozenset({"stride", "padding", "dilation", "groups"})


class ServiceError(Exception):
    """An error answered with ``status`` and ``{"detail": [{"loc", "msg", "type"}, ...]}``."""

    status = 500
    type = "error"

    def __init__(
        self,
        msg: str,
        *,
        loc: Loc = ("body",),
        type: str | None = None,
        headers: dict[str, str] | None = None,
    ) -> None:
        super().__init__(msg)
        self.detail = [{"loc": list(loc), "msg": msg, "type": type or self.type}]
        self.headers = headers or {}


class BadRequest(ServiceError):
    status, type = 400, "malformed"


class Unauthorized(ServiceError):
    status, type = 401, "unauthorized"


class NotFound(ServiceError):
    status, type = 404, "not_found"


class NotAcceptable(ServiceError):
    status, type = 406, "not_acceptable"


class RequestTimeout(ServiceError):
    status, type = 408, "timeout"


class PayloadTooLarge(ServiceError):
    status, type = 413, "too_large"


class UnsupportedMediaType(ServiceError):
    status, type = 415, "unsupported_media_type"


class InvalidInput(ServiceError):
    status, type = 422, "value_error"

    @classmethod
    def of(cls, detail: list[dict[str, Any]]) -> InvalidInput:
        error = cls(detail[0]["msg"])
        error.detail = detail
        return error


class Overloaded(ServiceError):
    status, type = 503, "overloaded"


@contextmanager
def engine_errors(param_location: str) -> Iterator[None]:
    """Turn the engine's ConvError into a 422 pointing at the field it names."""
    try:
        yield
    except ConvError as exc:
        location = param_location if exc.field in HYPERPARAMETERS else "body"
        kind = "dtype_error" if isinstance(exc, DTypeError) else "shape_error"
        raise InvalidInput(exc.message, loc=(location, exc.field), type=kind) from exc


def validation_errors(
    exc: pydantic.ValidationError, location: str, drop: frozenset[str] = frozenset()
) -> InvalidInput:
    """A pydantic ValidationError as a 422 whose locs start with ``location``.

    Loc parts in ``drop`` (the tags of discriminated unions) are left out, and each message
    ends with the value it refused.
    """
    detail = []
    for error in exc.errors(include_url=False, include_context=False):
        loc = [location, *(part for part in error["loc"] if part not in drop)]
        msg = error["msg"]
        if error["type"] != "missing":
            msg += f", got {_shown(error.get('input'))}"
        detail.append({"loc": loc, "msg": msg, "type": error["type"]})
    return InvalidInput.of(detail)


def _shown(value: Any) -> str:
    text = repr(value)
    return text if len(text) <= 80 else text[:77] + "..."


def _is_protocol(path: str) -> bool:
    return path == "/v2" or path.startswith("/v2/")


def _protocol_message(detail: list[dict[str, Any]]) -> str:
    def one(item: dict[str, Any]) -> str:
        where = ".".join(str(part) for part in item["loc"][1:])
        return f"{where}: {item['msg']}" if where else str(item["msg"])

    return "; ".join(one(item) for item in detail)


def _response(
    status: int, detail: Any, headers: dict[str, str] | None = None, protocol: bool = False
) -> Response:
    reason = detail[0]["type"] if detail else "unknown"
    metrics.REFUSALS.labels(str(status), reason).inc()
    if protocol:
        status = 400 if status == 422 else status
        body = orjson.dumps({"error": _protocol_message(detail)})
    else:
        body = orjson.dumps({"detail": detail})
    return Response(body, status_code=status, headers=headers, media_type="application/json")


async def _service_error(request: Request, exc: Exception) -> Response:
    assert isinstance(exc, ServiceError)
    return _response(exc.status, exc.detail, exc.headers, _is_protocol(request.url.path))


async def _conv_error(request: Request, exc: Exception) -> Response:
    try:
        with engine_errors("body"):
            raise exc
    except InvalidInput as mapped:
        return await _service_error(request, mapped)
    raise AssertionError("unreachable")  # pragma: no cover


async def _request_validation_error(request: Request, exc: Exception) -> Response:
    assert isinstance(exc, RequestValidationError)
    detail = [{"loc": list(e["loc"]), "msg": e["msg"], "type": e["type"]} for e in exc.errors()]
    return _response(422, detail, protocol=_is_protocol(request.url.path))


async def _http_exception(request: Request, exc: Exception) -> Response:
    assert isinstance(exc, StarletteHTTPException)
    detail = [{"loc": [], "msg": str(exc.detail), "type": f"http_{exc.status_code}"}]
    protocol = _is_protocol(request.url.path)
    return _response(exc.status_code, detail, dict(exc.headers or {}), protocol)


async def _client_disconnect(request: Request, exc: Exception) -> Response:
    # The client left mid-upload: nobody will read this answer, and nothing is broken.
    logger.info("client disconnected during %s %s", request.method, request.url.path)
    detail = [{"loc": ["body"], "msg": "the client disconnected", "type": "client_disconnect"}]
    return _response(499, detail, protocol=_is_protocol(request.url.path))


async def _unexpected(request: Request, exc: Exception) -> Response:
    logger.exception("unexpected error on %s %s", request.method, request.url.path)
    detail = [{"loc": [], "msg": "internal error", "type": "internal"}]
    return _response(500, detail, protocol=_is_protocol(request.url.path))


def install_error_handlers(app: FastAPI) -> None:
    """Register one handler per base class; Starlette finds them along each error's MRO."""
    app.add_exception_handler(ServiceError, _service_error)
    app.add_exception_handler(ConvError, _conv_error)
    app.add_exception_handler(RequestValidationError, _request_validation_error)
    app.add_exception_handler(StarletteHTTPException, _http_exception)
    app.add_exception_handler(ClientDisconnect, _client_disconnect)
    app.add_exception_handler(Exception, _unexpected)


def error_response(exc: ServiceError, path: str = "") -> Response:
    """The response for ``exc`` on ``path``, for code that answers outside a route."""
    return _response(exc.status, exc.detail, exc.headers, _is_protocol(path))
