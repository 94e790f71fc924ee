"""Generated from ``convengine/client/_async/client.py`` by ``scripts/unasync.py``: do not edit.

Edit the async source, then run ``python scripts/unasync.py``.
"""

from __future__ import annotations

import threading
from collections.abc import Mapping, Sequence
from functools import partial
from time import monotonic
from types import TracebackType
from typing import Any, Unpack, cast

import httpx
import numpy as np
from numpy.typing import ArrayLike

from ..._hyperparameters import ConvOptions, TransposedOptions
from ..._operations import Explanation
from ..._shards import Assembly, plan
from .._concurrency import Shards, sleep
from .._fleet import Endpoint, Fleet, Resolver, backoff, retrying
from .._progress import Bar, Progress
from .._wire import (
    REFUSAL_BYTES,
    BoundedBody,
    Call,
    ConvServiceError,
    Gradients,
    chosen,
    dry_run,
    encoded,
    explanation,
    failure,
    limits,
    named_arrays,
    operation,
    outputs,
    plain,
    result,
)

LIMITS_TIMEOUT = 5.0  # seconds a replica gets to say its limits


def bounded(streamed: httpx.Response, limit: int, deadline: float) -> BoundedBody:
    """An answer's body, read and decoded within ``limit`` bytes and by ``deadline``."""
    if streamed.is_stream_consumed:  # a transport that hands its answers whole, decoded
        body = BoundedBody(httpx.Headers(plain(streamed.headers)), limit, deadline)
        body.feed(streamed.content)
        return body
    body = BoundedBody(streamed.headers, limit, deadline)
    for piece in streamed.iter_raw():
        body.feed(piece)
    return body


class ConvClient:
    """A client of the service and its replicas (see :mod:`convengine.client`).

    ``base_url``: one URL or several (one replica each); ``resolve=True`` also spreads over
    every address a URL's name resolves to (or give a function ``(host, port) -> addresses``).
    ``retries``: tries after the first of a shard that met a transport error, a 502, 503 or
    504. ``concurrency``: shards in flight at once (two per replica by default).
    ``transport``: the httpx transport of every connection pool; ``client``: one httpx client
    to use as the only replica's pool (for tests and tuning). ``api_key``: sent with every
    request; ``compress``: gzip the request bodies and ask for gzipped answers.
    """

    def __init__(
        self,
        base_url: str | Sequence[str],
        *,
        timeout: float = 120.0,
        retries: int = 3,
        client: httpx.Client | None = None,
        concurrency: int | None = None,
        resolve: bool | Resolver = False,
        transport: httpx.BaseTransport | None = None,
        api_key: str | None = None,
        compress: bool = False,
    ) -> None:
        self._fleet = Fleet(base_url, resolve)
        if client is not None and (len(self._fleet.urls) > 1 or resolve):
            raise ValueError("client= serves one replica: give one base URL, no resolve")
        self._timeout, self._retries, self._concurrency = timeout, retries, concurrency
        self._api_key, self._compress = api_key, compress
        self._given, self._transport = client, transport
        self._pools: dict[str, httpx.Client] = {}
        self._lock = threading.Lock()  # shards of the blocking client open pools from threads

    # --- the operations of convengine.OPERATIONS, one method each ------------------------------

    def forward(
        self,
        x: ArrayLike,
        w: ArrayLike,
        b: ArrayLike | None = None,
        *,
        shards: int | None = None,
        max_request_bytes: int | None = None,
        progress: Progress | bool | None = None,
        **hyper: Unpack[ConvOptions],
    ) -> np.ndarray:
        """The convolution of x with w, plus b, on the service: ``convengine.conv``.

        x (N, C, *spatial), w (F, C/groups, *kernel), b (F,) or None -> out (N, F, *out);
        the hyperparameters as :func:`convengine.conv` takes them.
        """
        call = self._planned("forward", (x, w, b), hyper, shards, max_request_bytes)
        return cast(np.ndarray, self._run(call, progress))

    def backward(
        self,
        dout: ArrayLike,
        x: ArrayLike,
        w: ArrayLike,
        *,
        shards: int | None = None,
        max_request_bytes: int | None = None,
        progress: Progress | bool | None = None,
        **hyper: Unpack[ConvOptions],
    ) -> Gradients:
        """Gradients of a loss w.r.t. x, w and b from dout: ``convengine.conv_backward``.

        dout (N, F, *out), x (N, C, *spatial), w (F, C/groups, *kernel) -> dx, dw, db.
        """
        call = self._planned("backward", (dout, x, w), hyper, shards, max_request_bytes)
        return Gradients(*self._run(call, progress))

    def conv_transpose(
        self,
        x: ArrayLike,
        w: ArrayLike,
        b: ArrayLike | None = None,
        *,
        shards: int | None = None,
        max_request_bytes: int | None = None,
        progress: Progress | bool | None = None,
        **hyper: Unpack[TransposedOptions],
    ) -> np.ndarray:
        """The transposed convolution of x with w, plus b: ``convengine.conv_transpose``.

        x (N, C_in, *spatial), w (C_in, C_out/groups, *kernel), b (C_out,) or None
        -> out (N, C_out, *out).
        """
        call = self._planned("conv_transpose", (x, w, b), hyper, shards, max_request_bytes)
        return cast(np.ndarray, self._run(call, progress))

    def conv_transpose_backward(
        self,
        dout: ArrayLike,
        x: ArrayLike,
        w: ArrayLike,
        *,
        shards: int | None = None,
        max_request_bytes: int | None = None,
        progress: Progress | bool | None = None,
        **hyper: Unpack[TransposedOptions],
    ) -> Gradients:
        """Gradients of a loss w.r.t. x, w and b of a transposed convolution, from dout:
        ``convengine.conv_transpose_backward``.
        """
        call = self._planned(
            "conv_transpose_backward", (dout, x, w), hyper, shards, max_request_bytes
        )
        return Gradients(*self._run(call, progress))

    def call(
        self,
        name: str,
        *arrays: ArrayLike | None,
        shards: int | None = None,
        max_request_bytes: int | None = None,
        progress: Progress | bool | None = None,
        **hyperparameters: object,
    ) -> Any:
        """Run the operation ``name`` on ``arrays`` (in the order of its inputs in the table).

        One output comes back as an array, several as a tuple in the operation's order.
        ``client.forward(x, w, b, stride=2)`` is ``client.call("forward", x, w, b, stride=2)``.
        ``shards``: split the batch into at least so many requests; ``max_request_bytes``:
        keep each request's body below this; ``progress``: a function called with (shards
        done, shards) after each, or True for a tqdm bar.
        """
        call = self._planned(name, arrays, hyperparameters, shards, max_request_bytes)
        return self._run(call, progress)

    def explain(
        self, name: str, /, *, dtype: str | None = None, **arguments: object
    ) -> Explanation:
        """What the service would answer and cost for the call ``name`` on inputs of these
        shapes, without sending a number (``POST /explain``): each input by its name, as a
        shape or anything with ``shape`` (and ``dtype``), the hyperparameters as keywords.
        Refused as the call would be (:class:`ConvServiceError` with the service's detail).
        """
        document = dry_run(operation(name), dtype, arguments)
        deadline = monotonic() + self._timeout
        self._survey()
        endpoint, _ = self._fleet.acquire(None)
        try:
            with self._pool(endpoint).stream(
                "POST",
                "/explain",
                json=document,
                extensions=endpoint.extensions,
                timeout=self._timeout,
                headers=encoded({"headers": {}}, self._api_key, False)["headers"],
            ) as streamed:
                body = bounded(streamed, REFUSAL_BYTES, deadline)
                answer = httpx.Response(streamed.status_code, content=body.finish())
        except httpx.TransportError as exc:
            self._fleet.release(endpoint, exc)
            raise failure("transport", f"{type(exc).__name__}: {exc}") from exc
        self._fleet.release(endpoint, answer)
        return explanation(answer)

    # --- one call: plan, send the shards, assemble ---------------------------------------------

    def _planned(
        self,
        name: str,
        arrays: tuple[ArrayLike | None, ...],
        hyperparameters: Mapping[str, object],
        shards: int | None,
        max_request_bytes: int | None,
    ) -> Call:
        """The call's shards, cut to what every replica accepts (their limits read first)."""
        op = operation(name)
        deadline = monotonic() + self._timeout
        self._survey()
        named, hyper = named_arrays(op, arrays), chosen(hyperparameters)
        parts = plan(op, named, hyper, self._fleet.limits(), shards, max_request_bytes)
        return Call(op, named, hyper, parts, deadline)

    def _run(self, call: Call, progress: Progress | bool | None) -> Any:
        bar = Bar(progress, len(call.parts), call.operation.name)
        assembly = Assembly(call.operation, len(call.parts))

        def done(index: int, answer: dict[str, np.ndarray]) -> None:
            assembly.add(index, answer)
            bar.step()

        shards = Shards(self._fleet.width(len(call.parts), self._concurrency))
        try:
            shards.run(len(call.parts), partial(self._send, call, shards), done)
        finally:
            bar.close()
        return outputs(call.operation, assembly.result())

    def _send(self, call: Call, shards: Shards, index: int) -> dict[str, np.ndarray]:
        """One shard, tried on one replica after another until answered, out of retries or
        out of time."""
        request, expected = call.request(index)
        request = encoded(request, self._api_key, self._compress)
        last = None
        for attempt in range(self._retries + 1):
            shards.check()
            endpoint, wait = self._fleet.acquire(last)
            outcome = self._attempt(endpoint, wait, call, request, expected.bound)
            if not retrying(outcome, attempt, self._retries):
                break
            last = endpoint
            sleep(min(backoff(attempt), call.remaining()))
        if isinstance(outcome, Exception):
            raise failure("transport", f"{type(outcome).__name__}: {outcome}") from outcome
        return result(outcome, expected)

    def _attempt(
        self, endpoint: Endpoint, wait: float, call: Call, request: dict[str, Any], bound: int
    ) -> httpx.Response | Exception:
        """One try of one shard on ``endpoint``: its answer, read within ``bound`` bytes and
        the call's time, or the transport error."""
        try:
            sleep(min(wait, call.remaining()))
            pool = self._pool(endpoint)
            with pool.stream(
                "POST",
                call.operation.path,
                extensions=endpoint.extensions,
                timeout=call.remaining(),
                **request,
            ) as streamed:
                limit = bound if streamed.status_code == 200 else REFUSAL_BYTES
                body = bounded(streamed, limit, call.deadline)
                outcome: httpx.Response | Exception = httpx.Response(
                    streamed.status_code, headers=plain(streamed.headers), content=body.finish()
                )
        except httpx.TransportError as exc:
            outcome = exc
            if isinstance(exc, httpx.TimeoutException) and call.deadline <= monotonic():
                self._fleet.release(endpoint, None)
                raise failure("timeout", "no answer within the call's timeout") from exc
        except BaseException:
            self._fleet.release(endpoint, None)
            raise
        self._fleet.release(endpoint, outcome)
        return outcome

    # --- replicas and their connection pools --------------------------------------------------

    def _pool(self, endpoint: Endpoint) -> httpx.Client:
        if self._given is not None:
            return self._given
        with self._lock:
            if endpoint.url not in self._pools:
                self._pools[endpoint.url] = httpx.Client(
                    base_url=endpoint.url,
                    timeout=self._timeout,
                    headers=endpoint.headers,
                    transport=self._transport,
                )
            return self._pools[endpoint.url]

    def _survey(self) -> None:
        """Resolve the replicas if it is time, and read the limits of those not read yet."""
        _, gone = self._fleet.refresh()
        for endpoint in gone:
            pool = self._pools.pop(endpoint.url, None)
            if pool is not None:
                pool.close()
        key = {} if self._api_key is None else {"authorization": f"Bearer {self._api_key}"}
        for endpoint in self._fleet.unread():
            try:
                with self._pool(endpoint).stream(
                    "GET",
                    "/limits",
                    extensions=endpoint.extensions,
                    timeout=LIMITS_TIMEOUT,
                    headers=key,
                ) as streamed:
                    deadline = monotonic() + LIMITS_TIMEOUT
                    body = bounded(streamed, REFUSAL_BYTES, deadline)
                    answer = httpx.Response(streamed.status_code, content=body.finish())
                endpoint.limits = limits(answer)
            except (httpx.TransportError, ConvServiceError):
                self._fleet.unreachable(endpoint)  # read when it answers again

    def close(self) -> None:
        if self._given is not None:
            self._given.close()
        for pool in self._pools.values():
            pool.close()
        self._pools.clear()

    def __enter__(self) -> ConvClient:
        return self

    def __exit__(
        self, kind: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.close()
