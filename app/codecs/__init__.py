"""Wire formats: one module per format, chosen here by Content-Type and Accept.

A decoder turns a body into :class:`Decoded` arrays and raw hyperparameters; an encoder turns
the outputs into bytes. A new format is one module and one line in each table below.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from functools import partial

import numpy as np

from app.errors import NotAcceptable, UnsupportedMediaType

from . import json, npy, npz
from ._common import ArrayNames, Budget, Decoded, TensorStyle

__all__ = [
    "JSON",
    "NPY",
    "NPZ",
    "REQUEST_TYPES",
    "RESPONSE_TYPES",
    "ArrayNames",
    "Budget",
    "Decoded",
    "Decoder",
    "Encoder",
    "TensorStyle",
    "choose_decoder",
    "choose_encoder",
]

JSON, NPZ, NPY, MULTIPART = (
    "application/json",
    "application/x-npz",
    "application/x-npy",
    "multipart/form-data",
)
Decoder = Callable[[bytes, ArrayNames, Mapping[str, str], Budget], Decoded]
Encoder = Callable[[dict[str, np.ndarray], TensorStyle], bytes]

REQUEST_TYPES = (JSON, MULTIPART, NPZ)
RESPONSE_TYPES = (JSON, NPZ, NPY)
_ENCODERS: dict[str, Encoder] = {
    JSON: json.encode,
    NPZ: lambda outputs, style: npz.encode(outputs),
    NPY: lambda outputs, style: npy.encode(outputs),
}


def _media_type(header: str) -> tuple[str, dict[str, str]]:
    kind, *options = header.split(";")
    params = {}
    for option in options:
        key, _, value = option.partition("=")
        params[key.strip().lower()] = value.strip().strip('"')
    return kind.strip().lower(), params


def choose_decoder(content_type: str | None) -> Decoder:
    """The decoder for a Content-Type header; 415 for anything else."""
    kind, params = _media_type(content_type or "")
    if kind == JSON or kind.endswith("+json"):
        return json.decode
    if kind == NPZ:
        return npz.decode
    if kind == MULTIPART:
        return partial(npy.decode_multipart, boundary=params.get("boundary", ""))
    raise UnsupportedMediaType(
        f"Content-Type {kind or '(none)'!r} is not read here: send {', '.join(REQUEST_TYPES)}",
        loc=("header", "content-type"),
    )


def choose_encoder(accept: str | None) -> tuple[str, Encoder]:
    """The best response type the Accept header allows (JSON when it allows anything)."""
    offers: list[tuple[float, int, str]] = []
    for position, entry in enumerate((accept or "*/*").split(",")):
        kind, params = _media_type(entry)
        try:
            quality = float(params.get("q", "1"))
        except ValueError:
            quality = 0.0
        if kind in ("*/*", "application/*"):
            kind = JSON
        if kind in _ENCODERS and quality > 0:
            offers.append((-quality, position, kind))
    if not offers:
        raise NotAcceptable(
            f"cannot answer in {accept!r}: accept one of {', '.join(RESPONSE_TYPES)}",
            loc=("header", "accept"),
        )
    kind = min(offers)[2]
    return kind, _ENCODERS[kind]
