"""The client against the ASGI app: results, errors, and retrying a busy server."""

from __future__ import annotations

import anyio
import numpy as np
import pytest

from app.config import Settings
from convengine import conv2d
from convengine.client import AsyncConvClient, ConvServiceError

from .conftest import serve

pytestmark = pytest.mark.anyio
X, W = np.ones((1, 2, 4, 4)), np.ones((3, 2, 3, 3))


async def test_busy_server_is_retried_after_retry_after():
    async with serve(Settings(max_concurrent=1, max_waiting=0)) as http:
        client = AsyncConvClient("http://convengine", client=http, retries=1)
        gate = http._transport.app.state.gate  # type: ignore[attr-defined]
        release = anyio.Event()

        async def hold():
            async with gate.admit():
                await release.wait()

        async with anyio.create_task_group() as tasks:
            tasks.start_soon(hold)
            await anyio.sleep(0.05)
            with pytest.raises(ConvServiceError) as info:
                await AsyncConvClient("http://convengine", client=http, retries=0).forward(X, W)
            assert info.value.status_code == 503
            tasks.start_soon(_release_soon, release)
            out = await client.forward(X, W, padding=1)  # refused once, then served
        np.testing.assert_array_equal(out, conv2d(X, W, padding=1))


async def _release_soon(event: anyio.Event) -> None:
    await anyio.sleep(0.2)
    event.set()


async def test_client_sends_pairs_and_words():
    async with serve() as http:
        client = AsyncConvClient("http://convengine", client=http)
        x = np.random.default_rng(0).standard_normal((2, 2, 9, 7))
        out = await client.forward(x, W, stride=(2, 1), padding=(1, 0), dilation=(1, 2))
        np.testing.assert_array_equal(
            out, conv2d(x, W, stride=(2, 1), padding=(1, 0), dilation=(1, 2))
        )
        with pytest.raises(ConvServiceError, match="groups=2 must divide the input channels C=1"):
            await client.forward(np.ones((1, 1, 4, 4)), np.ones((2, 1, 1, 1)), groups=2)


async def test_every_operation_is_a_method_and_call_names_it():
    async with serve() as http:
        client = AsyncConvClient("http://convengine", client=http)
        x = np.arange(32, dtype=np.int64).reshape(1, 2, 4, 4)  # integers travel as float64
        out = await client.call("forward", x, W, None, padding=1)
        np.testing.assert_array_equal(out, conv2d(x.astype(np.float64), W, padding=1))
        dout = np.ones_like(out)
        dx, dw, db = await client.backward(dout, x, W, padding=1)
        assert dx.shape == x.shape and dw.shape == W.shape and db.shape == (3,)
        # Methods are explicit: a misspelt one is Python's own AttributeError (and an IDE's
        # warning), a misspelt name given to call() names the operations there are.
        with pytest.raises(AttributeError, match="has no attribute 'fordward'"):
            client.fordward  # type: ignore[attr-defined]  # noqa: B018
        with pytest.raises(AttributeError, match="no operation 'fordward': it has forward, "):
            await client.call("fordward", x, W)
        with pytest.raises(TypeError, match="missing 1 required positional argument: 'w'"):
            await client.forward(x)  # type: ignore[call-arg]
        with pytest.raises(TypeError, match="needs the array 'w'"):
            await client.call("forward", x)
        # Pairs of pairs travel as JSON text.
        hyper = dict(padding=[[3, 2], [0, 1]], stride=2, padding_mode="reflect")
        out = await client.forward(x, W, **hyper)
        np.testing.assert_array_equal(out, conv2d(x.astype(np.float64), W, **hyper))
        with pytest.raises(ConvServiceError) as info:
            await client.forward(x, W, stride=2)
        assert info.value.status_code == 422
        assert 'or send rounding "floor"' in str(info.value)
