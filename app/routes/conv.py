"""POST /forward and POST /backward."""

from __future__ import annotations

from functools import partial
from typing import Any

from fastapi import APIRouter, Request, Response

from app.codecs import JSON, NPY, NPZ
from app.passes import Pass, run_pass
from app.schemas import BackwardJSON, ForwardJSON

router = APIRouter(tags=["convolution"])

_HYPER_TEXT = {
    "stride": "an int, or height,width (e.g. 2 or 2,1 or [2,1])",
    "padding": 'an int, height,width, "same" or "valid"',
    "dilation": "an int, or height,width",
    "groups": "an int dividing C and F",
}

_EXAMPLE_NESTED = {
    "x": [[[[1, 2, 3], [4, 5, 6], [7, 8, 9]]]],
    "w": [[[[0, 1], [1, 0]]]],
    "b": [0.5],
    "stride": 1,
    "padding": 0,
}
_EXAMPLE_TYPED = {
    "x": {"shape": [1, 1, 3, 3], "dtype": "float32", "data": [1, 2, 3, 4, 5, 6, 7, 8, 9]},
    "w": {"shape": [1, 1, 2, 2], "dtype": "float32", "data": [0, 1, 1, 0]},
    "stride": [1, 1],
    "padding": "valid",
}
_EXAMPLE_B64 = {
    "x": {"shape": [1, 1, 2, 2], "dtype": "float32", "b64": "AACAPwAAAEAAAEBAAACAQA=="},
    "w": {"shape": [1, 1, 1, 1], "dtype": "float32", "b64": "AAAAQA=="},
}


def _openapi(pass_: Pass, model: type) -> dict[str, Any]:
    arrays = ["x", "w", "b"] if pass_ == "forward" else ["x", "w", "dout"]
    npy_part = {"type": "string", "format": "binary", "description": "a .npy file"}
    examples = {
        "nested lists": _EXAMPLE_NESTED,
        "typed tensors": _EXAMPLE_TYPED,
        "base64 tensors": _EXAMPLE_B64,
    }
    if pass_ == "backward":
        examples = {
            "nested lists": {
                "x": [[[[1, 2], [3, 4]]]],
                "w": [[[[2]]]],
                "dout": [[[[1, 0], [0, 1]]]],
            }
        }
    return {
        "requestBody": {
            "required": True,
            "content": {
                JSON: {
                    "schema": {"$ref": f"#/components/schemas/{model.__name__}"},
                    "examples": {k: {"value": v} for k, v in examples.items()},
                },
                "multipart/form-data": {
                    "schema": {
                        "type": "object",
                        "properties": {
                            **{name: npy_part for name in arrays},
                            **{
                                k: {"type": "string", "description": v}
                                for k, v in _HYPER_TEXT.items()
                            },
                        },
                        "required": arrays[:2] if pass_ == "forward" else arrays,
                    }
                },
                NPZ: {
                    "schema": {
                        "type": "string",
                        "format": "binary",
                        "description": f".npz archive holding {', '.join(arrays)}; "
                        "hyperparameters in the query",
                    }
                },
            },
        },
        "parameters": [
            {
                "name": key,
                "in": "query",
                "required": False,
                "description": f"with application/x-npz only: {text}",
                "schema": {"type": "string"},
            }
            for key, text in _HYPER_TEXT.items()
        ],
    }


def _responses(outputs: str, npy: bool) -> dict[int | str, dict[str, Any]]:
    content: dict[str, Any] = {
        JSON: {
            "schema": {"type": "object", "description": f"{outputs}, each tensor in the style of x"}
        },
        NPZ: {"schema": {"type": "string", "format": "binary"}},
    }
    if npy:
        content[NPY] = {"schema": {"type": "string", "format": "binary"}}
    error = {"content": {JSON: {"schema": {"$ref": "#/components/schemas/ErrorResponse"}}}}
    return {
        200: {"description": outputs, "content": content},
        400: {"description": "a body that cannot be parsed", **error},
        406: {"description": "an Accept header that cannot be answered", **error},
        413: {"description": "a body over the size limit", **error},
        415: {"description": "an unsupported Content-Type", **error},
        422: {"description": "arrays or hyperparameters that do not fit together", **error},
        503: {"description": "busy: retry after the Retry-After seconds", **error},
    }


async def _serve(request: Request, pass_: Pass) -> Response:
    state = request.app.state
    work = partial(
        run_pass,
        pass_,
        content_type=request.headers.get("content-type"),
        accept=request.headers.get("accept"),
        query=dict(request.query_params),
        settings=state.settings,
    )
    content, media_type = await state.gate.serve(request, work)
    return Response(content, media_type=media_type)


@router.post(
    "/forward",
    openapi_extra=_openapi("forward", ForwardJSON),
    responses=_responses("out (N, F, H_out, W_out)", npy=True),
    response_class=Response,
)
async def forward(request: Request) -> Response:
    """Convolve x with w and add b: answers out, in the dtype of x."""
    return await _serve(request, "forward")


@router.post(
    "/backward",
    openapi_extra=_openapi("backward", BackwardJSON),
    responses=_responses("dx, dw and db", npy=False),
    response_class=Response,
)
async def backward(request: Request) -> Response:
    """Gradients of a loss w.r.t. x, w and b from dout, its gradient w.r.t. the output."""
    return await _serve(request, "backward")
