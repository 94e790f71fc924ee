"""One POST route per operation of the table: /forward, /backward, ..."""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from typing import Any

from fastapi import APIRouter, Request, Response

from app import codecs, pipeline
from app.schemas import Hyperparameters
from convengine import OPERATIONS, Operation

router = APIRouter(tags=["convolution"])

_ERROR = {
    "content": {"application/json": {"schema": {"$ref": "#/components/schemas/ErrorResponse"}}}
}
_REFUSALS = {
    400: "a body that cannot be parsed",
    401: "a missing or wrong API key, when the service has keys",
    406: "an Accept header that cannot be answered",
    408: "a body that arrives too slowly",
    413: "a body over the size limit",
    415: "an unsupported Content-Type or Content-Encoding",
    422: "arrays or hyperparameters that do not fit together",
    503: "busy: retry after the Retry-After seconds",
}


def _openapi(operation: Operation) -> dict[str, Any]:
    only = " or ".join(codecs.query_codecs())
    return {
        "requestBody": codecs.request_body(operation),
        "parameters": [
            {
                "name": name,
                "in": "query",
                "required": False,
                "description": f"with {only} only: {text}",
                "schema": {"type": "string"},
            }
            for name, text in Hyperparameters.text_forms().items()
            if name in operation.hyperparameters
        ],
    }


def _responses(operation: Operation) -> dict[int | str, dict[str, Any]]:
    answer = {
        "description": ", ".join(operation.outputs),
        "content": codecs.responses_content(operation),
    }
    return {
        200: answer,
        **{status: {"description": text, **_ERROR} for status, text in _REFUSALS.items()},
    }


def _endpoint(operation: Operation) -> Callable[[Request], Awaitable[Response]]:
    async def endpoint(request: Request) -> Response:
        return await pipeline.answer(request, operation)

    endpoint.__name__ = operation.name
    endpoint.__doc__ = operation.summary
    return endpoint


for _operation in OPERATIONS.values():
    router.add_api_route(
        _operation.path,
        _endpoint(_operation),
        methods=["POST"],
        openapi_extra=_openapi(_operation),
        responses=_responses(_operation),
        response_class=Response,
    )
