"""PyTorch's own convolution configurations, translated once into ``torch_configs.json``.

Run with torch installed (the bench extra): ``python -m tests.parity.corpus`` writes the
corpus from the lists PyTorch's maintainers test every module and functional against:
``common_nn``'s new module tests, ``common_modules``' module_db and
``common_methods_invocations``' op_db, for Conv1d/2d/3d and ConvTranspose1d/2d/3d. Each
distinct configuration is kept once: layer, x and w shapes, bias, hyperparameters as the
engine names them, dtype. complex32 has no NumPy type and is left out (counted).

The tests (``test_pytorch_corpus.py``) read the corpus and need no torch: the expected
values come from the test oracle. ``python -m tests.parity.corpus --measure`` compares the
service's engine with PyTorch itself on the same configurations and prints the parity
figures of the README.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Any

CORPUS = Path(__file__).with_name("torch_configs.json")
_DTYPES = {
    "torch.float16": "float16",
    "torch.bfloat16": "bfloat16",
    "torch.float32": "float32",
    "torch.float64": "float64",
    "torch.complex64": "complex64",
    "torch.complex128": "complex128",
}


def _without_expecttest() -> None:
    """torch's test helpers import expecttest (a test-only package) for one base class: the
    lists need none of it, so a stand-in is enough to read them."""
    import types
    import unittest

    if "expecttest" not in sys.modules:
        try:
            import expecttest  # noqa: F401
        except ImportError:
            stand_in = types.ModuleType("expecttest")
            stand_in.TestCase = unittest.TestCase  # type: ignore[attr-defined]
            sys.modules["expecttest"] = stand_in


def _config(module: Any, x: Any, source: str) -> dict[str, Any] | None:
    """The engine's description of ``module`` applied to ``x``, or None for complex32."""
    import torch

    dtype = _DTYPES.get(str(x.dtype))
    if dtype is None:
        return None
    transposed = isinstance(module, torch.nn.modules.conv._ConvTransposeNd)
    hyper: dict[str, Any] = {
        "stride": list(module.stride),
        "padding": module.padding if isinstance(module.padding, str) else list(module.padding),
        "dilation": list(module.dilation),
        "groups": module.groups,
    }
    if transposed:
        hyper["output_padding"] = list(module.output_padding)
    else:
        hyper["padding_mode"] = module.padding_mode
        hyper["rounding"] = "floor"  # PyTorch drops the last partial window
    return {
        "source": source,
        "layer": "transposed" if transposed else "conv",
        "x": list(x.shape),
        "w": list(module.weight.shape),
        "bias": module.bias is not None,
        "hyper": hyper,
        "dtype": dtype,
    }


def _functional_config(sample: Any, name: str) -> dict[str, Any] | None:
    """An op_db sample of nn.functional.conv*/conv_transpose* as a configuration."""
    import torch

    transposed = "transpose" in name
    x, (w, *rest) = sample.input, sample.args
    bias = rest[0] if rest else sample.kwargs.get("bias")
    rank = w.dim() - 2
    kwargs = dict(sample.kwargs)
    kwargs.pop("bias", None)
    # Positional hyperparameters after the bias, in the functional's order.
    order = (
        ["stride", "padding", "output_padding", "groups", "dilation"]
        if transposed
        else ["stride", "padding", "dilation", "groups"]
    )
    kwargs.update(dict(zip(order, rest[1:], strict=False)))
    c_in = x.shape[0 if x.dim() == rank + 1 else 1]
    groups = kwargs.get("groups", 1)
    cls = (
        getattr(torch.nn, f"ConvTranspose{rank}d")
        if transposed
        else getattr(torch.nn, f"Conv{rank}d")
    )
    c_out = w.shape[1] * groups if transposed else w.shape[0]
    module_kwargs = {k: v for k, v in kwargs.items() if k != "output_size"}
    module = cls(c_in, c_out, tuple(w.shape[2:]), bias=bias is not None, **module_kwargs)
    return _config(module, x, f"op_db:{name}")


def _new_module_tests() -> list[dict[str, Any]]:
    import torch
    from torch.testing._internal import common_nn

    configs = []
    for test in common_nn.get_new_module_tests():
        name = test.get("module_name") or test.get("fullname", "")
        if not str(name).startswith("Conv"):
            continue
        if "constructor" in test:
            module = test["constructor"](*test.get("constructor_args", ()))
        else:
            module = getattr(torch.nn, test["module_name"])(*test.get("constructor_args", ()))
        x = test["input_fn"]() if "input_fn" in test else torch.empty(test["input_size"])
        if "input_fn" not in test and test.get("default_dtype") is not None:
            x = x.to(test["default_dtype"])
        configs.append(_config(module, x, f"common_nn:{test.get('fullname', name)}"))
    return [c for c in configs if c is not None]


def _module_db() -> list[dict[str, Any]]:
    import torch
    from torch.testing._internal.common_modules import module_db

    configs = []
    for info in module_db:
        if not info.module_cls.__name__.startswith("Conv"):
            continue
        for dtype in info.dtypes:
            for sample in info.module_inputs_func(
                info, device="cpu", dtype=dtype, requires_grad=False, training=True
            ):
                args, kwargs = sample.constructor_input.args, sample.constructor_input.kwargs
                module = info.module_cls(*args, **kwargs)
                x = sample.forward_input.args[0]
                source = f"module_db:{info.module_cls.__name__}:{sample.desc}:{dtype}"
                configs.append(_config(module.to(torch.float64), x, source))
    return [c for c in configs if c is not None]


def _op_db() -> list[dict[str, Any]]:
    from torch.testing._internal.common_methods_invocations import op_db

    configs = []
    for op in op_db:
        if not op.name.startswith(
            (
                "nn.functional.conv1d",
                "nn.functional.conv2d",
                "nn.functional.conv3d",
                "nn.functional.conv_transpose",
            )
        ):
            continue
        for dtype in op.supported_dtypes("cpu"):
            if str(dtype) not in _DTYPES:
                continue
            for sample in op.sample_inputs("cpu", dtype):
                if "output_size" in sample.kwargs:
                    continue
                config = _functional_config(sample, op.name)
                if config is not None:
                    configs.append(config)
    return configs


def build() -> list[dict[str, Any]]:
    """Every distinct configuration of the three lists, in a stable order."""
    _without_expecttest()
    seen: dict[str, dict[str, Any]] = {}
    for config in (*_new_module_tests(), *_module_db(), *_op_db()):
        key = json.dumps({k: v for k, v in config.items() if k != "source"}, sort_keys=True)
        seen.setdefault(key, config)
    return sorted(seen.values(), key=lambda c: json.dumps(c, sort_keys=True))


if __name__ == "__main__":
    if "--measure" in sys.argv:
        from .measure import main

        main()
    else:
        configs = build()
        lines = ",\n".join(json.dumps(config, sort_keys=True) for config in configs)
        CORPUS.write_text(f"[\n{lines}\n]\n")  # one configuration a line
        print(f"{len(configs)} configurations written to {CORPUS}")
