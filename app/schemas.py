"""The one list of hyperparameters, and the one validated request per operation.

:class:`Hyperparameters` names every hyperparameter once, with its type, its text form (for
the query, multipart fields and protocol parameters) and its documentation; the routes, the
protocol, the OpenAPI document and the playground read them from here.

:func:`request_model` gives each operation of the table a model that takes the
hyperparameters and the input arrays' shapes and dtypes (never their numbers: the codecs
decode those in bulk), and whose one ``model_validator(mode="after")`` asks the engine for
the geometry, refuses what it cannot compute, and applies the work limits. The geometry it
built is handed to the engine with the arrays, so that a request is sized once.
"""

from __future__ import annotations

import re
from functools import cache, lru_cache
from typing import Annotated, Any, ClassVar, Literal, Self

import orjson
from pydantic import (
    BaseModel,
    ConfigDict,
    Discriminator,
    Field,
    PrivateAttr,
    Tag,
    ValidationInfo,
    create_model,
    model_validator,
)
from pydantic_core import PydanticCustomError

from app.limits.work import WorkLimits, check_cost
from convengine import ConvError, Cost, DTypeError, Geometry, Operation, PaddingMode, Rounding

__all__ = [
    "HYPERPARAMETERS",
    "UNION_TAGS",
    "ConvRequest",
    "DType",
    "ErrorItem",
    "ErrorResponse",
    "Hyperparameters",
    "TensorSpec",
    "camel",
    "parse_text",
    "request_model",
]

# Bounds far beyond any real layer; the work limits refuse big geometry long before these.
_LIMIT = 1 << 20
UNION_TAGS = frozenset({"int", "axes", "sides", "word"})
# Every dtype the engine takes (convengine._dtypes); the codecs carry each.
DType = Literal["float16", "bfloat16", "float32", "float64", "complex64", "complex128"]


def _axes_kind(value: Any) -> str:
    return "axes" if isinstance(value, list | tuple) else "int"


def _padding_kind(value: Any) -> str:
    if isinstance(value, str):
        return "word"
    if isinstance(value, list | tuple) and value and isinstance(value[0], list | tuple):
        return "sides"
    return _axes_kind(value)


_Pad = Annotated[int, Field(strict=True, ge=0, le=_LIMIT)]
_Step = Annotated[int, Field(strict=True, ge=1, le=_LIMIT)]
# One value per spatial axis (1 to 3); the engine checks the count against the arrays' rank.
_PerAxis = Annotated[tuple[_Step, ...], Field(min_length=1, max_length=3)]
_PadPerAxis = Annotated[tuple[_Pad, ...], Field(min_length=1, max_length=3)]
_Sides = Annotated[tuple[tuple[_Pad, _Pad], ...], Field(min_length=1, max_length=3)]
# Discriminated unions: an error names only the branch the value's type chose.
Stride = Annotated[
    Annotated[_Step, Tag("int")] | Annotated[_PerAxis, Tag("axes")],
    Discriminator(_axes_kind),
]
Dilation = Stride
OutputPadding = Annotated[
    Annotated[_Pad, Tag("int")] | Annotated[_PadPerAxis, Tag("axes")],
    Discriminator(_axes_kind),
]
Padding = Annotated[
    Annotated[_Pad, Tag("int")]
    | Annotated[_PadPerAxis, Tag("axes")]
    | Annotated[_Sides, Tag("sides")]
    | Annotated[Literal["same", "same_lower", "valid"], Tag("word")],
    Discriminator(_padding_kind),
]
Groups = Annotated[int, Field(strict=True, ge=1, le=_LIMIT)]

# An ASCII integer of at most 9 digits: str.isdigit() also takes superscripts and other
# scripts' digits, which int() then refuses or reads as numbers nobody typed.
_INTEGER = re.compile(r"-?[0-9]{1,9}")


def parse_text(text: str) -> Any:
    """A hyperparameter sent as text: "2", "2,1", JSON such as "[2, 1]", or a word ("same").

    Text that is none of these is returned as it is, for the model to refuse by name.
    """
    stripped = text.strip()
    if stripped.startswith("["):
        try:
            return orjson.loads(stripped)
        except orjson.JSONDecodeError:
            return text
    parts = [part.strip() for part in stripped.split(",")]
    if all(_INTEGER.fullmatch(part) for part in parts):
        numbers = [int(part) for part in parts]
        return numbers[0] if len(numbers) == 1 else numbers
    return text


class _TextForms(BaseModel):
    """Validated with ``context={"text": True}``, string hyperparameters are read as their
    text forms first (query, multipart fields, protocol parameters)."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    @model_validator(mode="before")
    @classmethod
    def _read_text(cls, data: Any, info: ValidationInfo) -> Any:
        if not (info.context or {}).get("text") or not isinstance(data, dict):
            return data
        return {
            key: parse_text(value) if key in HYPERPARAMETERS and isinstance(value, str) else value
            for key, value in data.items()
        }


class Hyperparameters(_TextForms):
    """Every hyperparameter of every operation: the one list the service reads them from.

    Each operation takes the ones its table entry names (``Operation.hyperparameters``).
    """

    stride: Stride = Field(
        1,
        description="step between receptive fields, >= 1: an int, or one per spatial axis "
        "([height, width] for planes)",
        json_schema_extra={"text": "an int, or one per axis (e.g. 2 or 2,1 or [2,1])"},
    )
    padding: Padding = Field(
        0,
        description="pixels added around the input, >= 0: an int, one per spatial axis, or one "
        "[begin, end] pair per axis ([[top, bottom], [left, right]] for planes); for a "
        'convolution also "valid" (none), "same" (output ceil(size/stride), the odd pixel at '
        'the end, as TensorFlow and ONNX SAME_UPPER) or "same_lower" (the odd pixel at the '
        "start, as ONNX SAME_LOWER)",
        json_schema_extra={
            "text": 'an int, one per axis (1,2), JSON such as [[3,2],[3,2]], "same", '
            '"same_lower" or "valid"'
        },
    )
    output_padding: OutputPadding = Field(
        0,
        description="transposed convolutions: pixels added at the end of each output axis, "
        "smaller than the stride or the dilation: an int or one per spatial axis",
        json_schema_extra={"text": "an int, or one per axis"},
    )
    dilation: Dilation = Field(
        1,
        description="spacing between kernel taps, >= 1: an int or one per spatial axis",
        json_schema_extra={"text": "an int, or one per axis"},
    )
    groups: Groups = Field(
        1,
        description="channel groups; must divide C and F",
        json_schema_extra={"text": "an int dividing C and F"},
    )
    padding_mode: PaddingMode = Field(
        "zeros",
        description="convolutions: what the padding holds, as PyTorch's padding_mode: zeros, "
        "or the input reflected about its edge pixel, its edge pixel repeated, or the input "
        "wrapped around",
        json_schema_extra={"text": "zeros, reflect, replicate or circular"},
    )
    rounding: Rounding = Field(
        "exact",
        description='convolutions: "exact" refuses an output size that is not whole, naming a '
        'padding that fits; "floor" drops the last partial window, as PyTorch, ONNX and '
        "TensorFlow VALID do",
        json_schema_extra={"text": "exact or floor"},
    )

    @classmethod
    def default_texts(cls) -> dict[str, str]:
        """Each hyperparameter's default, as text."""
        return {name: str(field.default) for name, field in cls.model_fields.items()}

    @classmethod
    def text_forms(cls) -> dict[str, str]:
        """Each hyperparameter's text form, for documentation."""
        forms = {}
        for name, field in cls.model_fields.items():
            extra = field.json_schema_extra
            forms[name] = str(extra["text"] if isinstance(extra, dict) else field.description)
        return forms


HYPERPARAMETERS = frozenset(Hyperparameters.model_fields)


class TensorSpec(BaseModel):
    """What the request model sees of an array: its shape and dtype, never its numbers."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    shape: tuple[Annotated[int, Field(ge=0)], ...]
    dtype: DType


class ConvRequest(_TextForms):
    """One validated request: hyperparameters and input specs, checked against each other.

    Built per operation by :func:`request_model`, with the operation's hyperparameters (from
    :class:`Hyperparameters`) and one spec per input. Validate it with
    ``context={"limits": WorkLimits(...)}`` to apply the service's work limits.
    """

    operation: ClassVar[Operation]
    _geometry: Geometry = PrivateAttr()
    _cost: Cost = PrivateAttr()

    @property
    def geometry(self) -> Geometry:
        """The engine's geometry, built once by the validator."""
        return self._geometry

    @property
    def cost(self) -> Cost:
        """What the computation holds and computes, reckoned once by the validator."""
        return self._cost

    def engine_arguments(self) -> dict[str, Any]:
        """The hyperparameters as the engine's keyword arguments."""
        return {name: getattr(self, name) for name in self.operation.hyperparameters}

    def specs(self) -> dict[str, TensorSpec]:
        return {
            name: spec
            for name in self.operation.inputs
            if (spec := getattr(self, name)) is not None
        }

    @model_validator(mode="after")
    def _plan(self, info: ValidationInfo) -> Self:
        specs = self.specs()
        shapes = tuple((name, spec.shape, spec.dtype) for name, spec in specs.items())
        try:
            geometry, cost = _planned(
                self.operation, shapes, tuple(self.engine_arguments().items())
            )
        except ConvError as exc:
            kind = "dtype_error" if isinstance(exc, DTypeError) else "shape_error"
            raise PydanticCustomError(
                kind, "{message}", {"message": exc.message, "field": exc.field}
            ) from exc
        limits: WorkLimits | None = (info.context or {}).get("limits")
        if limits is not None:
            check_cost(cost, geometry.out_shape, limits)
        self._geometry, self._cost = geometry, cost
        return self


# The engine's plan and cost of one request, kept for the next with the same shapes, dtypes
# and hyperparameters (a training loop sends the same ones every step): planning costs about
# 60 us, more than a tiny layer's computation. Both are immutable; refusals are not kept.
@lru_cache(maxsize=256)
def _planned(
    operation: Operation,
    specs: tuple[tuple[str, tuple[int, ...], str], ...],
    hyper: tuple[tuple[str, Any], ...],
) -> tuple[Geometry, Cost]:
    geometry = operation.plan({name: shape for name, shape, _ in specs}, dict(hyper))
    # Every array takes x's dtype; a complex one beside a real x is refused.
    dtype = operation.answer_type({name: dtype for name, _, dtype in specs})
    return geometry, operation.cost(geometry, dtype.name)


@cache
def request_model(operation: Operation) -> type[ConvRequest]:
    """The validated request of ``operation``: its hyperparameters, one spec per input."""
    listed = Hyperparameters.model_fields
    fields: dict[str, Any] = {
        name: (listed[name].annotation, listed[name]) for name in sorted(operation.hyperparameters)
    }
    fields.update(
        {
            name: (TensorSpec | None, None) if name in operation.optional else (TensorSpec, ...)
            for name in operation.inputs
        }
    )
    model = create_model(f"{camel(operation.name)}Request", __base__=ConvRequest, **fields)
    model.operation = operation
    return model


def camel(name: str) -> str:
    """``conv_transpose_backward`` -> ``ConvTransposeBackward``, for model names."""
    return "".join(part.title() for part in name.split("_"))


class ErrorItem(BaseModel):
    loc: list[str | int]
    msg: str
    type: str


class ErrorResponse(BaseModel):
    detail: list[ErrorItem]
