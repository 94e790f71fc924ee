"""multipart/form-data with one .npy file part per array; application/x-npy answers."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import numpy as np
from python_multipart.exceptions import MultipartParseError
from python_multipart.multipart import (
    MAX_BOUNDARY_LENGTH,
    MultipartParser,
    parse_options_header,
)

from app.errors import BadRequest, InvalidInput, NotAcceptable
from app.schemas import Hyperparameters
from convengine import Operation

from .base import Budget, Codec, Decoded, TensorStyle, check_known, check_names, npy_parts, read_npy

__all__ = ["MULTIPART", "NPY", "decode_multipart", "encode"]

MAX_PARTS = 16
MAX_BOUNDARY = MAX_BOUNDARY_LENGTH  # the parser's own bound, refused here by name


class _Part:
    def __init__(self) -> None:
        self.headers: dict[bytes, bytes] = {}
        self.chunks: list[bytes | memoryview] = []
        self.name = ""
        self.filename: str | None = None


def _parse_parts(body: bytes, boundary: bytes) -> list[_Part]:
    parts: list[_Part] = []
    field, value = bytearray(), bytearray()

    def on_part_begin() -> None:
        if len(parts) >= MAX_PARTS:
            raise BadRequest(f"a multipart body may hold at most {MAX_PARTS} parts")
        parts.append(_Part())

    def on_header_field(data: bytes, start: int, end: int) -> None:
        field.extend(data[start:end])

    def on_header_value(data: bytes, start: int, end: int) -> None:
        value.extend(data[start:end])

    def on_header_end() -> None:
        parts[-1].headers[bytes(field).lower()] = bytes(value)
        field.clear()
        value.clear()

    def on_part_data(data: bytes, start: int, end: int) -> None:
        # A view of the body, not a copy: bytes never change under it.
        piece = memoryview(data)[start:end] if isinstance(data, bytes) else data[start:end]
        parts[-1].chunks.append(piece)

    parser = MultipartParser(
        boundary,
        {
            "on_part_begin": on_part_begin,
            "on_header_field": on_header_field,
            "on_header_value": on_header_value,
            "on_header_end": on_header_end,
            "on_part_data": on_part_data,
        },
    )
    try:
        parser.write(body)
        parser.finalize()
    except MultipartParseError as exc:
        raise BadRequest(f"the multipart body is malformed: {exc}") from exc
    for part in parts:
        _, options = parse_options_header(part.headers.get(b"content-disposition", b""))
        part.name = options.get(b"name", b"").decode("utf-8", "replace")
        filename = options.get(b"filename")
        part.filename = None if filename is None else filename.decode("utf-8", "replace")
    return parts


def decode_multipart(
    body: bytes,
    operation: Operation,
    query: Mapping[str, str],
    budget: Budget,
    options: Mapping[str, str],
) -> Decoded:
    boundary = options.get("boundary", "")
    if not boundary:
        raise BadRequest(
            "multipart/form-data needs a boundary parameter in its Content-Type",
            loc=("header", "content-type"),
        )
    if len(boundary) > MAX_BOUNDARY:
        raise BadRequest(
            f"the multipart boundary is {len(boundary)} characters long; at most "
            f"{MAX_BOUNDARY} are read (RFC 2046 asks for 70 at most)",
            loc=("header", "content-type"),
        )
    arrays: dict[str, np.ndarray] = {}
    params: dict[str, Any] = {}
    for part in _parse_parts(body, boundary.encode("latin-1")):
        data = part.chunks[0] if len(part.chunks) == 1 else b"".join(part.chunks)
        if not data:
            # A form field left blank (Swagger UI and browsers send one for an empty file
            # input or text box) is absent: an optional array or hyperparameter is then
            # its default, a required one is reported missing.
            continue
        if part.name in arrays or part.name in params:
            raise InvalidInput(f"{part.name!r} is sent twice", loc=("body", part.name))
        if part.filename is not None or part.name in operation.inputs:
            check_known(part.name, operation)
            arrays[part.name] = read_npy(data, part.name, budget)
        else:
            params[part.name] = bytes(data).decode("utf-8", "replace")
    check_names(arrays, operation)
    return Decoded(arrays, params, "file", params_as_text=True)


def encode(outputs: dict[str, np.ndarray], style: TensorStyle = "file") -> bytes:
    """The one output of an operation as a .npy file."""
    if len(outputs) != 1:
        raise NotAcceptable(
            f"application/x-npy carries a single array but this answer has "
            f"{', '.join(outputs)}: accept application/x-npz or application/json",
            loc=("header", "accept"),
        )
    header, data = npy_parts(next(iter(outputs.values())))
    return b"".join((header, data))


def _multipart_doc(operation: Operation) -> dict[str, Any]:
    files = {
        name: {"type": "string", "format": "binary", "description": f".npy file: {doc}"}
        for name, doc in operation.arrays.items()
        if name in operation.inputs
    }
    # Each text field shows the operation's example (or the default) so that a form built
    # from this document (Swagger UI's "Try it out") sends a value that is accepted.
    examples = {**Hyperparameters.default_texts(), **operation.example}
    fields = {
        name: {"type": "string", "description": text, "example": str(examples[name])}
        for name, text in Hyperparameters.text_forms().items()
        if name in operation.hyperparameters
    }
    return {
        "schema": {
            "type": "object",
            "properties": {**files, **fields},
            "required": list(operation.required),
        }
    }


def _npy_doc(operation: Operation) -> dict[str, Any]:
    return {"schema": {"type": "string", "format": "binary", "description": "a .npy file"}}


def _single_output(operation: Operation) -> bool:
    return len(operation.outputs) == 1


MULTIPART = Codec("multipart/form-data", decode=decode_multipart, request_doc=_multipart_doc)
NPY = Codec("application/x-npy", encode=encode, response_doc=_npy_doc, answers=_single_output)
