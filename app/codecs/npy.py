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
from convengine.npy_header import MAX_HEADER, parse_header

from .base import (
    Budget,
    Codec,
    Decoded,
    Fields,
    Pieces,
    TensorStyle,
    check_known,
    check_names,
    npy_parts,
    pieces_of,
    read_npy,
    readable,
)

__all__ = ["MULTIPART", "NPY", "Parts", "decode_multipart", "encode"]

MAX_PARTS = 16
_NPY_HEADER_BYTES = 12 + MAX_HEADER  # magic, version, length field and the longest header
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
        part.name, part.filename = _disposition(part.headers)
    return parts


def _disposition(headers: Mapping[bytes, bytes]) -> tuple[str, str | None]:
    """A part's name and file name, from its Content-Disposition."""
    _, options = parse_options_header(headers.get(b"content-disposition", b""))
    filename = options.get(b"filename")
    return (
        options.get(b"name", b"").decode("utf-8", "replace"),
        None if filename is None else filename.decode("utf-8", "replace"),
    )


def _boundary(options: Mapping[str, str]) -> bytes:
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
    return boundary.encode("latin-1")


class Parts:
    """What a multipart body announces as it arrives (app.codecs.base.Announced): each array
    part's .npy header, and the form fields (hyperparameters), which may come after the
    arrays; announced all at once when the closing boundary has arrived. A body the decoder
    would refuse, or a field longer than a hyperparameter is, is ``lost``."""

    MAX_FIELD = 1024

    def __init__(self, operation: Operation, query: Fields, options: Fields) -> None:
        self.specs: dict[str, tuple[tuple[int, ...], np.dtype]] = {}
        self.lost = self.ended = False
        self._operation = operation
        self._arrays: dict[str, tuple[tuple[int, ...], np.dtype]] = {}
        self._fields: dict[str, str] = {}
        self._headers: dict[bytes, bytes] = {}
        self._field, self._value, self._data = bytearray(), bytearray(), bytearray()
        self._name, self._array, self._count = "", False, 0
        try:
            boundary = _boundary(options)
        except (BadRequest, UnicodeEncodeError):
            self.lost = True
            return
        self._parser = MultipartParser(
            boundary,
            {
                "on_part_begin": self._begin,
                "on_header_field": lambda data, start, end: self._field.extend(data[start:end]),
                "on_header_value": lambda data, start, end: self._value.extend(data[start:end]),
                "on_header_end": self._header_end,
                "on_headers_finished": self._headers_finished,
                "on_part_data": self._part_data,
                "on_part_end": self._part_end,
                "on_end": self._end,
            },
        )

    @property
    def sent(self) -> Decoded:
        return Decoded({}, dict(self._fields), "file", params_as_text=True)

    def feed(self, piece: bytes | memoryview) -> None:
        if self.lost or self.ended:
            return
        try:
            self._parser.write(bytes(piece))
        except MultipartParseError:
            self.lost = True

    def _begin(self) -> None:
        self._count += 1
        self.lost |= self._count > MAX_PARTS
        self._headers.clear()
        self._data.clear()

    def _header_end(self) -> None:
        self._headers[bytes(self._field).lower()] = bytes(self._value)
        self._field.clear()
        self._value.clear()

    def _headers_finished(self) -> None:
        self._name, filename = _disposition(self._headers)
        self._array = filename is not None or self._name in self._operation.inputs
        if self._array and self._name not in self._operation.inputs:
            self.lost = True  # an array the operation does not take: the decoder names it

    def _part_data(self, data: bytes, start: int, end: int) -> None:
        room = (_NPY_HEADER_BYTES if self._array else self.MAX_FIELD + 1) - len(self._data)
        self._data += data[start : start + max(0, min(end - start, room))]

    def _part_end(self) -> None:
        name, data = self._name, self._data
        if self.lost or not data:
            return  # a blank part is absent
        if name in self._arrays or name in self._fields:
            self.lost = True  # sent twice: the decoder names it
        elif not self._array:
            self.lost = len(data) > self.MAX_FIELD
            self._fields[name] = data.decode("utf-8", "replace")
        else:
            try:
                header = parse_header(bytes(data))
            except ValueError:
                self.lost = True
                return
            spec = readable(header)
            self.lost = spec is None
            if spec is not None:
                self._arrays[name] = spec

    def _end(self) -> None:
        self.ended = True
        self.specs = dict(self._arrays)


def decode_multipart(
    body: bytes,
    operation: Operation,
    query: Mapping[str, str],
    budget: Budget,
    options: Mapping[str, str],
) -> Decoded:
    boundary = _boundary(options)
    arrays: dict[str, np.ndarray] = {}
    params: dict[str, Any] = {}
    for part in _parse_parts(body, boundary):
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


def encode(outputs: dict[str, np.ndarray], style: TensorStyle = "file") -> Pieces:
    """The one output of an operation as a .npy file."""
    if len(outputs) != 1:
        raise NotAcceptable(
            f"application/x-npy carries a single array but this answer has "
            f"{', '.join(outputs)}: accept application/x-npz or application/json",
            loc=("header", "accept"),
        )
    header, data = npy_parts(next(iter(outputs.values())))
    return [header, *pieces_of(data)]


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


MULTIPART = Codec(
    "multipart/form-data",
    decode=decode_multipart,
    request_doc=_multipart_doc,
    announced=Parts,
)
NPY = Codec("application/x-npy", encode=encode, response_doc=_npy_doc, answers=_single_output)
