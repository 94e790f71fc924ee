"""Wire formats: one module per format, each declaring one :class:`Codec`, chosen here.

Requests are read by Content-Type, answers written by Accept, or in the request's form when
Accept allows anything. A new format is one module
and one entry in ``CODECS``; its OpenAPI entries come with it.
"""

from __future__ import annotations

from typing import Any

from app.errors import NotAcceptable, UnsupportedMediaType, brief
from convengine import Operation

from . import json, npy, npz
from .base import Budget, Codec, Decoded, Decoder, Encoder, TensorStyle

__all__ = ["CODECS", "choose_decoder", "choose_encoder", "request_body", "responses_content"]
__all__ += ["Budget", "Codec", "Decoded", "Decoder", "Encoder", "TensorStyle"]  # from .base

# In order of preference for answers when the client accepts anything.
CODECS: tuple[Codec, ...] = (json.CODEC, npz.CODEC, npy.NPY, npy.MULTIPART)
_DECODERS = {codec.media_type: codec for codec in CODECS if codec.decode is not None}
_ENCODERS = {codec.media_type: codec for codec in CODECS if codec.encode is not None}
# Requests in these forms are answered as .npz unless Accept names a form.
_BINARY_REQUESTS = frozenset(_DECODERS) - {json.MEDIA_TYPE}


def _media_type(header: str) -> tuple[str, dict[str, str]]:
    kind, *options = header.split(";")
    params = {}
    for option in options:
        key, _, value = option.partition("=")
        params[key.strip().lower()] = value.strip().strip('"')
    return kind.strip().lower(), params


def choose_decoder(content_type: str | None) -> tuple[Codec, dict[str, str]]:
    """The codec for a Content-Type header, with the header's options; 415 for anything else."""
    kind, options = _media_type(content_type or "")
    if kind.endswith("+json"):  # application/problem+json and kin are JSON all the same
        kind = json.MEDIA_TYPE
    codec = _DECODERS.get(kind)
    if codec is None:
        raise UnsupportedMediaType(
            f"Content-Type {kind or '(none)'!r} is not read here: send {', '.join(_DECODERS)}",
            loc=("header", "content-type"),
        )
    return codec, options


def choose_encoder(
    accept: str | None, operation: Operation, content_type: str | None = None
) -> Codec:
    """The best answer format the Accept header allows; when it allows anything (no header,
    ``*/*``, ``application/*``), the request's own form: ``.npz`` for a binary request
    (``.npz``, ``.npy``, multipart), JSON for a JSON one."""
    binary = _media_type(content_type or "")[0] in _BINARY_REQUESTS
    anything = npz.CODEC.media_type if binary else json.MEDIA_TYPE
    offers: list[tuple[float, int, str]] = []
    for position, entry in enumerate((accept or "*/*").split(",")):
        kind, params = _media_type(entry)
        try:
            quality = float(params.get("q", "1"))
        except ValueError:
            quality = 0.0
        if kind in ("*/*", "application/*"):
            kind = anything
        if kind in _ENCODERS and quality > 0:
            offers.append((-quality, position, kind))
    if not offers:
        raise NotAcceptable(
            f"cannot answer in {brief(accept, 80)}: accept one of {', '.join(_ENCODERS)}",
            loc=("header", "accept"),
        )
    codec = _ENCODERS[min(offers)[2]]
    if not codec.answers(operation):
        fits = [c.media_type for c in _ENCODERS.values() if c.answers(operation)]
        raise NotAcceptable(
            f"{codec.media_type} carries a single array; {operation.name} answers "
            f"{_listed(operation.outputs)}: accept {' or '.join(fits)}",
            loc=("header", "accept"),
        )
    return codec


def _listed(names: tuple[str, ...]) -> str:
    return names[0] if len(names) == 1 else f"{', '.join(names[:-1])} and {names[-1]}"


def request_body(operation: Operation) -> dict[str, Any]:
    """The OpenAPI ``requestBody`` of ``operation``: one entry per format that reads requests."""
    content = {
        codec.media_type: codec.request_doc(operation)
        for codec in _DECODERS.values()
        if codec.request_doc is not None
    }
    return {"required": True, "content": content}


def responses_content(operation: Operation) -> dict[str, Any]:
    """The OpenAPI content of a 200 answer of ``operation``: every format that can carry it."""
    return {
        codec.media_type: codec.response_doc(operation)
        for codec in _ENCODERS.values()
        if codec.response_doc is not None and codec.answers(operation)
    }


def query_codecs() -> list[str]:
    """The formats whose hyperparameters travel in the query string."""
    return [codec.media_type for codec in _DECODERS.values() if codec.query_parameters]
