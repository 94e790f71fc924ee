"""One call split along the batch: how many samples each shard takes, and the answer rebuilt.

Pure functions on arrays and the table of operations; the HTTP client (``client.py``) sends
the shards. Inputs in :attr:`Operation.batched` are sliced along axis 0 and the others sent
whole with every shard; outputs in ``batched`` are concatenated in shard order, and those in
:attr:`Operation.summed` added up in float64 in shard order and returned in their own dtype.
So the answer depends on where the shards begin and end, never on the order in which they
finish nor on which replica computed them.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, fields
from itertools import pairwise
from typing import Any

import numpy as np

from ._operations import Operation

__all__ = ["Assembly", "Limits", "plan", "shard_arrays"]

# What an .npz archive adds to each array's bytes (zip headers, the .npy header), at most.
NPZ_OVERHEAD = 512


@dataclass(frozen=True)
class Limits:
    """What one request to a replica may be, from its ``GET /limits``; None where unknown."""

    max_body_bytes: int | None = None
    max_decoded_bytes: int | None = None
    max_work_bytes: int | None = None
    max_gflop: float | None = None
    memory_budget_bytes: int | None = None

    @classmethod
    def from_json(cls, data: Mapping[str, Any]) -> Limits:
        """A replica's ``/limits``; what is not a non-negative number there is not known."""

        def number(value: object) -> Any:
            ok = isinstance(value, int | float) and not isinstance(value, bool) and value >= 0
            return value if ok else None

        return cls(**{f.name: number(data.get(f.name)) for f in fields(cls)})

    @classmethod
    def tightest(cls, every: Iterable[Limits]) -> Limits:
        """Each limit the smallest of those known: a shard that fits it fits every replica."""
        every = list(every)
        values = {}
        for f in fields(cls):
            known = [getattr(limits, f.name) for limits in every]
            known = [value for value in known if value is not None]
            values[f.name] = min(known) if known else None
        return cls(**values)


def batch_size(operation: Operation, arrays: Mapping[str, np.ndarray]) -> int | None:
    """N, the first axis of every batched input; None if there is none or they disagree, or
    x is one sample (then the call goes whole, and the service names any problem)."""
    present = [arrays[name] for name in sorted(operation.batched) if name in arrays]
    if not present or any(array.ndim == 0 for array in present):
        return None
    if "x" in arrays and "w" in arrays and arrays["x"].ndim < arrays["w"].ndim:
        return None  # one sample without its batch axis: nothing to split
    sizes = {array.shape[0] for array in present}
    return sizes.pop() if len(sizes) == 1 else None


def _shapes(
    operation: Operation, arrays: Mapping[str, np.ndarray], n: int
) -> dict[str, tuple[int, ...]]:
    return {
        name: (n, *array.shape[1:]) if name in operation.batched else array.shape
        for name, array in arrays.items()
    }


def _work_bytes_and_gflop(
    operation: Operation, arrays: Mapping[str, np.ndarray], hyper: Mapping[str, Any], n: int
) -> tuple[int, float] | None:
    """The cost the service will reckon for ``n`` samples, or None if it will refuse anyway."""
    try:
        geometry = operation.plan(_shapes(operation, arrays, n), hyper)
    except (ValueError, TypeError):  # the service answers with its own message
        return None
    dtype = arrays["x"].dtype if "x" in arrays else np.float64  # the answer's dtype is x's
    cost = operation.cost(geometry, dtype)
    return cost.work_bytes, cost.flops / 1e9


def request_bytes(operation: Operation, arrays: Mapping[str, np.ndarray], n: int) -> int:
    """The size of an .npz request carrying ``n`` samples, at most."""
    total = 0
    for name, array in arrays.items():
        nbytes = array.nbytes
        if name in operation.batched and array.shape[0]:
            nbytes = nbytes // array.shape[0] * n
        total += nbytes + NPZ_OVERHEAD
    return total


def fits(
    operation: Operation,
    arrays: Mapping[str, np.ndarray],
    hyper: Mapping[str, Any],
    n: int,
    limits: Limits,
    max_request_bytes: int | None,
) -> bool:
    """Whether a shard of ``n`` samples stays within every limit known."""
    body = request_bytes(operation, arrays, n)
    caps = [c for c in (limits.max_body_bytes, max_request_bytes) if c is not None]
    if any(body > cap for cap in caps):
        return False
    if limits.max_decoded_bytes is not None and body > limits.max_decoded_bytes:
        return False
    cost = _work_bytes_and_gflop(operation, arrays, hyper, n)
    if cost is None:
        return True
    work, gflop = cost
    if limits.max_work_bytes is not None and work > limits.max_work_bytes:
        return False
    if limits.max_gflop is not None and gflop > limits.max_gflop:
        return False
    # The body, its decoded arrays and the answer (about as large), and the work, held at
    # once; half the budget, so that a second shard fits beside it.
    budget = limits.memory_budget_bytes
    return budget is None or 3 * body + work <= budget // 2


def largest_shard(
    operation: Operation,
    arrays: Mapping[str, np.ndarray],
    hyper: Mapping[str, Any],
    total: int,
    limits: Limits,
    max_request_bytes: int | None,
) -> int:
    """The most samples one shard may take (at least one: the service refuses it if not)."""
    if fits(operation, arrays, hyper, total, limits, max_request_bytes):
        return total
    low, high = 1, total  # fits(low) is assumed, fits(high) is false
    while high - low > 1:
        middle = (low + high) // 2
        if fits(operation, arrays, hyper, middle, limits, max_request_bytes):
            low = middle
        else:
            high = middle
    return low


def plan(
    operation: Operation,
    arrays: Mapping[str, np.ndarray],
    hyper: Mapping[str, Any],
    limits: Limits,
    shards: int | None = None,
    max_request_bytes: int | None = None,
) -> list[slice]:
    """The shards of a call, as slices of the batch: as few as every limit allows, at least
    ``shards``, sizes as even as can be (they differ by one sample at most)."""
    total = batch_size(operation, arrays)
    if total is None or total <= 1:
        return [slice(None)]
    most = largest_shard(operation, arrays, hyper, total, limits, max_request_bytes)
    count = min(total, max(shards or 1, math.ceil(total / most)))
    if count == 1:
        return [slice(None)]
    edges = [total * i // count for i in range(count + 1)]
    return [slice(start, stop) for start, stop in pairwise(edges)]


def shard_arrays(
    operation: Operation, arrays: Mapping[str, np.ndarray], part: slice
) -> dict[str, np.ndarray]:
    """The arrays one shard sends: batched ones sliced, the others whole."""
    return {
        name: array[part] if name in operation.batched else array for name, array in arrays.items()
    }


class Assembly:
    """The outputs of a sharded call, gathered as the shards finish, in any order."""

    def __init__(self, operation: Operation, count: int) -> None:
        self.operation = operation
        self.parts: list[Mapping[str, np.ndarray] | None] = [None] * count

    @property
    def done(self) -> int:
        return sum(part is not None for part in self.parts)

    def add(self, index: int, outputs: Mapping[str, np.ndarray]) -> None:
        self.parts[index] = outputs

    def result(self) -> dict[str, np.ndarray]:
        """Batched outputs concatenated, summed ones added in float64 (complex128 for complex
        ones), both in shard order."""
        parts = [part for part in self.parts if part is not None]
        if len(parts) != len(self.parts):
            raise RuntimeError(f"{len(self.parts) - len(parts)} shards have no answer yet")
        result = {}
        for name in self.operation.outputs:
            pieces = [part[name] for part in parts]
            if name in self.operation.summed:
                wide = np.complex128 if pieces[0].dtype.kind == "c" else np.float64
                total = np.zeros(pieces[0].shape, dtype=wide)
                for piece in pieces:
                    total += piece
                result[name] = total.astype(pieces[0].dtype)
            elif len(pieces) == 1:
                result[name] = pieces[0]
            else:
                result[name] = np.concatenate(pieces, axis=0)
        return result
