"""The request's hyperparameters as pydantic models, and the wire models the OpenAPI shows.

Arrays are not validated here element by element: the codecs turn them into NumPy arrays and
the engine's geometry checks them against each other. These models check the small fields.
"""

from __future__ import annotations

from typing import Annotated, Any, Literal

from pydantic import BaseModel, ConfigDict, Discriminator, Field, Tag

__all__ = [
    "ARRAYS",
    "UNION_TAGS",
    "B64Tensor",
    "BackwardJSON",
    "ErrorItem",
    "ErrorResponse",
    "ForwardJSON",
    "Hyperparameters",
    "JSONOptions",
    "TypedTensor",
]

# Bounds far beyond any real layer; the work limits refuse big geometry long before these.
_LIMIT = 1 << 20
UNION_TAGS = frozenset({"int", "pair", "word"})


def _pair_kind(value: Any) -> str:
    return "pair" if isinstance(value, list | tuple) else "int"


def _padding_kind(value: Any) -> str:
    return "word" if isinstance(value, str) else _pair_kind(value)


_Pad = Annotated[int, Field(strict=True, ge=0, le=_LIMIT)]
_Step = Annotated[int, Field(strict=True, ge=1, le=_LIMIT)]
# Discriminated unions: an error names only the branch the value's type chose.
Stride = Annotated[
    Annotated[_Step, Tag("int")] | Annotated[tuple[_Step, _Step], Tag("pair")],
    Discriminator(_pair_kind),
]
Dilation = Stride
Padding = Annotated[
    Annotated[_Pad, Tag("int")]
    | Annotated[tuple[_Pad, _Pad], Tag("pair")]
    | Annotated[Literal["same", "valid"], Tag("word")],
    Discriminator(_padding_kind),
]
Groups = Annotated[int, Field(strict=True, ge=1, le=_LIMIT)]
DType = Literal["float32", "float64"]

# Which arrays each pass takes, required first.
ARRAYS: dict[str, tuple[tuple[str, ...], tuple[str, ...]]] = {
    "forward": (("x", "w"), ("b",)),
    "backward": (("x", "w", "dout"), ()),
}


class Hyperparameters(BaseModel):
    """stride, padding, dilation: an int or [height, width]; padding also "same" or "valid"."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    stride: Stride = Field(1, description="step between receptive fields, >= 1")
    padding: Padding = Field(
        0, description='zeros added on each side, >= 0, or "same" (stride 1) or "valid"'
    )
    dilation: Dilation = Field(1, description="spacing between kernel taps, >= 1")
    groups: Groups = Field(1, description="channel groups; must divide C and F")


class JSONOptions(Hyperparameters):
    """The non-array fields of a JSON request."""

    dtype: DType = Field(
        "float64",
        description="dtype of arrays sent as nested lists (typed tensors carry their own)",
    )


# --- wire models, for the OpenAPI document -----------------------------------------------

NestedList = list[Any]


class TypedTensor(BaseModel):
    """A tensor in the inference protocol's layout: flat row-major data with its shape."""

    model_config = ConfigDict(extra="forbid")
    shape: list[Annotated[int, Field(ge=0)]]
    dtype: DType
    data: list[float]


class B64Tensor(BaseModel):
    """A tensor as base64 of its little-endian row-major bytes."""

    model_config = ConfigDict(extra="forbid")
    shape: list[Annotated[int, Field(ge=0)]]
    dtype: DType
    b64: str


Tensor = NestedList | TypedTensor | B64Tensor


class ForwardJSON(JSONOptions):
    """POST /forward as JSON. Every tensor is a nested list, a typed tensor or a b64 tensor."""

    x: Tensor = Field(description="input, (N, C, H, W)")
    w: Tensor = Field(description="filters, (F, C/groups, KH, KW)")
    b: Tensor | None = Field(None, description="bias, (F,)")


class BackwardJSON(JSONOptions):
    """POST /backward as JSON."""

    x: Tensor = Field(description="input, (N, C, H, W)")
    w: Tensor = Field(description="filters, (F, C/groups, KH, KW)")
    dout: Tensor = Field(description="gradient of the loss w.r.t. the output, (N, F, H_out, W_out)")


class ErrorItem(BaseModel):
    loc: list[str | int]
    msg: str
    type: str


class ErrorResponse(BaseModel):
    detail: list[ErrorItem]
