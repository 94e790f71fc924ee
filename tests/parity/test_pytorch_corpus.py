"""PyTorch's own convolution configurations (``torch_configs.json``, translated by
``corpus.py`` from the lists PyTorch tests its modules and functionals against), each run
through the service as .npz and as typed JSON, forward and backward, against the oracle.

No torch at test time: the expected values are the oracle's (tests/engine/oracle.py), exact
in float64 and complex128, rounded to the half types."""

from __future__ import annotations

import json

import numpy as np
import pytest

from benchmarks.payloads import read, request

from ..app.conftest import serve
from ..engine.oracle import oracle
from ..tensors import assert_rounded, sample
from .corpus import CORPUS

pytestmark = pytest.mark.anyio

CONFIGS = json.loads(CORPUS.read_text())
_OPERATIONS = {
    "conv": ("forward", "backward", "/forward", "/backward"),
    "transposed": (
        "conv_transpose",
        "conv_transpose_backward",
        "/conv_transpose/forward",
        "/conv_transpose/backward",
    ),
}


def _id(config):
    shapes = f"x{'x'.join(map(str, config['x']))}-w{'x'.join(map(str, config['w']))}"
    return f"{config['source'].split(':')[1]}-{shapes}-{config['dtype']}"


def _hyper(config):
    return {k: tuple(v) if isinstance(v, list) else v for k, v in config["hyper"].items()}


def _scale(*arrays):
    """The size of the largest product sum: the largest entry times the sum of the other."""
    exact = [np.abs(a.astype(np.complex128)) for a in arrays]
    return float(exact[0].max(initial=1) * exact[1].sum())


def _case(config, rng):
    """The arrays of one configuration and the oracle's answers, forward and backward."""
    forward, backward, *_ = _OPERATIONS[config["layer"]]
    dtype, hyper = config["dtype"], _hyper(config)
    x, w = sample(rng, tuple(config["x"]), dtype), sample(rng, tuple(config["w"]), dtype)
    arrays = {"x": x, "w": w}
    if config["bias"]:
        channels = w.shape[1] * hyper["groups"] if config["layer"] == "transposed" else w.shape[0]
        arrays["b"] = sample(rng, (channels,), dtype)
    oracle_hyper = {k: v for k, v in hyper.items() if k != "rounding"}
    out = oracle(forward, arrays, oracle_hyper)["out"]
    grads = {"dout": sample(rng, out.shape, dtype), "x": x, "w": w}
    return arrays, grads, {"out": out, **oracle(backward, grads, oracle_hyper)}


async def _check(client, config, form, arrays, grads, want):
    *_, forward_path, backward_path = _OPERATIONS[config["layer"]]
    dtype, hyper = config["dtype"], _hyper(config)
    accept = "application/x-npz" if form == "npz" else "application/json"
    response = await client.post(forward_path, **request(form, arrays, hyper, accept))
    assert response.status_code == 200, response.text
    x, w, dout = arrays["x"], arrays["w"], grads["dout"]
    assert_rounded(read(response, ["out"])["out"], want["out"], dtype, _scale(x, w))
    response = await client.post(backward_path, **request(form, grads, hyper, accept))
    assert response.status_code == 200, response.text
    got = read(response, ["dx", "dw", "db"])
    scale = _scale(dout, w) + _scale(dout, x)
    for name in ("dx", "dw", "db"):
        assert_rounded(got[name], want[name], dtype, scale)


@pytest.fixture(scope="module")
async def client():
    async with serve() as client:
        yield client


@pytest.fixture(scope="module")
def anyio_backend():
    return "asyncio"


@pytest.mark.parametrize("config", CONFIGS, ids=[_id(c) for c in CONFIGS])
async def test_pytorch_configuration(client, config):
    arrays, grads, want = _case(config, np.random.default_rng(len(config["source"])))
    for form in ("npz", "typed"):
        await _check(client, config, form, arrays, grads, want)


def test_the_corpus_holds_every_kind_pytorch_tests():
    """One sample, empty batches, every rank and both layers, every dtype but complex32."""
    kinds = {(c["layer"], len(c["w"]) - 2) for c in CONFIGS}
    assert kinds == {(layer, rank) for layer in ("conv", "transposed") for rank in (1, 2, 3)}
    assert {c["dtype"] for c in CONFIGS} == {
        "float16",
        "bfloat16",
        "float32",
        "float64",
        "complex64",
        "complex128",
    }
    assert any(len(c["x"]) == len(c["w"]) - 1 for c in CONFIGS)  # one sample
    assert any(len(c["x"]) == len(c["w"]) and c["x"][0] == 0 for c in CONFIGS)  # N=0
