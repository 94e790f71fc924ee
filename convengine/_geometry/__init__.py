"""The one place where convolution sizes are computed and checked, for 1, 2 or 3 spatial axes.

:mod:`.parsing` turns hyperparameters and array shapes into checked tuples; :mod:`.axis`
holds the span of a row of windows, written once, and the output size of one axis;
:mod:`.sizes` the geometry objects that own every size.
"""

from .axis import Sides, span
from .parsing import (
    AXES,
    KERNEL,
    OUTPUT,
    SPATIAL,
    IntOrTuple,
    Padding,
    PaddingMode,
    Rounding,
    normalize_padding,
    per_axis,
)
from .sizes import ConvGeometry, TransposedGeometry, array_shapes

__all__ = [
    "AXES",
    "KERNEL",
    "OUTPUT",
    "SPATIAL",
    "ConvGeometry",
    "IntOrTuple",
    "Padding",
    "PaddingMode",
    "Rounding",
    "Sides",
    "TransposedGeometry",
    "array_shapes",
    "normalize_padding",
    "per_axis",
    "span",
]
