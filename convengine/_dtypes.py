"""The dtypes the engine takes, and how each is computed by the real float32/float64 kernels.

=========== ======== ======================= ==============================================
dtype       bytes    computed in             answered
=========== ======== ======================= ==============================================
float16     2        float32                 float16, rounded to nearest even
bfloat16    2        float32                 bfloat16, rounded to nearest even
float32     4        float32                 float32
float64     8        float64                 float64
complex64   8        float32 real products   complex64 (see ``_tensors`` for the products)
complex128  16       float64 real products   complex128
=========== ======== ======================= ==============================================

Every array takes x's dtype: w, b and dout are converted to it (a half-precision w is
rounded to x's type first, as it would be stored). A complex w, b or dout beside a real x
is refused: its imaginary part would be dropped. NumPy has no bfloat16 of its own; an array
whose dtype is named ``bfloat16`` (``ml_dtypes.bfloat16``, which the service uses) is
converted by its dtype's own casts, so the engine itself needs nothing beyond NumPy.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass

import numpy as np
from numpy.typing import DTypeLike

from ._errors import DTypeError

__all__ = ["DTYPE_NAMES", "TensorType", "answer_type", "tensor_type"]


@dataclass(frozen=True)
class TensorType:
    """A dtype the engine takes: its name and size, and the real dtype it is computed in."""

    name: str
    itemsize: int
    compute: np.dtype
    complex: bool = False

    @property
    def half(self) -> bool:
        """Stored in fewer bytes than it is computed in: float16 and bfloat16."""
        return not self.complex and self.itemsize < self.compute.itemsize

    @property
    def products(self) -> int:
        """Real kernel passes per pass: four for complex numbers, one otherwise."""
        return 4 if self.complex else 1


_F32, _F64 = np.dtype(np.float32), np.dtype(np.float64)
_TYPES = {
    t.name: t
    for t in (
        TensorType("float16", 2, _F32),
        TensorType("bfloat16", 2, _F32),
        TensorType("float32", 4, _F32),
        TensorType("float64", 8, _F64),
        TensorType("complex64", 8, _F32, complex=True),
        TensorType("complex128", 16, _F64, complex=True),
    )
}
DTYPE_NAMES = tuple(_TYPES)
_LISTED = f"{', '.join(DTYPE_NAMES[:-1])} or {DTYPE_NAMES[-1]}"


# The records of the dtypes met so far (either byte order), looked up directly: a dtype's
# name is computed in Python on every read, a third of a small layer's dtype checks (~10 us).
_KNOWN: dict[np.dtype, TensorType] = {}


def tensor_type(dtype: DTypeLike | str, field: str) -> TensorType:
    """The engine's record of ``dtype`` (a dtype, a type or a name such as "bfloat16",
    which needs no NumPy extension), else a DTypeError naming the dtypes it takes."""
    if isinstance(dtype, str) and dtype in _TYPES:
        return _TYPES[dtype]
    if isinstance(dtype, np.dtype) and dtype in _KNOWN:
        return _KNOWN[dtype]
    try:
        name = np.dtype(dtype).name
    except TypeError as exc:
        raise DTypeError(f"{field} has no dtype NumPy knows: {dtype!r:.40}", field=field) from exc
    known = _TYPES.get(name)
    if known is None or np.dtype(dtype).itemsize != known.itemsize:
        raise DTypeError(
            f"{field} has dtype {name}; the engine takes {_LISTED}: convert {field} to one of them",
            field=field,
        )
    if isinstance(dtype, np.dtype):
        _KNOWN[dtype] = known
    return known


def answer_type(dtypes: Mapping[str, DTypeLike | str]) -> TensorType:
    """The type every array takes and the answer has: x's. A complex array beside a real x is
    a DTypeError (its imaginary part would be lost); every dtype must be one the engine takes.
    """
    chosen = tensor_type(dtypes["x"], "x")
    for name, dtype in dtypes.items():
        other = tensor_type(dtype, name)
        if other.complex and not chosen.complex:
            raise DTypeError(
                f"{name} is {other.name} but x is {chosen.name}: every array takes x's dtype, "
                f"and a complex {name} cannot become real; send x as complex too",
                field=name,
            )
    return chosen
