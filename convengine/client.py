"""A small HTTP client for the service, sync and async, speaking .npz on the wire.

    >>> with ConvClient("http://127.0.0.1:8000") as client:
    ...     out = client.forward(x, w, b, stride=2, padding=1)
    ...     dx, dw, db = client.backward(dout, x, w, stride=2, padding=1)

Every operation of :data:`convengine.OPERATIONS` is a method, its arrays positional in the
engine function's order and its hyperparameters as keywords. It needs only httpx and NumPy
(``pip install convengine[client]``). Any other refusal than a 503 raises
:class:`ConvServiceError` with the server's ``detail``.

One call, many replicas: the client takes one base URL or several (and with ``resolve=True``
every address a name resolves to, such as a Kubernetes headless Service's pods). A call whose
request would exceed what the service accepts (its ``GET /limits``, read once per replica),
or that is given ``shards=`` or ``max_request_bytes=``, is split along the batch into shards
sent concurrently (at most ``concurrency`` at once, one connection pool per replica, each
shard to the least busy replica). Per-sample outputs are concatenated in order and batch sums
(``dw``, ``db``) added in float64 in shard order (:mod:`convengine._shards`), so the answer is
the same, bit for bit, whatever order the shards finish in and however many replicas there
are. A shard that fails on a transport error, a 502, 503 or 504 is retried (``retries``
times, on another replica if there is one, after a backoff, or the 503's Retry-After when
there is no other); any other refusal fails the whole call at once.

``api_key=`` sends a key (``Authorization: Bearer``) with every request, ``GET /limits``
included; ``compress=True`` gzips the request bodies and asks for gzipped answers (off by
default: ``.npz`` of dense arrays shrinks by a few percent only).
"""

from __future__ import annotations

import gzip
import io
import json
import socket
import threading
import time
from collections.abc import Callable, Mapping, Sequence
from concurrent.futures import ThreadPoolExecutor, as_completed
from dataclasses import dataclass
from functools import partial
from types import TracebackType
from typing import Any

import anyio
import httpx
import numpy as np
from numpy.typing import ArrayLike

from ._operations import OPERATIONS, Operation
from ._shards import Assembly, Limits, plan, shard_arrays
from .npy_header import load_npz

__all__ = ["AsyncConvClient", "ConvClient", "ConvServiceError"]

NPZ = "application/x-npz"
RETRIED = frozenset({502, 503, 504})
BACKOFF = 0.05  # seconds before the first retry; doubled each time, up to BACKOFF_CAP
BACKOFF_CAP = 2.0
RETRY_AFTER_CAP = 30.0
RESOLVE_EVERY = 30.0  # seconds between look-ups of a name's addresses
LIMITS_TIMEOUT = 5.0  # seconds a replica gets to say its limits

Progress = Callable[[int, int], None]
Resolver = Callable[[str, int], Sequence[str]]


class ConvServiceError(Exception):
    """The service refused a request; ``detail`` is its list of ``{loc, msg, type}``."""

    def __init__(self, status_code: int, detail: list[dict[str, Any]]) -> None:
        messages = "; ".join(str(item.get("msg", item)) for item in detail)
        super().__init__(f"HTTP {status_code}: {messages}")
        self.status_code = status_code
        self.detail = detail


def _param(value: object) -> str:
    """A hyperparameter as the service reads it in the query: a word as is, else JSON text."""
    if isinstance(value, str):
        return value
    if isinstance(value, np.integer):
        value = int(value)
    if isinstance(value, tuple | list | np.ndarray):
        return json.dumps(np.asarray(value).tolist())
    return json.dumps(value)


def _as_sent(value: ArrayLike) -> np.ndarray:
    # Integer arrays travel as float64, as the service reads integer JSON lists.
    array = np.asarray(value)
    return array.astype(np.float64) if array.dtype.kind in "iu" else array


def _arrays(operation: Operation, args: tuple[ArrayLike | None, ...]) -> dict[str, np.ndarray]:
    """The call's arrays by name, checked for number and presence, as they will be sent."""
    if len(args) > len(operation.inputs):
        raise TypeError(
            f"{operation.name}() takes {len(operation.inputs)} arrays "
            f"({', '.join(operation.inputs)}), got {len(args)}"
        )
    named = dict(zip(operation.inputs, args, strict=False))
    missing = [name for name in operation.required if named.get(name) is None]
    if missing:
        raise TypeError(f"{operation.name}() needs the array {missing[0]!r}")
    return {k: _as_sent(v) for k, v in named.items() if v is not None}


def _request(arrays: Mapping[str, np.ndarray], hyper: Mapping[str, object]) -> dict[str, Any]:
    """The keyword arguments of one POST: arrays as one .npz, hyperparameters in the query."""
    stream = io.BytesIO()
    np.savez(stream, allow_pickle=False, **arrays)
    return {
        "content": stream.getvalue(),
        "params": {key: _param(value) for key, value in hyper.items()},
        "headers": {"content-type": NPZ, "accept": NPZ},
    }


def _outputs(operation: Operation, result: dict[str, np.ndarray]) -> Any:
    values = tuple(result[name] for name in operation.outputs)
    return values[0] if len(values) == 1 else values


def _operation(name: str) -> Operation:
    try:
        return OPERATIONS[name]
    except KeyError:
        raise AttributeError(
            f"the service has no operation {name!r}: it has {', '.join(OPERATIONS)}"
        ) from None


def _result(response: httpx.Response) -> dict[str, np.ndarray]:
    if response.status_code != 200:
        try:
            detail = response.json()["detail"]
        except (ValueError, KeyError, TypeError):
            detail = [{"loc": [], "msg": response.text[:500], "type": "http"}]
        raise ConvServiceError(response.status_code, detail)
    # Not np.load: shards are read from several threads, and its header parser is not
    # thread-safe on CPython before 3.11.8 (gh-106905).
    return {name: _typed(array) for name, array in load_npz(response.content).items()}


def _typed(array: np.ndarray) -> np.ndarray:
    """A bfloat16 answer as bfloat16: .npy has no name for it, and the service writes it as
    np.save does, two bytes of "<V2" (ml_dtypes comes with the service; without it the
    bytes stay as they are)."""
    if array.dtype.kind != "V" or array.dtype.itemsize != 2 or array.dtype.names:
        return array
    try:
        import ml_dtypes
    except ImportError:  # pragma: no cover - a client installed without it
        return array
    return array.view(ml_dtypes.bfloat16)


def _retry_after(response: httpx.Response) -> float:
    try:
        return min(float(response.headers.get("retry-after", "1")), RETRY_AFTER_CAP)
    except ValueError:
        return 1.0


def _limits(response: httpx.Response) -> Limits:
    """A replica's limits from its answer to ``GET /limits`` (none known from an older one)."""
    if response.status_code != 200:
        return Limits()
    try:
        return Limits.from_json(response.json())
    except (ValueError, TypeError):
        return Limits()


def resolve_addresses(host: str, port: int) -> list[str]:
    """Every address ``host`` resolves to, in the resolver's order, each once."""
    infos = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM)
    return list(dict.fromkeys(str(info[4][0]) for info in infos))


# --- replicas ----------------------------------------------------------------------------------


@dataclass
class _Endpoint:
    """One replica: where connections go, and what the client knows of it."""

    url: str  # an address when resolved from a name
    host: str | None = None  # then the Host header (and TLS name) of the name
    limits: Limits | None = None  # once read
    in_flight: int = 0
    failures: int = 0  # consecutive
    resting_until: float = 0.0  # after a failure, or a 503's Retry-After

    @property
    def extensions(self) -> dict[str, Any]:
        return {"sni_hostname": self.host.split(":")[0]} if self.host else {}


def _expand(url: str, resolver: Resolver | None) -> list[_Endpoint]:
    """``url`` as one endpoint, or one per address its name resolves to (Host kept)."""
    if resolver is None:
        return [_Endpoint(url)]
    parsed = httpx.URL(url)
    port = parsed.port or (443 if parsed.scheme == "https" else 80)
    return [
        _Endpoint(str(parsed.copy_with(host=address, port=port)), parsed.netloc.decode("ascii"))
        for address in resolver(parsed.host, port)
    ]


class _Fleet:
    """The replicas of a client, and which one a shard goes to next (thread-safe)."""

    def __init__(self, urls: Sequence[str], resolver: Resolver | None) -> None:
        self.urls, self.resolver = list(urls), resolver
        self.endpoints: list[_Endpoint] = []
        self.resolved_at = -float("inf")
        self.lock = threading.Lock()
        self.turn = 0

    def refresh(self) -> tuple[list[_Endpoint], list[_Endpoint]]:
        """Look the names up again if it is time: the endpoints added and those gone."""
        if self.endpoints and time.monotonic() - self.resolved_at < RESOLVE_EVERY:
            return [], []
        if self.endpoints and self.resolver is None:
            return [], []
        fresh = [endpoint for url in self.urls for endpoint in _expand(url, self.resolver)]
        if not fresh:
            raise httpx.ConnectError(f"no address found for {', '.join(self.urls)}")
        with self.lock:
            known = {endpoint.url: endpoint for endpoint in self.endpoints}
            kept = [known.get(endpoint.url, endpoint) for endpoint in fresh]
            added = [endpoint for endpoint in kept if endpoint.url not in known]
            gone = [e for e in self.endpoints if e.url not in {k.url for k in kept}]
            self.endpoints, self.resolved_at = kept, time.monotonic()
        return added, gone

    def limits(self) -> Limits:
        return Limits.tightest(e.limits for e in self.endpoints if e.limits is not None)

    def acquire(self, avoid: _Endpoint | None) -> tuple[_Endpoint, float]:
        """The endpoint for the next try, and the seconds to wait before it.

        The least busy of those not resting, not ``avoid`` if there is another; if all rest,
        the one that rests least.
        """
        with self.lock:
            now, count = time.monotonic(), len(self.endpoints)
            self.turn += 1
            order = [self.endpoints[(self.turn + i) % count] for i in range(count)]
            others = [e for e in order if e is not avoid] or order
            awake = [e for e in others if e.resting_until <= now]
            if awake:
                chosen, wait = min(awake, key=lambda e: e.in_flight), 0.0
            else:
                chosen = min(others, key=lambda e: e.resting_until)
                wait = chosen.resting_until - now
            chosen.in_flight += 1
            return chosen, wait

    def _rest(self, endpoint: _Endpoint) -> None:
        endpoint.failures += 1
        rest = min(BACKOFF_CAP, BACKOFF * 2**endpoint.failures)
        endpoint.resting_until = time.monotonic() + rest

    def unread(self) -> list[_Endpoint]:
        """The endpoints whose limits are not known yet, and that are not resting."""
        now = time.monotonic()
        return [e for e in self.endpoints if e.limits is None and e.resting_until <= now]

    def unreachable(self, endpoint: _Endpoint) -> None:
        with self.lock:
            self._rest(endpoint)

    def release(self, endpoint: _Endpoint, outcome: httpx.Response | Exception | None) -> None:
        """The try on ``endpoint`` is over: ``outcome`` None if it was given up (cancelled)."""
        with self.lock:
            endpoint.in_flight -= 1
            if outcome is None:
                return
            if isinstance(outcome, Exception):
                self._rest(endpoint)
            elif outcome.status_code in RETRIED:
                rest = _retry_after(outcome) if outcome.status_code == 503 else BACKOFF
                endpoint.resting_until = time.monotonic() + rest
            else:
                endpoint.failures = 0


def _retrying(outcome: httpx.Response | Exception, attempt: int, retries: int) -> bool:
    """Whether this try's outcome is worth another: a transport error or a busy replica."""
    retryable = isinstance(outcome, httpx.TransportError) or (
        isinstance(outcome, httpx.Response) and outcome.status_code in RETRIED
    )
    return retryable and attempt < retries


def _final(outcome: httpx.Response | Exception) -> dict[str, np.ndarray]:
    if isinstance(outcome, Exception):
        raise outcome
    return _result(outcome)


def _backoff(attempt: int) -> float:
    return float(min(BACKOFF_CAP, BACKOFF * 2**attempt))


class _Bar:
    """Progress: ``progress(done, total)`` after each shard, or a tqdm bar for True."""

    def __init__(self, progress: Progress | bool | None, total: int, what: str) -> None:
        self.total, self.done = total, 0
        self.report: Progress | None = None
        self.bar: Any = None
        if progress is True:
            try:
                from tqdm.auto import tqdm
            except ImportError:
                raise ImportError(
                    "progress=True draws a tqdm bar: pip install 'convengine[client]'"
                ) from None
            self.bar = tqdm(total=total, unit="shard", desc=what)
        elif callable(progress):
            self.report = progress

    def step(self) -> None:
        self.done += 1
        if self.bar is not None:
            self.bar.update(1)
        if self.report is not None:
            self.report(self.done, self.total)

    def close(self) -> None:
        if self.bar is not None:
            self.bar.close()


@dataclass(frozen=True)
class _Call:
    """One logical call: its operation, arrays, hyperparameters and shards."""

    operation: Operation
    arrays: dict[str, np.ndarray]
    hyper: dict[str, object]
    parts: list[slice]

    def request(self, index: int) -> dict[str, Any]:
        arrays = shard_arrays(self.operation, self.arrays, self.parts[index])
        return _request(arrays, self.hyper)


def _encoded(request: dict[str, Any], api_key: str | None, compress: bool) -> dict[str, Any]:
    """``request`` with the key's header, and its body gzipped (gzipped answers asked for)."""
    headers = dict(request["headers"])
    if api_key is not None:
        headers["authorization"] = f"Bearer {api_key}"
    if compress:
        headers.update({"content-encoding": "gzip", "accept-encoding": "gzip"})
        request = {**request, "content": gzip.compress(request["content"], compresslevel=1)}
    return {**request, "headers": headers}


def _urls(base_url: str | Sequence[str]) -> list[str]:
    urls = [base_url] if isinstance(base_url, str) else list(base_url)
    if not urls:
        raise ValueError("give at least one base URL")
    return urls


def _resolver(resolve: bool | Resolver) -> Resolver | None:
    if resolve is True:
        return resolve_addresses
    return resolve or None


class _Base:
    """What both clients share: replicas, options, and planning a call."""

    def __init__(
        self,
        base_url: str | Sequence[str],
        timeout: float,
        retries: int,
        concurrency: int | None,
        resolve: bool | Resolver,
        api_key: str | None,
        compress: bool,
    ) -> None:
        self._fleet = _Fleet(_urls(base_url), _resolver(resolve))
        self._timeout, self._retries, self._concurrency = timeout, retries, concurrency
        self._api_key, self._compress = api_key, compress

    @property
    def _key_headers(self) -> dict[str, str]:
        return {} if self._api_key is None else {"authorization": f"Bearer {self._api_key}"}

    def _shard_request(self, call: _Call, index: int) -> dict[str, Any]:
        return _encoded(call.request(index), self._api_key, self._compress)

    def _width(self, shards: int) -> int:
        return min(shards, self._concurrency or 2 * len(self._fleet.endpoints))

    def _plan(
        self,
        name: str,
        arrays: tuple[ArrayLike | None, ...],
        hyper: dict[str, object],
        shards: int | None,
        max_request_bytes: int | None,
    ) -> _Call:
        operation = _operation(name)
        named = _arrays(operation, arrays)
        limits = self._fleet.limits()
        parts = plan(operation, named, hyper, limits, shards, max_request_bytes)
        return _Call(operation, named, hyper, parts)


class ConvClient(_Base):
    """Blocking client, shards sent from a pool of threads.

    ``base_url``: one URL or several (one replica each); ``resolve=True`` also spreads over
    every address a URL's name resolves to (or give a function ``(host, port) -> addresses``).
    ``concurrency``: shards in flight at once (two per replica by default). ``transport``:
    the httpx transport of every connection pool; ``client``: one httpx client to use as the
    only replica's pool (for tests and tuning).
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
        super().__init__(base_url, timeout, retries, concurrency, resolve, api_key, compress)
        if client is not None and (len(self._fleet.urls) > 1 or resolve):
            raise ValueError("client= serves one replica: give one base URL, no resolve")
        self._given, self._transport = client, transport
        self._pools: dict[str, httpx.Client] = {}
        self._lock = threading.Lock()

    def _pool(self, endpoint: _Endpoint) -> httpx.Client:
        if self._given is not None:
            return self._given
        with self._lock:
            if endpoint.url not in self._pools:
                headers = {"host": endpoint.host} if endpoint.host else {}
                self._pools[endpoint.url] = httpx.Client(
                    base_url=endpoint.url,
                    timeout=self._timeout,
                    headers=headers,
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
        for endpoint in self._fleet.unread():
            try:
                response = self._pool(endpoint).get(
                    "/limits",
                    extensions=endpoint.extensions,
                    timeout=LIMITS_TIMEOUT,
                    headers=self._key_headers,
                )
                endpoint.limits = _limits(response)
            except httpx.TransportError:
                self._fleet.unreachable(endpoint)  # read when it answers again

    def _attempt(
        self, endpoint: _Endpoint, wait: float, call: _Call, request: dict[str, Any]
    ) -> httpx.Response | Exception:
        """One try of one shard on ``endpoint``: its answer, or the transport error."""
        try:
            time.sleep(wait)
            pool = self._pool(endpoint)
            outcome: httpx.Response | Exception = pool.post(
                call.operation.path, extensions=endpoint.extensions, **request
            )
        except httpx.TransportError as exc:
            outcome = exc
        except BaseException:
            self._fleet.release(endpoint, None)
            raise
        self._fleet.release(endpoint, outcome)
        return outcome

    def _send(self, call: _Call, index: int, cancelled: threading.Event) -> dict[str, np.ndarray]:
        request, last = self._shard_request(call, index), None
        for attempt in range(self._retries + 1):
            if cancelled.is_set():
                raise RuntimeError("the call failed on another shard")
            endpoint, wait = self._fleet.acquire(last)
            outcome = self._attempt(endpoint, wait, call, request)
            if not _retrying(outcome, attempt, self._retries):
                break
            last = endpoint
            time.sleep(_backoff(attempt))
        return _final(outcome)

    def call(
        self,
        name: str,
        *arrays: ArrayLike | None,
        shards: int | None = None,
        max_request_bytes: int | None = None,
        progress: Progress | bool | None = None,
        **hyperparameters: object,
    ) -> Any:
        """Run the operation ``name`` on ``arrays`` (in its engine function's order).

        One output comes back as an array, several as a tuple in the operation's order.
        ``client.forward(x, w, b, stride=2)`` is ``client.call("forward", x, w, b, stride=2)``.
        ``shards``: split the batch into at least so many requests; ``max_request_bytes``:
        keep each request's body below this; ``progress``: a function called with (shards
        done, shards) after each, or True for a tqdm bar.
        """
        self._survey()
        call = self._plan(name, arrays, hyperparameters, shards, max_request_bytes)
        bar = _Bar(progress, len(call.parts), name)
        try:
            return _outputs(call.operation, self._gather(call, bar))
        finally:
            bar.close()

    def _gather(self, call: _Call, bar: _Bar) -> dict[str, np.ndarray]:
        assembly = Assembly(call.operation, len(call.parts))
        cancelled = threading.Event()
        if len(call.parts) == 1:  # no thread to start
            assembly.add(0, self._send(call, 0, cancelled))
            bar.step()
            return assembly.result()
        threads = ThreadPoolExecutor(self._width(len(call.parts)), "convengine-shard")
        try:
            futures = {
                threads.submit(self._send, call, index, cancelled): index
                for index in range(len(call.parts))
            }
            for future in as_completed(futures):
                assembly.add(futures[future], future.result())
                bar.step()
        except BaseException:
            cancelled.set()  # shards under way stop at their next try; this call fails now
            raise
        finally:
            threads.shutdown(wait=not cancelled.is_set(), cancel_futures=True)
        return assembly.result()

    def __getattr__(self, name: str) -> Callable[..., Any]:
        if name.startswith("_"):
            raise AttributeError(name)
        _operation(name)
        return partial(self.call, name)

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


class AsyncConvClient(_Base):
    """The same calls as :class:`ConvClient`, awaitable; shards sent as tasks."""

    def __init__(
        self,
        base_url: str | Sequence[str],
        *,
        timeout: float = 120.0,
        retries: int = 3,
        client: httpx.AsyncClient | None = None,
        concurrency: int | None = None,
        resolve: bool | Resolver = False,
        transport: httpx.AsyncBaseTransport | None = None,
        api_key: str | None = None,
        compress: bool = False,
    ) -> None:
        super().__init__(base_url, timeout, retries, concurrency, resolve, api_key, compress)
        if client is not None and (len(self._fleet.urls) > 1 or resolve):
            raise ValueError("client= serves one replica: give one base URL, no resolve")
        self._given, self._transport = client, transport
        self._pools: dict[str, httpx.AsyncClient] = {}

    def _pool(self, endpoint: _Endpoint) -> httpx.AsyncClient:
        if self._given is not None:
            return self._given
        if endpoint.url not in self._pools:
            headers = {"host": endpoint.host} if endpoint.host else {}
            self._pools[endpoint.url] = httpx.AsyncClient(
                base_url=endpoint.url,
                timeout=self._timeout,
                headers=headers,
                transport=self._transport,
            )
        return self._pools[endpoint.url]

    async def _survey(self) -> None:
        _, gone = self._fleet.refresh()
        for endpoint in gone:
            pool = self._pools.pop(endpoint.url, None)
            if pool is not None:
                await pool.aclose()
        for endpoint in self._fleet.unread():
            try:
                response = await self._pool(endpoint).get(
                    "/limits",
                    extensions=endpoint.extensions,
                    timeout=LIMITS_TIMEOUT,
                    headers=self._key_headers,
                )
                endpoint.limits = _limits(response)
            except httpx.TransportError:
                self._fleet.unreachable(endpoint)

    async def _attempt(
        self, endpoint: _Endpoint, wait: float, call: _Call, request: dict[str, Any]
    ) -> httpx.Response | Exception:
        """One try of one shard on ``endpoint``: its answer, or the transport error."""
        try:
            await anyio.sleep(wait)
            pool = self._pool(endpoint)
            outcome: httpx.Response | Exception = await pool.post(
                call.operation.path, extensions=endpoint.extensions, **request
            )
        except httpx.TransportError as exc:
            outcome = exc
        except BaseException:
            self._fleet.release(endpoint, None)
            raise
        self._fleet.release(endpoint, outcome)
        return outcome

    async def _send(self, call: _Call, index: int) -> dict[str, np.ndarray]:
        request, last = self._shard_request(call, index), None
        for attempt in range(self._retries + 1):
            endpoint, wait = self._fleet.acquire(last)
            outcome = await self._attempt(endpoint, wait, call, request)
            if not _retrying(outcome, attempt, self._retries):
                break
            last = endpoint
            await anyio.sleep(_backoff(attempt))
        return _final(outcome)

    async def call(
        self,
        name: str,
        *arrays: ArrayLike | None,
        shards: int | None = None,
        max_request_bytes: int | None = None,
        progress: Progress | bool | None = None,
        **hyperparameters: object,
    ) -> Any:
        """As :meth:`ConvClient.call`, awaitable."""
        await self._survey()
        call = self._plan(name, arrays, hyperparameters, shards, max_request_bytes)
        bar = _Bar(progress, len(call.parts), name)
        try:
            return _outputs(call.operation, await self._gather(call, bar))
        finally:
            bar.close()

    async def _gather(self, call: _Call, bar: _Bar) -> dict[str, np.ndarray]:
        assembly = Assembly(call.operation, len(call.parts))
        limiter = anyio.CapacityLimiter(self._width(len(call.parts)))
        failures: list[Exception] = []

        async def one(index: int) -> None:
            try:
                async with limiter:
                    outputs = await self._send(call, index)
            except Exception as exc:
                failures.append(exc)
                tasks.cancel_scope.cancel()  # the other shards stop: this call fails now
                return
            assembly.add(index, outputs)
            bar.step()

        async with anyio.create_task_group() as tasks:
            for index in range(len(call.parts)):
                tasks.start_soon(one, index)
        if failures:
            raise failures[0]
        return assembly.result()

    def __getattr__(self, name: str) -> Callable[..., Any]:
        if name.startswith("_"):
            raise AttributeError(name)
        _operation(name)
        return partial(self.call, name)

    async def aclose(self) -> None:
        if self._given is not None:
            await self._given.aclose()
        for pool in self._pools.values():
            await pool.aclose()
        self._pools.clear()

    async def __aenter__(self) -> AsyncConvClient:
        return self

    async def __aexit__(
        self, kind: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        await self.aclose()
