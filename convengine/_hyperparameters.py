"""The engine's hyperparameters: one typed record per kind of layer.

Every public function takes them as ``**options`` of these types, the classic layer and the
table of operations read their names from here, and the service's schema is checked against
them; the defaults and the checks live in the geometry that parses them (``_geometry``).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import TypedDict

from ._geometry import IntOrTuple, Padding, PaddingMode, Rounding

__all__ = [
    "CONV_HYPERPARAMETERS",
    "TRANSPOSED_HYPERPARAMETERS",
    "ConvOptions",
    "LayerOptions",
    "TransposedOptions",
]


class LayerOptions(TypedDict, total=False):
    """A convolution's hyperparameters besides stride and padding (the classic layer takes
    those two by position): dilation (1), groups (1), padding_mode ("zeros"), rounding
    ("exact"), each default when left out."""

    dilation: IntOrTuple
    groups: int
    padding_mode: PaddingMode
    rounding: Rounding


class ConvOptions(LayerOptions, total=False):
    """A convolution's hyperparameters: stride (1), padding (0) and :class:`LayerOptions`."""

    stride: IntOrTuple
    padding: Padding


class TransposedOptions(TypedDict, total=False):
    """A transposed convolution's hyperparameters: stride (1), padding (0), output_padding
    (0), dilation (1), groups (1). Its padding is explicit: no "same" or "valid"."""

    stride: IntOrTuple
    padding: IntOrTuple | Sequence[Sequence[int]]
    output_padding: IntOrTuple
    dilation: IntOrTuple
    groups: int


CONV_HYPERPARAMETERS = frozenset(ConvOptions.__optional_keys__)
TRANSPOSED_HYPERPARAMETERS = frozenset(TransposedOptions.__optional_keys__)
