"""convengine: 2-D convolution layers, forward and backward, as im2col + GEMM on NumPy."""

from ._errors import ConvError, DTypeError, ShapeError
from ._functional import backward, conv2d, conv2d_backward, forward
from ._geometry import ConvGeometry
from ._layer import Conv
from ._operations import OPERATIONS, Cost, Operation

__all__ = [
    "OPERATIONS",
    "Conv",
    "ConvError",
    "ConvGeometry",
    "Cost",
    "DTypeError",
    "Operation",
    "ShapeError",
    "backward",
    "conv2d",
    "conv2d_backward",
    "forward",
]
__version__ = "0.1.0"
