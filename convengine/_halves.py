"""Where the two-halves path lived: it is :mod:`convengine._kernels.halves` now.

Kept for ``convengine/bench.py``, which another change moves; remove it once bench imports
``convengine._kernels.halves``.
"""

from ._kernels.halves import part, run, split

__all__ = ["part", "run", "split"]
