"""The parity figures of the README, measured once against PyTorch itself (needs torch).

``python -m tests.parity.corpus --measure``: every configuration of the corpus through the
service (.npz), forward and backward, against PyTorch on the same arrays:

- float32/64 and complex64/128: PyTorch's own result, within 64 epsilons of the products'
  size (the tests' bound against the oracle);
- float16 and bfloat16: PyTorch's float32 result on the same (half) inputs, rounded to the
  half type; reported in units in the last place (ulp) of the half type, and how often the
  two are the same number.
"""

from __future__ import annotations

import asyncio
import json
from typing import Any

import numpy as np

from benchmarks.payloads import read, request

from ..app.conftest import serve
from ..tensors import EPSILON, sample
from .corpus import CORPUS
from .test_pytorch_corpus import _OPERATIONS, _hyper, _scale


def _torch(config: dict[str, Any], arrays: dict[str, np.ndarray], dout: np.ndarray) -> dict:
    """PyTorch's out, dx, dw, db; half types computed in float32 on their exact values."""
    import torch

    half = config["dtype"] in ("float16", "bfloat16")
    cast = (lambda a: torch.tensor(a.astype(np.float32))) if half else torch.tensor
    tensors = {k: cast(a).requires_grad_() for k, a in arrays.items()}
    rank = len(config["w"]) - 2
    hyper = _hyper(config)
    hyper.pop("rounding", None)
    mode = hyper.pop("padding_mode", "zeros")
    if config["layer"] == "transposed":
        function = getattr(torch.nn.functional, f"conv_transpose{rank}d")
        out = function(tensors["x"], tensors["w"], tensors.get("b"), **hyper)
    else:
        module = getattr(torch.nn, f"Conv{rank}d")(
            1, 1, 1, padding=hyper["padding"], padding_mode=mode
        )
        module.stride, module.dilation, module.groups = (
            hyper["stride"],
            hyper["dilation"],
            hyper["groups"],
        )
        out = module._conv_forward(tensors["x"], tensors["w"], tensors.get("b"))
    out.backward(cast(dout))
    b = tensors.get("b")
    zeros = torch.zeros(out.shape[1 if out.dim() == rank + 2 else 0], dtype=out.dtype)
    result = {
        "out": out.detach(),
        "dx": tensors["x"].grad,
        "dw": tensors["w"].grad,
        "db": b.grad if b is not None else None,
    }
    if b is None:
        result["db"] = zeros + cast(dout).sum(
            dim=tuple(i for i in range(out.dim()) if i != out.dim() - rank - 1)
        )
    return {k: v.numpy() for k, v in result.items()}


_MANTISSA = {"float16": (10, 2.0**-24), "bfloat16": (7, 2.0**-133)}


def _half_errors(got: np.ndarray, want32: np.ndarray, dtype: str) -> tuple[np.ndarray, np.ndarray]:
    """got (half) against PyTorch's float32 result rounded to got's type: the differences,
    and the ulp of the half type at each rounded value."""
    ref = want32.astype(got.dtype).astype(np.float64)
    bits, smallest = _MANTISSA[dtype]
    magnitude = np.abs(ref)
    exponent = np.floor(np.log2(np.where(magnitude > 0, magnitude, 1.0)))
    ulp = np.where(magnitude > 0, np.maximum(2.0 ** (exponent - bits), smallest), smallest)
    return np.abs(got.astype(np.float64) - ref), ulp


async def _measure() -> None:
    configs = json.loads(CORPUS.read_text())
    passed, failures = 0, []
    half_ulps: dict[str, list[float]] = {"float16": [], "bfloat16": []}
    half_relative: dict[str, list[float]] = {"float16": [], "bfloat16": []}
    half_equal: dict[str, list[int]] = {"float16": [0, 0], "bfloat16": [0, 0]}
    complex_error: dict[str, list[float]] = {"complex64": [], "complex128": []}
    async with serve() as client:
        for config in configs:
            rng = np.random.default_rng(len(config["source"]))
            _, _, forward_path, backward_path = _OPERATIONS[config["layer"]]
            dtype, hyper = config["dtype"], _hyper(config)
            x, w = sample(rng, tuple(config["x"]), dtype), sample(rng, tuple(config["w"]), dtype)
            arrays = {"x": x, "w": w}
            if config["bias"]:
                channels = (
                    w.shape[1] * hyper["groups"] if config["layer"] == "transposed" else w.shape[0]
                )
                arrays["b"] = sample(rng, (channels,), dtype)
            npz = "application/x-npz"
            got = read(
                await client.post(forward_path, **request("npz", arrays, hyper, npz)), ["out"]
            )
            dout = sample(rng, got["out"].shape, dtype)
            grads = {"dout": dout, "x": x, "w": w}
            got.update(
                read(
                    await client.post(backward_path, **request("npz", grads, hyper, npz)),
                    ["dx", "dw", "db"],
                )
            )
            want = _torch(config, arrays, dout)
            ok = True
            for name in ("out", "dx", "dw", "db"):
                if dtype in half_ulps:
                    diff, ulp = _half_errors(got[name], want[name], dtype)
                    if not diff.size:
                        continue
                    largest = max(float(np.abs(want[name]).max()), 1e-300)
                    # Where the value is not a cancellation (at least an epsilon of the
                    # largest), in ulps; everywhere, relative to the largest value.
                    kept = np.abs(want[name]) >= 2.0 ** -_MANTISSA[dtype][0] * largest
                    half_ulps[dtype].append(float((diff / ulp)[kept].max(initial=0)))
                    half_relative[dtype].append(float(diff.max()) / largest)
                    half_equal[dtype][0] += int((diff == 0).sum())
                    half_equal[dtype][1] += diff.size
                    # The two float32 sums may differ by their own rounding (order of sums).
                    slack = (
                        64 * EPSILON["float32"] * (_scale(dout, w) + _scale(dout, x) + _scale(x, w))
                    )
                    ok &= bool((diff <= ulp + slack).all())
                else:
                    scale = _scale(dout, w) + _scale(dout, x) + _scale(x, w)
                    error = np.abs(got[name].astype(np.complex128) - want[name])
                    ok &= bool((error <= EPSILON[dtype] * (np.abs(want[name]) + 64 * scale)).all())
                    if dtype.startswith("complex") and error.size:
                        complex_error[dtype].append(
                            float(error.max() / max(np.abs(want[name]).max(), 1e-300))
                        )
            passed += ok
            if not ok:
                failures.append(
                    f"{config['source']} {dtype} x{config['x']} w{config['w']} {config['hyper']}"
                )
    print(f"PyTorch configurations passed: {passed} of {len(configs)}")
    for name in failures[:20]:
        print("  failed:", name)
    for dtype in half_ulps:
        same, total = half_equal[dtype]
        print(
            f"{dtype}: against PyTorch's float32 result rounded to {dtype}: the same number in "
            f"{same} of {total} elements ({100 * same / total:.3f}%); worst {max(half_ulps[dtype]):.0f} "
            f"ulp where no cancellation; worst {max(half_relative[dtype]):.2g} of the largest value"
        )
    for dtype, errors in complex_error.items():
        print(f"{dtype}: worst error relative to the largest value {max(errors):.2g}")


def main() -> None:
    asyncio.run(_measure())
