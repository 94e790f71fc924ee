"""NVIDIA's own client, tritonclient[http], against a real uvicorn process: no code of ours."""

from __future__ import annotations

from collections.abc import Iterator

import ml_dtypes
import numpy as np
import pytest
import tritonclient.http as triton
from tritonclient.utils import InferenceServerException

from convengine import conv, conv2d, conv2d_backward

from ..servers import start_service


@pytest.fixture(scope="module")
def client(tmp_path_factory) -> Iterator[triton.InferenceServerClient]:
    service = start_service(tmp_path_factory.mktemp("triton"), log_level="warning")
    service.wait_ready()
    client = triton.InferenceServerClient(url=f"127.0.0.1:{service.port}")
    try:
        yield client
    finally:
        client.close()
        service.stop()


def _input(name: str, array: np.ndarray, binary: bool) -> triton.InferInput:
    tensor = triton.InferInput(
        name, list(array.shape), "FP32" if array.dtype == np.float32 else "FP64"
    )
    tensor.set_data_from_numpy(array, binary_data=binary)
    return tensor


def test_health_and_metadata(client):
    assert client.is_server_live()
    assert client.is_server_ready()
    assert client.is_model_ready("conv2d")
    assert client.is_model_ready("conv2d_backward")
    metadata = client.get_model_metadata("conv2d_backward")
    # In the engine function's order: conv2d_backward(dout, x, w).
    assert [t["name"] for t in metadata["inputs"]] == ["dout", "x", "w"]
    assert client.get_server_metadata()["extensions"] == [
        "binary_tensor_data",
        "model_configuration",
        "statistics",
    ]


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@pytest.mark.parametrize("binary", [True, False], ids=["binary", "json"])
def test_forward(client, dtype, binary):
    rng = np.random.default_rng(2)
    x = rng.standard_normal((2, 4, 9, 9)).astype(dtype)
    w = rng.standard_normal((6, 2, 3, 3)).astype(dtype)
    b = rng.standard_normal(6).astype(dtype)
    outputs = [triton.InferRequestedOutput("out", binary_data=binary)]
    result = client.infer(
        "conv2d",
        [_input("x", x, binary), _input("w", w, binary), _input("b", b, binary)],
        outputs=outputs,
        parameters={"stride": 2, "padding": "1,1", "groups": 2},
    )
    out = result.as_numpy("out")
    assert out.dtype == dtype
    np.testing.assert_array_equal(out, conv2d(x, w, b, stride=2, padding=1, groups=2))


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@pytest.mark.parametrize("binary", [True, False], ids=["binary", "json"])
def test_backward(client, dtype, binary):
    rng = np.random.default_rng(3)
    x = rng.standard_normal((2, 3, 8, 8)).astype(dtype)
    w = rng.standard_normal((5, 3, 2, 2)).astype(dtype)
    dout = rng.standard_normal((2, 5, 8, 8)).astype(dtype)
    # No requested outputs: tritonclient then asks for every output in binary.
    outputs = (
        None
        if binary
        else [triton.InferRequestedOutput(n, binary_data=False) for n in ("dx", "dw", "db")]
    )
    result = client.infer(
        "conv2d_backward",
        [_input("x", x, binary), _input("w", w, binary), _input("dout", dout, binary)],
        outputs=outputs,
        parameters={"padding": "same"},
    )
    for name, want in zip(["dx", "dw", "db"], conv2d_backward(dout, x, w, padding="same")):
        np.testing.assert_array_equal(result.as_numpy(name), want)


def test_errors_reach_the_client(client):
    x, w = np.ones((1, 1, 32, 32), np.float32), np.ones((1, 1, 3, 3), np.float32)
    with pytest.raises(InferenceServerException, match=r"15\.5 is not a whole number"):
        client.infer(
            "conv2d", [_input("x", x, True), _input("w", w, True)], parameters={"stride": 2}
        )
    with pytest.raises(InferenceServerException, match="unknown model"):
        client.get_model_metadata("resnet50")


@pytest.mark.parametrize("binary", [True, False], ids=["binary", "json"])
def test_half_precision_and_one_sample(client, binary):
    """FP16 and BF16 both ways, for one sample without its batch axis."""
    rng = np.random.default_rng(4)
    x = rng.standard_normal((3, 6, 6)).astype(np.float16)
    w = rng.standard_normal((2, 3, 3, 3)).astype(np.float16)
    inputs = [
        triton.InferInput("x", [3, 6, 6], "FP16"),
        triton.InferInput("w", [2, 3, 3, 3], "FP16"),
    ]
    for tensor, array in zip(inputs, (x, w), strict=True):
        tensor.set_data_from_numpy(array, binary_data=binary)
    outputs = [triton.InferRequestedOutput("out", binary_data=binary)]
    result = client.infer("conv2d", inputs, outputs=outputs, parameters={"padding": 1})
    out = result.as_numpy("out")
    assert out.dtype == np.float16 and out.shape == (2, 6, 6)
    np.testing.assert_array_equal(out, conv(x, w, padding=1))
    if not binary:
        return  # tritonclient sends BF16 as binary data only
    # tritonclient carries BF16 as ml_dtypes.bfloat16 arrays too (since r26.06).
    x, w = x.astype(ml_dtypes.bfloat16), w.astype(ml_dtypes.bfloat16)
    inputs = [
        triton.InferInput("x", [3, 6, 6], "BF16"),
        triton.InferInput("w", [2, 3, 3, 3], "BF16"),
    ]
    for tensor, array in zip(inputs, (x, w), strict=True):
        tensor.set_data_from_numpy(array, binary_data=binary)
    result = client.infer("conv2d", inputs, outputs=outputs, parameters={"padding": 1})
    out = result.as_numpy("out")
    assert out.dtype == ml_dtypes.bfloat16
    np.testing.assert_array_equal(out.astype(np.float32), conv(x, w, padding=1).astype(np.float32))
