"""The errors the engine raises for input it cannot compute.

Hierarchy::

    ValueError
    └── ConvError            any invalid convolution input; ``field`` names the culprit
        ├── ShapeError       shapes, hyperparameters and geometry that do not fit together
        └── DTypeError       (also a TypeError) arrays of a dtype the engine does not compute in

Every message is written for a person: it names the values involved and what to change.
"""

from __future__ import annotations

__all__ = ["ConvError", "DTypeError", "ShapeError"]


class ConvError(ValueError):
    """An input the convolution cannot be computed for.

    ``field`` names the argument at fault (``"x"``, ``"w"``, ``"b"``, ``"dout"``,
    ``"stride"``, ``"padding"``, ``"dilation"`` or ``"groups"``), so that a caller such as
    the HTTP service can point at it.
    """

    def __init__(self, message: str, *, field: str) -> None:
        super().__init__(message)
        self.field = field

    @property
    def message(self) -> str:
        return str(self.args[0])


class ShapeError(ConvError):
    """Shapes or hyperparameters that do not describe a valid convolution."""


class DTypeError(ConvError, TypeError):
    """An array whose dtype is neither float32 nor float64."""
