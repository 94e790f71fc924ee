"""convengine: convolution layers (1-, 2- and 3-D, and transposed), forward and backward,
as im2col + GEMM on NumPy."""

from ._errors import ConvError, DTypeError, ShapeError
from ._explain import explain
from ._functional import conv2d, conv2d_backward
from ._geometry import ConvGeometry, PaddingMode, Rounding, TransposedGeometry
from ._hyperparameters import ConvOptions, LayerOptions, TransposedOptions
from ._layer import Conv
from ._operations import (
    OPERATIONS,
    RANKS,
    ArrayDoc,
    ArraySpec,
    Cost,
    Explanation,
    Geometry,
    Operation,
)
from ._public import (
    backward,
    conv,
    conv_backward,
    conv_transpose,
    conv_transpose_backward,
    forward,
    transposed_backward,
    transposed_forward,
)

__all__ = [
    "OPERATIONS",
    "RANKS",
    "ArrayDoc",
    "ArraySpec",
    "Conv",
    "ConvError",
    "ConvGeometry",
    "ConvOptions",
    "Cost",
    "DTypeError",
    "Explanation",
    "Geometry",
    "LayerOptions",
    "Operation",
    "PaddingMode",
    "Rounding",
    "ShapeError",
    "TransposedGeometry",
    "TransposedOptions",
    "backward",
    "conv",
    "conv2d",
    "conv2d_backward",
    "conv_backward",
    "conv_transpose",
    "conv_transpose_backward",
    "explain",
    "forward",
    "transposed_backward",
    "transposed_forward",
]
__version__ = "0.1.0"
