"""The inference protocol over gRPC: NVIDIA's tritonclient.grpc against a real `python -m app`,
beside tritonclient.http against the same process: the same answers, bit for bit."""

from __future__ import annotations

import json
import re
import threading
import time
from collections.abc import Iterator

import grpc
import httpx
import numpy as np
import pytest
import tritonclient.grpc as tgrpc
import tritonclient.http as thttp
from google.protobuf import json_format
from grpc_health.v1 import health_pb2, health_pb2_grpc
from tritonclient.grpc import service_pb2, service_pb2_grpc
from tritonclient.utils import InferenceServerException

from convengine import conv, conv_backward, conv_transpose, conv_transpose_backward

from ..servers import Service, start_service

# model: (forward or backward run locally, x shape, w shape, hyperparameters)
FORWARD = {
    "conv1d": (conv, (2, 3, 11), (4, 3, 3), {"stride": 2, "padding": "1"}),
    "conv2d": (conv, (2, 4, 9, 9), (6, 2, 3, 3), {"stride": 2, "padding": "1,1", "groups": 2}),
    "conv3d": (conv, (1, 2, 5, 4, 5), (3, 2, 3, 2, 3), {"padding": "1,0,1", "stride": "2,1,2"}),
    "conv_transpose1d": (conv_transpose, (2, 3, 5), (3, 2, 4), {"stride": 2, "padding": 1}),
    "conv_transpose2d": (conv_transpose, (1, 4, 3, 3), (4, 2, 4, 4), {"stride": 2, "groups": 2}),
    "conv_transpose3d": (conv_transpose, (1, 2, 2, 3, 2), (2, 3, 2, 2, 3), {"stride": 2}),
}
BACKWARD = {conv: conv_backward, conv_transpose: conv_transpose_backward}


def _engine_hyper(hyper: dict[str, object]) -> dict[str, object]:
    """The text forms sent as parameters, as the library takes them."""

    def value(text: object) -> object:
        if isinstance(text, str) and text[0].isdigit():
            parts = tuple(int(part) for part in text.split(","))
            return parts[0] if len(parts) == 1 else parts
        return text

    return {name: value(text) for name, text in hyper.items()}


def _case(model: str, dtype: type = np.float32) -> tuple[dict[str, np.ndarray], dict, dict]:
    """Inputs, parameters and the engine's outputs of ``model`` (a forward or a _backward)."""
    forward, x_shape, w_shape, hyper = FORWARD[model.removesuffix("_backward")]
    rng = np.random.default_rng(len(model))
    x, w = rng.standard_normal(x_shape).astype(dtype), rng.standard_normal(w_shape).astype(dtype)
    engine = _engine_hyper(hyper)
    out = forward(x, w, **engine)
    if not model.endswith("_backward"):
        channels = out.shape[1]
        b = rng.standard_normal(channels).astype(dtype)
        return {"x": x, "w": w, "b": b}, hyper, {"out": forward(x, w, b, **engine)}
    dout = rng.standard_normal(out.shape).astype(dtype)
    dx, dw, db = BACKWARD[forward](dout, x, w, **engine)
    return {"dout": dout, "x": x, "w": w}, hyper, {"dx": dx, "dw": dw, "db": db}


MODELS = [name for forward in FORWARD for name in (forward, f"{forward}_backward")]


@pytest.fixture(scope="module")
def service(tmp_path_factory) -> Iterator[Service]:
    service = start_service(tmp_path_factory.mktemp("grpc"), max_body_bytes=str(64 << 20))
    service.wait_ready()
    try:
        yield service
    finally:
        service.stop()


@pytest.fixture(scope="module")
def over_grpc(service) -> Iterator[tgrpc.InferenceServerClient]:
    client = tgrpc.InferenceServerClient(service.grpc_target)
    yield client
    client.close()


@pytest.fixture(scope="module")
def over_http(service) -> Iterator[thttp.InferenceServerClient]:
    client = thttp.InferenceServerClient(f"127.0.0.1:{service.port}")
    yield client
    client.close()


def _datatype(array: np.ndarray) -> str:
    return "FP32" if array.dtype == np.float32 else "FP64"


def _infer(client, model, arrays, hyper, transport):
    inputs = []
    for name, array in arrays.items():
        tensor = transport.InferInput(name, list(array.shape), _datatype(array))
        tensor.set_data_from_numpy(array)
        inputs.append(tensor)
    return client.infer(model, inputs, parameters=hyper)


@pytest.mark.parametrize("dtype", [np.float32, np.float64], ids=["FP32", "FP64"])
@pytest.mark.parametrize("model", MODELS)
def test_every_model_answers_the_same_over_both_transports(over_grpc, over_http, model, dtype):
    arrays, hyper, expected = _case(model, dtype)
    by_grpc = _infer(over_grpc, model, arrays, hyper, tgrpc)
    by_http = _infer(over_http, model, arrays, hyper, thttp)
    for name, want in expected.items():
        got = by_grpc.as_numpy(name)
        assert got.dtype == dtype and got.shape == want.shape
        np.testing.assert_array_equal(got, by_http.as_numpy(name))  # bit for bit
        np.testing.assert_allclose(got, want, rtol=1e-4 if dtype == np.float32 else 1e-12)


def test_a_12_mb_tensor(over_grpc, over_http):
    rng = np.random.default_rng(12)
    x = rng.standard_normal((32, 32, 56, 56)).astype(np.float32)  # 12.8 MB
    w = rng.standard_normal((4, 32, 3, 3)).astype(np.float32)
    assert x.nbytes > 12e6
    arrays, hyper = {"x": x, "w": w}, {"padding": 1}
    out = _infer(over_grpc, "conv2d", arrays, hyper, tgrpc).as_numpy("out")
    np.testing.assert_array_equal(
        out, _infer(over_http, "conv2d", arrays, hyper, thttp).as_numpy("out")
    )
    np.testing.assert_allclose(out, conv(x, w, padding=1), rtol=1e-4, atol=1e-4)


def test_typed_contents_give_what_raw_bytes_give(service):
    """fp32_contents and fp64_contents, as a client other than tritonclient may send them."""
    x = np.arange(2 * 3 * 5 * 5, dtype=np.float64).reshape(2, 3, 5, 5) / 7
    w = np.linspace(-1, 1, 4 * 3 * 3 * 3).reshape(4, 3, 3, 3)
    with grpc.insecure_channel(service.grpc_target) as channel:
        stub = service_pb2_grpc.GRPCInferenceServiceStub(channel)
        for datatype, field, dtype in [
            ("FP32", "fp32_contents", np.float32),
            ("FP64", "fp64_contents", np.float64),
        ]:
            request = service_pb2.ModelInferRequest(model_name="conv2d", id="typed-1")
            for name, array in {"x": x.astype(dtype), "w": w.astype(dtype)}.items():
                tensor = request.inputs.add(name=name, datatype=datatype, shape=array.shape)
                getattr(tensor.contents, field).extend(array.ravel().tolist())
            request.parameters["padding"].string_param = "same"
            response = stub.ModelInfer(request)
            assert response.id == "typed-1" and response.outputs[0].datatype == datatype
            out = np.frombuffer(response.raw_output_contents[0], dtype=dtype)
            want = conv(x.astype(dtype), w.astype(dtype), padding="same")
            np.testing.assert_array_equal(out.reshape(response.outputs[0].shape), want)


def _error(call) -> InferenceServerException:
    with pytest.raises(InferenceServerException) as caught:
        call()
    return caught.value


def test_bad_input_is_invalid_argument_naming_the_shapes_and_the_server_keeps_serving(
    over_grpc, over_http
):
    arrays = {
        "x": np.ones((1, 3, 8, 8), np.float32),
        "w": np.ones((4, 2, 3, 3), np.float32),  # 2 channels for x's 3
    }
    by_grpc = _error(lambda: _infer(over_grpc, "conv2d", arrays, {}, tgrpc))
    by_http = _error(lambda: _infer(over_http, "conv2d", arrays, {}, thttp))
    assert by_grpc.status() == "StatusCode.INVALID_ARGUMENT"
    assert by_http.status() == "400"
    assert by_grpc.message() == by_http.message()  # the same validation, the same words
    assert "3 input channels" in by_grpc.message() and "got 2" in by_grpc.message()
    arrays["x"] = np.ones((3, 8), np.float32)  # neither a batch nor one sample of planes
    wrong_rank = _error(lambda: _infer(over_grpc, "conv2d", arrays, {}, tgrpc))
    assert wrong_rank.status() == "StatusCode.INVALID_ARGUMENT"
    assert "input x must be 4-D or 3-D" in wrong_rank.message()
    assert "[3, 8]" in wrong_rank.message()
    arrays["x"] = np.ones((1, 3, 8, 8), np.float32)
    # And it goes on serving.
    arrays["w"] = np.ones((4, 3, 3, 3), np.float32)
    assert _infer(over_grpc, "conv2d", arrays, {}, tgrpc).as_numpy("out").shape == (1, 4, 6, 6)


@pytest.mark.parametrize(
    "hyper, pattern",
    [
        ({"stride": 2, "padding": 0}, r"not a whole number"),
        ({"kernel": 3}, r"unknown parameter 'kernel'"),
    ],
)
def test_hyperparameter_errors_have_rest_s_messages(over_grpc, over_http, hyper, pattern):
    arrays = {"x": np.ones((1, 1, 32, 32), np.float32), "w": np.ones((1, 1, 3, 3), np.float32)}
    by_grpc = _error(lambda: _infer(over_grpc, "conv2d", arrays, hyper, tgrpc))
    by_http = _error(lambda: _infer(over_http, "conv2d", arrays, hyper, thttp))
    assert by_grpc.status() == "StatusCode.INVALID_ARGUMENT"
    assert re.search(pattern, by_grpc.message()) and by_grpc.message() == by_http.message()


def test_wire_errors_name_what_is_wrong(service):
    with grpc.insecure_channel(service.grpc_target) as channel:
        stub = service_pb2_grpc.GRPCInferenceServiceStub(channel)
        request = service_pb2.ModelInferRequest(model_name="conv2d")
        request.inputs.add(name="x", datatype="FP32", shape=[1, 1, 4, 4])
        request.inputs.add(name="w", datatype="FP32", shape=[1, 1, 2, 2])
        request.raw_input_contents.extend([bytes(64), bytes(12)])
        with pytest.raises(grpc.RpcError) as caught:
            stub.ModelInfer(request)
        assert caught.value.code() == grpc.StatusCode.INVALID_ARGUMENT
        assert caught.value.details() == (
            "input w: raw_input_contents[1] holds 12 bytes but shape [1, 1, 2, 2] of FP32 needs 16"
        )
        request.model_name = "resnet50"
        with pytest.raises(grpc.RpcError) as caught:
            stub.ModelInfer(request)
        assert caught.value.code() == grpc.StatusCode.NOT_FOUND
        assert "unknown model 'resnet50'" in caught.value.details()
        with pytest.raises(grpc.RpcError) as caught:  # not a ModelInferRequest at all
            channel.unary_unary(
                "/inference.GRPCInferenceService/ModelInfer",
                request_serializer=lambda raw: raw,
                response_deserializer=lambda raw: raw,
            )(b"\xff\xff\xff")
        assert caught.value.code() == grpc.StatusCode.INVALID_ARGUMENT
        assert "cannot be parsed" in caught.value.details()


def test_a_message_over_the_body_limit_is_resource_exhausted(over_grpc):
    x = np.zeros((1, 1, 4200, 4200), np.float32)  # 70 MB: over the service's 64 MiB
    error = _error(
        lambda: _infer(
            over_grpc, "conv2d", {"x": x, "w": np.ones((1, 1, 1, 1), np.float32)}, {}, tgrpc
        )
    )
    assert error.status() == "StatusCode.RESOURCE_EXHAUSTED"
    assert over_grpc.is_server_ready()


def _normalised(document):
    """protobuf's JSON writes 64-bit integers as strings: numbers again, to compare."""
    if isinstance(document, dict):
        return {key: _normalised(value) for key, value in document.items()}
    if isinstance(document, list):
        return [_normalised(value) for value in document]
    if isinstance(document, str) and re.fullmatch(r"-?[0-9]+", document):
        return int(document)
    return document


def test_repository_index_and_config_are_the_same_over_both_transports(over_grpc, over_http):
    index = over_grpc.get_model_repository_index(as_json=True)["models"]
    assert [entry["name"] for entry in index] == [
        e["name"] for e in over_http.get_model_repository_index()
    ]
    assert all(entry["state"] == "READY" for entry in index)
    assert {entry["name"] for entry in index} >= set(MODELS)
    for model in ("conv2d", "conv3d_backward", "conv_transpose1d"):
        by_grpc = over_grpc.get_model_config(model, as_json=True)["config"]
        by_http = over_http.get_model_config(model)
        assert _normalised(by_grpc) == by_http
    config = over_http.get_model_config("conv2d")
    assert [(t["name"], len(t["dims"]), t.get("optional", False)) for t in config["input"]] == [
        ("x", 4, False),
        ("w", 4, False),
        ("b", 1, True),
    ]
    assert "stride" in config["parameters"] and "output_padding" not in config["parameters"]
    for transport, client in (("404", over_http), ("StatusCode.NOT_FOUND", over_grpc)):
        assert _error(lambda c=client: c.get_model_config("resnet50")).status() == transport


def test_statistics_count_calls_over_both_transports_and_agree_with_the_metrics(
    service, over_grpc, over_http
):
    def success(stats):
        return int(stats["model_stats"][0]["inference_stats"]["success"].get("count", 0))

    before = success(over_http.get_inference_statistics("conv1d_backward"))
    arrays, hyper, _ = _case("conv1d_backward")
    _infer(over_grpc, "conv1d_backward", arrays, hyper, tgrpc)
    _infer(over_http, "conv1d_backward", arrays, hyper, thttp)
    by_http = over_http.get_inference_statistics("conv1d_backward")
    by_grpc = over_grpc.get_inference_statistics("conv1d_backward", as_json=True)
    assert success(by_http) == success(by_grpc) == before + 2
    stats = by_http["model_stats"][0]
    phases = stats["inference_stats"]
    assert stats["inference_count"] == stats["execution_count"] == before + 2
    assert all(
        phases[p]["count"] == before + 2 and phases[p]["ns"] > 0
        for p in ("queue", "compute_input", "compute_infer", "compute_output")
    )
    assert stats["last_inference"] > (time.time() - 60) * 1000
    every = over_grpc.get_inference_statistics(as_json=True)["model_stats"]
    assert {entry["name"] for entry in every} >= set(MODELS)
    every = over_http.get_inference_statistics()["model_stats"]  # GET /v2/models/stats
    assert {entry["name"] for entry in every} >= set(MODELS)
    metrics = _get(service, "/metrics")
    count = re.search(
        r'convengine_model_seconds_count\{model="conv1d_backward",phase="success"\} ([0-9.e+]+)',
        metrics,
    )
    assert count and float(count.group(1)) == success(
        over_http.get_inference_statistics("conv1d_backward")
    )
    assert (
        _error(lambda: over_grpc.get_inference_statistics("resnet50")).status()
        == "StatusCode.NOT_FOUND"
    )


def _get(service: Service, path: str) -> str:
    return httpx.get(f"{service.url}{path}", timeout=10).text


def test_health_service_and_the_protocol_s_own_probes(service, over_grpc):
    with grpc.insecure_channel(service.grpc_target) as channel:
        health = health_pb2_grpc.HealthStub(channel)
        serving = health_pb2.HealthCheckResponse.SERVING
        assert health.Check(health_pb2.HealthCheckRequest()).status == serving
        request = health_pb2.HealthCheckRequest(service="inference.GRPCInferenceService")
        assert health.Check(request).status == serving
        with pytest.raises(grpc.RpcError) as caught:
            health.Check(health_pb2.HealthCheckRequest(service="nothing.Here"))
        assert caught.value.code() == grpc.StatusCode.NOT_FOUND
    assert over_grpc.is_server_live() and over_grpc.is_server_ready()
    assert over_grpc.is_model_ready("conv_transpose3d_backward")
    metadata = json_format.MessageToDict(over_grpc.get_model_metadata("conv2d_backward"))
    assert [t["name"] for t in metadata["inputs"]] == ["dout", "x", "w"]


def test_request_ids_are_echoed_and_logged(service, over_grpc):
    with grpc.insecure_channel(service.grpc_target) as channel:
        call = channel.unary_unary(
            "/inference.GRPCInferenceService/ServerMetadata",
            request_serializer=service_pb2.ServerMetadataRequest.SerializeToString,
            response_deserializer=service_pb2.ServerMetadataResponse.FromString,
        )
        response, state = call.with_call(
            service_pb2.ServerMetadataRequest(), metadata=[("x-request-id", "grpc-trace-42")]
        )
        assert response.name == "convengine"
        initial = dict(state.initial_metadata())
        assert initial["x-request-id"] == "grpc-trace-42" and initial["x-replica"]
    deadline = time.monotonic() + 5
    while "grpc-trace-42" not in service.log() and time.monotonic() < deadline:
        time.sleep(0.05)
    line = next(json.loads(text) for text in service.log().splitlines() if "grpc-trace-42" in text)
    assert line["method"] == "GRPC" and line["status"] == "OK"
    assert line["route"] == "/inference.GRPCInferenceService/ServerMetadata"


def test_keys_in_metadata(tmp_path):
    keys = tmp_path / "keys"
    keys.write_text("grpc-key-0123\n")
    service = start_service(tmp_path, api_keys_file=str(keys))
    try:
        service.wait_ready()
        client = tgrpc.InferenceServerClient(service.grpc_target)
        arrays = {"x": np.ones((1, 1, 4, 4), np.float32), "w": np.ones((1, 1, 2, 2), np.float32)}
        assert client.is_server_live() and client.is_server_ready()  # probes: no key
        missing = _error(lambda: client.get_server_metadata())
        assert (
            missing.status() == "StatusCode.UNAUTHENTICATED"
            and "needs an API key" in missing.message()
        )
        wrong = _error(lambda: client.get_server_metadata(headers={"authorization": "Bearer nope"}))
        assert wrong.status() == "StatusCode.UNAUTHENTICATED" and "not known" in wrong.message()
        good = {"authorization": "Bearer grpc-key-0123"}
        inputs = []
        for name, array in arrays.items():
            tensor = tgrpc.InferInput(name, list(array.shape), "FP32")
            tensor.set_data_from_numpy(array)
            inputs.append(tensor)
        out = client.infer("conv2d", inputs, headers=good).as_numpy("out")
        np.testing.assert_array_equal(out, np.full((1, 1, 3, 3), 4, np.float32))
        assert (
            client.get_server_metadata(headers={"x-api-key": "grpc-key-0123"}).name == "convengine"
        )
        with grpc.insecure_channel(service.grpc_target) as channel:
            health = health_pb2_grpc.HealthStub(channel)
            assert health.Check(health_pb2.HealthCheckRequest()).status == 1  # SERVING, no key
        client.close()
    finally:
        log = service.stop()
    assert "grpc-key-0123" not in log  # keys are named by their id only


def test_shutdown_drains_a_call_in_flight(tmp_path):
    service = start_service(tmp_path, shutdown_timeout="30")
    service.wait_ready()
    rng = np.random.default_rng(5)
    x = rng.standard_normal((8, 64, 64, 64)).astype(np.float32)
    w = rng.standard_normal((64, 64, 5, 5)).astype(np.float32)  # about 14 GFLOP: seconds
    outcome: dict[str, object] = {}

    def call() -> None:
        client = tgrpc.InferenceServerClient(service.grpc_target)
        try:
            outcome["out"] = _infer(
                client, "conv2d", {"x": x, "w": w}, {"padding": 2}, tgrpc
            ).as_numpy("out")
        except Exception as exc:  # reported below
            outcome["error"] = exc
        finally:
            client.close()

    caller = threading.Thread(target=call)
    caller.start()
    deadline = time.monotonic() + 20
    while "convengine_computations_in_flight 1.0" not in _get(service, "/metrics"):
        assert time.monotonic() < deadline, "the call never started computing"
        time.sleep(0.02)
    log = service.stop(timeout=60)  # SIGTERM while it computes: a clean exit, asserted
    caller.join(timeout=60)
    assert "error" not in outcome, outcome.get("error")
    assert np.asarray(outcome["out"]).shape == (8, 64, 64, 64)
    assert "ModelInfer" in log and '"status":"OK"' in log


def test_busy_is_unavailable_with_retry_information(tmp_path):
    service = start_service(tmp_path, max_concurrent="1", max_waiting="1")
    rng = np.random.default_rng(6)
    # About 14 GFLOP each: seconds, so that both are still in when the third call comes.
    x = rng.standard_normal((8, 64, 96, 96)).astype(np.float32)
    w = rng.standard_normal((64, 64, 5, 5)).astype(np.float32)

    def call() -> None:
        client = tgrpc.InferenceServerClient(service.grpc_target)
        _infer(client, "conv2d", {"x": x, "w": w}, {}, tgrpc)
        client.close()

    callers = [threading.Thread(target=call) for _ in range(2)]  # one computes, one waits
    try:
        service.wait_ready()
        for caller in callers:
            caller.start()
        deadline = time.monotonic() + 30
        while "convengine_computations_admitted 2.0" not in _get(service, "/metrics"):
            assert time.monotonic() < deadline, "the first calls were never admitted"
            time.sleep(0.02)
        request = service_pb2.ModelInferRequest(model_name="conv2d")
        with grpc.insecure_channel(service.grpc_target) as channel:
            stub = service_pb2_grpc.GRPCInferenceServiceStub(channel)
            with pytest.raises(grpc.RpcError) as caught:
                stub.ModelInfer(request, timeout=30)
        assert caught.value.code() == grpc.StatusCode.UNAVAILABLE
        assert "retry shortly" in caught.value.details()
        assert ("retry-after", "1") in tuple(caught.value.trailing_metadata())
    finally:
        for caller in callers:
            caller.join(timeout=120)
        service.stop()
