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

Errors from lower layers are translated here: pydantic's ``ValidationError`` (the request
models' own, and the engine's geometry errors they carry as ``PydanticCustomError``) by
:func:`validation_errors`, FastAPI's ``RequestValidationError`` by its handler. A client that
disconnects mid-upload gets nginx's 499 (which it never reads). Anything else is a bug:
:class:`app.observe.Observe`, the outermost middleware, logs it once with its traceback and
the request id, and answers :func:`internal_error_response` (a 500 in the path's error
shape); nothing re-raises it, so uvicorn does not log it a second time.

An error's body has FastAPI's shape, ``{"detail": [...]}``, unless the route's path starts
with a prefix that registered a shape of its own (:func:`register_error_shape`; the inference
protocol registers ``{"error": "<message>"}`` for ``/v2``).
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Iterable, Iterator, Sequence
from typing import Any

import orjson
import pydantic
from fastapi import FastAPI, Request, Response
from fastapi.exceptions import RequestValidationError
from starlette.applications import Starlette
from starlette.exceptions import HTTPException as StarletteHTTPException
from starlette.requests import ClientDisconnect
from starlette.types import Scope

from app import metrics

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
    "brief",
    "count_refusal",
    "error_response",
    "install_error_handlers",
    "internal_error_response",
    "register_error_shape",
    "validation_errors",
]

logger = logging.getLogger("app.errors")
Loc = Sequence[str | int]


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


def validation_errors(
    exc: pydantic.ValidationError,
    location: str,
    parameters: frozenset[str] = frozenset(),
    drop: frozenset[str] = frozenset(),
) -> InvalidInput:
    """A pydantic ValidationError as a 422, each loc starting with where its field travelled.

    Fields in ``parameters`` travelled in ``location`` (the body, the query or the protocol's
    parameters); everything else in the body. An error raised by a model validator names its
    field in its context (``ctx["field"]``) and carries a finished message; any other message
    ends with the value it refused. Loc parts in ``drop`` (the tags of discriminated unions)
    are left out.
    """
    detail = []
    for error in exc.errors(include_url=False):
        context = error.get("ctx") or {}
        path = [part for part in error["loc"] if part not in drop]
        if "field" in context:
            path = [context["field"]] if context["field"] else []
        where = location if path and path[0] in parameters else "body"
        msg = error["msg"]
        if error["type"] != "missing" and "field" not in context:
            msg += f", got {_shown(error.get('input'))}"
        detail.append({"loc": [where, *path], "msg": msg, "type": error["type"]})
    return InvalidInput.of(detail)


def _shown(value: Any) -> str:
    return brief(value, 80)


def brief(value: object, limit: int = 60) -> str:
    """``repr(value)``, at most ``limit`` characters of it, made without formatting more.

    A refused value may be a thousand lists deep, megabytes long or an integer of
    thousands of digits: ``repr`` of it recurses, takes long or raises. This walks lists,
    tuples and dicts with a stack of its own and stops once ``limit`` characters are out.
    """
    pieces: list[str] = []
    size = 0
    stack: list[Iterator[object]] = [iter((value,))]
    while stack and size <= limit:
        item = next(stack[-1], _END)
        if item is _END:
            stack.pop()
            continue
        piece, inner = _opening(item, limit)
        pieces.append(piece)
        size += len(piece)
        if inner is not None:
            stack.append(inner)
    text = "".join(pieces)
    return text if len(text) <= limit and not stack else text[: limit - 3] + "..."


_END = object()


class _Text(str):
    """A piece of punctuation already written out."""


def _opening(item: object, limit: int) -> tuple[str, Iterator[object] | None]:
    """How ``item`` starts (at most about ``limit`` characters of it), and what follows it
    (None: nothing, it is whole)."""
    if isinstance(item, _Text):
        return item, None
    if isinstance(item, list | tuple):
        close = "]" if isinstance(item, list) else ")"
        return ("[" if isinstance(item, list) else "("), _joined(item, close)
    if isinstance(item, dict):
        entries = ((key, _Text(": "), entry) for key, entry in item.items())
        return "{", _joined(entries, "}", flatten=True)
    if isinstance(item, str | bytes):
        return repr(item[: limit + 1]), None  # longer: the whole is cut, "..." marks it
    if isinstance(item, int) and item.bit_length() > 1024:  # repr: slow, and refused > 4300 digits
        return f"<an integer of {item.bit_length()} bits>", None
    return repr(item)[: limit + 1], None


def _joined(items: Iterable[Any], close: str, flatten: bool = False) -> Iterator[object]:
    for index, item in enumerate(items):
        if index:
            yield _Text(", ")
        yield from (item if flatten else (item,))
    yield _Text(close)


Render = Callable[[int, list[dict[str, Any]]], tuple[int, bytes]]


def _fastapi_shape(status: int, detail: list[dict[str, Any]]) -> tuple[int, bytes]:
    return status, orjson.dumps({"detail": detail})


def register_error_shape(app: Starlette, prefix: str, render: Render) -> None:
    """Answer errors on paths under ``prefix`` with ``render(status, detail)``."""
    app.state.error_shapes[prefix.rstrip("/")] = render


def _render_for(scope: Scope) -> Render:
    shapes: dict[str, Render] = getattr(
        getattr(scope.get("app"), "state", None), "error_shapes", {}
    )
    path = scope.get("path", "")
    for prefix, render in shapes.items():
        if path == prefix or path.startswith(prefix + "/"):
            return render
    return _fastapi_shape


def count_refusal(status: int, detail: list[dict[str, Any]]) -> None:
    """Count a refusal in the metrics, by its HTTP status and its first reason."""
    reason = detail[0]["type"] if detail else "unknown"
    metrics.REFUSALS.labels(str(status), reason).inc()


def _response(
    scope: Scope, status: int, detail: Any, headers: dict[str, str] | None = None
) -> Response:
    count_refusal(status, detail)
    status, body = _render_for(scope)(status, detail)
    return Response(body, status_code=status, headers=headers, media_type="application/json")


async def _service_error(request: Request, exc: Exception) -> Response:
    assert isinstance(exc, ServiceError)
    return _response(request.scope, exc.status, exc.detail, exc.headers)


async def _request_validation_error(request: Request, exc: Exception) -> Response:
    assert isinstance(exc, RequestValidationError)
    detail = [{"loc": list(e["loc"]), "msg": e["msg"], "type": e["type"]} for e in exc.errors()]
    return _response(request.scope, 422, detail)


async def _http_exception(request: Request, exc: Exception) -> Response:
    assert isinstance(exc, StarletteHTTPException)
    detail = [{"loc": [], "msg": str(exc.detail), "type": f"http_{exc.status_code}"}]
    return _response(request.scope, exc.status_code, detail, dict(exc.headers or {}))


async def _client_disconnect(request: Request, exc: Exception) -> Response:
    # The client left mid-upload: nobody will read this answer, and nothing is broken.
    logger.info("client disconnected during %s %s", request.method, request.url.path)
    detail = [{"loc": ["body"], "msg": "the client disconnected", "type": "client_disconnect"}]
    return _response(request.scope, 499, detail)


def internal_error_response(scope: Scope, request_id: str) -> Response:
    """The 500 for a bug, in the shape of ``scope``'s path, naming the request to look up."""
    msg = f"internal error: the service's log has it under request id {request_id}"
    return _response(scope, 500, [{"loc": [], "msg": msg, "type": "internal"}])


def install_error_handlers(app: FastAPI) -> None:
    """Register one handler per base class; Starlette finds them along each error's MRO."""
    app.state.error_shapes = {}
    app.add_exception_handler(ServiceError, _service_error)
    app.add_exception_handler(RequestValidationError, _request_validation_error)
    app.add_exception_handler(StarletteHTTPException, _http_exception)
    app.add_exception_handler(ClientDisconnect, _client_disconnect)


def error_response(exc: ServiceError, scope: Scope | None = None) -> Response:
    """The response for ``exc`` in the shape of ``scope``'s path, for code outside a route."""
    return _response(scope or {}, exc.status, exc.detail, exc.headers)
