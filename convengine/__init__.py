"""convengine: 2-D convolution layers, forward and backward, as im2col + GEMM on NumPy."""

from ._conv import conv2d, conv2d_backward
from ._errors import ConvError, DTypeError, ShapeError
from ._geometry import ConvGeometry
from ._layer import Conv

__all__ = [
    "Conv",
    "ConvError",
    "ConvGeometry",
    "DTypeError",
    "ShapeError",
    "conv2d",
    "conv2d_backward",
]
__version__ = "0.1.0"
