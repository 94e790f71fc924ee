"""The clients' methods are the table of operations: one per operation, with its parameters."""

from __future__ import annotations

import inspect
import io
import typing
from collections.abc import Iterator

import anyio
import httpx
import numpy as np
import pytest

import convengine as ce
from convengine import OPERATIONS
from convengine.client import AsyncConvClient, ConvClient, Gradients
from convengine.client._wire import DEFAULTS

from ..servers import start_service

CLIENTS = [ConvClient, AsyncConvClient]
CALL_OPTIONS = ("shards", "max_request_bytes", "progress")  # every method's, apart from the table
ENGINE = {
    "forward": ce.conv,
    "backward": ce.conv_backward,
    "conv_transpose": ce.conv_transpose,
    "conv_transpose_backward": ce.conv_transpose_backward,
}
# Where the engine's defaults live: the geometry that parses the hyperparameters.
PARSER = {
    "forward": ce.ConvGeometry.build,
    "backward": ce.ConvGeometry.build,
    "conv_transpose": ce.ConvGeometry.transposed,
    "conv_transpose_backward": ce.ConvGeometry.transposed,
}


@pytest.mark.parametrize("client", CLIENTS, ids=lambda c: c.__name__)
@pytest.mark.parametrize("name", OPERATIONS)
def test_every_operation_is_a_method_with_the_tables_parameters(client, name):
    op = OPERATIONS[name]
    method = getattr(client, name, None)
    assert method is not None, f"{client.__name__} has no method for the operation {name!r}"
    parameters = list(inspect.signature(method).parameters.values())[1:]  # self
    positional = [p for p in parameters if p.kind is p.POSITIONAL_OR_KEYWORD]
    keywords = [p for p in parameters if p.kind is p.KEYWORD_ONLY]
    (hyper,) = [p for p in parameters if p.kind is p.VAR_KEYWORD]
    assert len(positional) + len(keywords) + 1 == len(parameters), "no *args"
    assert tuple(p.name for p in positional) == op.inputs
    for p in positional:
        assert p.default is (None if p.name in op.optional else p.empty), p.name
    assert {p.name for p in keywords} == set(CALL_OPTIONS)
    assert all(p.default is None for p in keywords)
    # The hyperparameters: the engine's typed record, **hyper: Unpack[ConvOptions], whose
    # keys are the table's.
    (record,) = typing.get_args(typing.get_type_hints(method)[hyper.name])
    assert frozenset(record.__optional_keys__) == op.hyperparameters
    hints = typing.get_type_hints(method)
    assert hints["return"] is (np.ndarray if len(op.outputs) == 1 else Gradients)
    if len(op.outputs) > 1:
        assert Gradients._fields == op.outputs


@pytest.mark.parametrize("name", OPERATIONS)
def test_both_clients_have_the_same_signatures(name):
    sync, awaitable = (inspect.signature(getattr(c, name)) for c in CLIENTS)
    assert sync == awaitable
    assert inspect.iscoroutinefunction(getattr(AsyncConvClient, name))
    assert not inspect.iscoroutinefunction(getattr(ConvClient, name))


@pytest.mark.parametrize("name", OPERATIONS)
def test_the_defaults_left_out_are_the_engines(name):
    """A hyperparameter equal to the engine's default is left out of the request (the service
    applies the same default): the client's list of defaults is the engine's."""
    engine = inspect.signature(PARSER[name]).parameters
    for hyperparameter in OPERATIONS[name].hyperparameters:
        assert engine[hyperparameter].default == DEFAULTS[hyperparameter], hyperparameter


def test_no_method_is_made_up_at_lookup():
    for client in CLIENTS:
        assert "__getattr__" not in vars(client)
        public = {n for n in vars(client) if not n.startswith("_")}
        closing = "close" if client is ConvClient else "aclose"
        assert public - set(OPERATIONS) == {"call", "explain", closing}


def _recording(seen: list[httpx.Request]) -> httpx.MockTransport:
    """A replica that answers every operation with the engine, and records each request."""

    def handle(request: httpx.Request) -> httpx.Response:
        seen.append(request)
        if request.url.path == "/limits":
            return httpx.Response(200, json={})
        (op,) = [op for op in OPERATIONS.values() if op.path == request.url.path]
        with np.load(io.BytesIO(request.content)) as sent:
            arrays = [sent.get(name) for name in op.inputs]
        hyper = {k: int(v) for k, v in request.url.params.items()}
        answers = ENGINE[op.name](*arrays, **hyper)
        answers = answers if isinstance(answers, tuple) else (answers,)
        stream = io.BytesIO()
        np.savez(stream, **dict(zip(op.outputs, answers, strict=True)))
        return httpx.Response(200, content=stream.getvalue())

    return httpx.MockTransport(handle)


def test_a_method_sends_only_the_hyperparameters_that_differ_from_the_defaults(rng):
    x, w = rng.standard_normal((2, 2, 7, 7)), rng.standard_normal((3, 2, 3, 3))
    seen: list[httpx.Request] = []
    with ConvClient("http://replica", transport=_recording(seen)) as client:
        out = client.forward(x, w, stride=2, padding=1, groups=1)
        dx, dw, db = grads = client.backward(np.ones_like(out), x, w, stride=2, padding=1)
        plain = client.forward(x, w)
    posts = [dict(r.url.params) for r in seen if r.method == "POST"]
    assert posts == [{"stride": "2", "padding": "1"}] * 2 + [{}]
    np.testing.assert_allclose(out, ce.conv(x, w, stride=2, padding=1), rtol=1e-12)
    np.testing.assert_allclose(plain, ce.conv(x, w), rtol=1e-12)
    assert (
        isinstance(grads, Gradients) and grads.dw is dw and (dx.shape, db.shape) == (x.shape, (3,))
    )


@pytest.fixture(scope="module")
def server(tmp_path_factory) -> Iterator[str]:
    service = start_service(tmp_path_factory.mktemp("server"))
    service.wait_ready(timeout=30)
    yield service.url
    service.stop()


@pytest.mark.parametrize("name", OPERATIONS)
def test_every_method_of_both_clients_answers_as_the_engine(server, name, rng):
    op = OPERATIONS[name]
    x = rng.standard_normal((2, 4, 7, 6))
    transposed = name.startswith("conv_transpose")
    w = rng.standard_normal((4, 3, 3, 2) if transposed else (4, 2, 3, 2))
    hyper = {"stride": 2, "padding": 1, "groups": 1 if transposed else 2}
    out = ENGINE["conv_transpose" if transposed else "forward"](x, w, **hyper)
    inputs = {"x": x, "w": w, "b": rng.standard_normal(out.shape[1]), "dout": out}
    arrays = [inputs[k] for k in op.inputs]
    want = ENGINE[name](*arrays, **hyper)
    with ConvClient(server) as client:
        blocking = getattr(client, name)(*arrays, **hyper)

    async def awaited():
        async with AsyncConvClient(server) as client:
            return await getattr(client, name)(*arrays, **hyper)

    for answer in (blocking, anyio.run(awaited)):
        answers = answer if len(op.outputs) > 1 else (answer,)
        wants = want if len(op.outputs) > 1 else (want,)
        for output, got, expected in zip(op.outputs, answers, wants, strict=True):
            np.testing.assert_allclose(got, expected, rtol=1e-12, atol=1e-12, err_msg=output)


@pytest.mark.parametrize("name", sorted(OPERATIONS))
def test_explain_answers_what_the_engine_plans(name, server):
    """client.explain asks the service's dry run; it agrees with convengine.explain."""
    op = OPERATIONS[name]
    x, w = np.zeros((2, 4, 9, 8), np.float32), (4, 2, 3, 3)
    hyper = {"stride": 2, "padding": (1, 0), "groups": 2}
    if "rounding" in op.hyperparameters:
        hyper["rounding"] = "floor"
    shapes = {"x": x, "w": w}
    if "dout" in op.inputs:
        forward = "forward" if name == "backward" else "conv_transpose"
        shapes["dout"] = ce.explain(forward, x=x, w=w, **hyper).outputs["out"].shape
    with ConvClient(server) as client:
        assert client.explain(name, **shapes, **hyper) == ce.explain(name, **shapes, **hyper)


def test_explain_is_refused_as_the_call_would_be(server):
    with ConvClient(server) as client, pytest.raises(ce.client.ConvServiceError) as raised:
        client.explain("forward", x=(1, 1, 8, 8), w=(1, 1, 3, 3), stride=2)
    assert raised.value.status_code == 422
    assert raised.value.detail[0]["loc"] == ["body", "stride"]
    assert "is not a whole number" in raised.value.detail[0]["msg"]
    with ConvClient(server) as client, pytest.raises(AttributeError, match="no operation"):
        client.explain("fordward", x=(1, 1, 8, 8))


@pytest.mark.anyio
async def test_the_async_client_explains_alike(server):
    async with AsyncConvClient(server) as client:
        explained = await client.explain(
            "forward", x=(1, 3, 8, 8), w=(4, 3, 3, 3), padding=1, dtype="float32"
        )
    assert explained.outputs["out"] == ce.ArraySpec((1, 4, 8, 8), "float32")
