"""A small HTTP client for the service, sync and async, speaking .npz on the wire.

    >>> with ConvClient("http://127.0.0.1:8000") as client:
    ...     out = client.forward(x, w, b, stride=2, padding=1)
    ...     dx, dw, db = client.backward(dout, x, w, stride=2, padding=1)

Every operation of :data:`convengine.OPERATIONS` is a method, its arrays positional in the
engine function's order and its hyperparameters as keywords. It needs only httpx and NumPy
(``pip install convengine[client]``). A 503 (the server is busy) is retried after its Retry-After,
``retries`` times; any other refusal raises :class:`ConvServiceError` with the server's
``detail``. ``api_key=`` sends a key (``Authorization: Bearer``); ``compress=True`` gzips the
request bodies and asks for gzipped answers (off by default: the client sends ``.npz``, which
gzip shrinks by a few percent only, unless the arrays are sparse).
"""

from __future__ import annotations

import gzip
import io
import json
import time
from collections.abc import Callable
from functools import partial
from types import TracebackType
from typing import Any

import anyio
import httpx
import numpy as np
from numpy.typing import ArrayLike

from ._operations import OPERATIONS, Operation

__all__ = ["AsyncConvClient", "ConvClient", "ConvServiceError"]

NPZ = "application/x-npz"


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


def _request(
    operation: Operation, args: tuple[ArrayLike | None, ...], hyper: dict[str, object]
) -> tuple[str, dict[str, Any]]:
    if len(args) > len(operation.inputs):
        raise TypeError(
            f"{operation.name}() takes {len(operation.inputs)} arrays "
            f"({', '.join(operation.inputs)}), got {len(args)}"
        )
    named = dict(zip(operation.inputs, args, strict=False))
    missing = [name for name in operation.required if named.get(name) is None]
    if missing:
        raise TypeError(f"{operation.name}() needs the array {missing[0]!r}")
    stream = io.BytesIO()
    present = {k: _as_sent(v) for k, v in named.items() if v is not None}
    np.savez(stream, allow_pickle=False, **present)
    return operation.path, {
        "content": stream.getvalue(),
        "params": {key: _param(value) for key, value in hyper.items()},
        "headers": {"content-type": NPZ, "accept": NPZ},
    }


def _encoded(request: dict[str, Any], api_key: str | None, compress: bool) -> dict[str, Any]:
    """``request`` with the key's header, and its body gzipped (gzipped answers asked for)."""
    headers = dict(request["headers"])
    if api_key is not None:
        headers["authorization"] = f"Bearer {api_key}"
    if compress:
        headers.update({"content-encoding": "gzip", "accept-encoding": "gzip"})
        request = {**request, "content": gzip.compress(request["content"], compresslevel=1)}
    return {**request, "headers": headers}


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
    with np.load(io.BytesIO(response.content), allow_pickle=False) as archive:
        return {name: archive[name] for name in archive.files}


def _retry_delay(response: httpx.Response, attempt: int, retries: int) -> float | None:
    """Seconds to wait before retrying a 503, or None when the response is final."""
    if response.status_code != 503 or attempt >= retries:
        return None
    try:
        return min(float(response.headers.get("retry-after", "1")), 30.0)
    except ValueError:
        return 1.0


class ConvClient:
    """Blocking client; ``client`` may be given for tests and tuning."""

    def __init__(
        self,
        base_url: str,
        *,
        timeout: float = 120.0,
        retries: int = 3,
        client: httpx.Client | None = None,
        api_key: str | None = None,
        compress: bool = False,
    ) -> None:
        self._client = client or httpx.Client(base_url=base_url, timeout=timeout)
        self._retries = retries
        self._api_key, self._compress = api_key, compress

    def _post(self, path: str, request: dict[str, Any]) -> dict[str, np.ndarray]:
        attempt = 0
        while True:
            response = self._client.post(path, **request)
            delay = _retry_delay(response, attempt, self._retries)
            if delay is None:
                return _result(response)
            time.sleep(delay)
            attempt += 1

    def call(self, name: str, *arrays: ArrayLike | None, **hyperparameters: object) -> Any:
        """Run the operation ``name`` on ``arrays`` (in its engine function's order).

        One output comes back as an array, several as a tuple in the operation's order.
        ``client.forward(x, w, b, stride=2)`` is ``client.call("forward", x, w, b, stride=2)``.
        """
        operation = _operation(name)
        path, request = _request(operation, arrays, hyperparameters)
        request = _encoded(request, self._api_key, self._compress)
        return _outputs(operation, self._post(path, request))

    def __getattr__(self, name: str) -> Callable[..., Any]:
        if name.startswith("_"):
            raise AttributeError(name)
        _operation(name)
        return partial(self.call, name)

    def close(self) -> None:
        self._client.close()

    def __enter__(self) -> ConvClient:
        return self

    def __exit__(
        self, kind: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.close()


class AsyncConvClient:
    """The same calls as :class:`ConvClient`, awaitable."""

    def __init__(
        self,
        base_url: str,
        *,
        timeout: float = 120.0,
        retries: int = 3,
        client: httpx.AsyncClient | None = None,
        api_key: str | None = None,
        compress: bool = False,
    ) -> None:
        self._client = client or httpx.AsyncClient(base_url=base_url, timeout=timeout)
        self._retries = retries
        self._api_key, self._compress = api_key, compress

    async def _post(self, path: str, request: dict[str, Any]) -> dict[str, np.ndarray]:
        attempt = 0
        while True:
            response = await self._client.post(path, **request)
            delay = _retry_delay(response, attempt, self._retries)
            if delay is None:
                return _result(response)
            await anyio.sleep(delay)
            attempt += 1

    async def call(self, name: str, *arrays: ArrayLike | None, **hyperparameters: object) -> Any:
        """As :meth:`ConvClient.call`, awaitable."""
        operation = _operation(name)
        path, request = _request(operation, arrays, hyperparameters)
        request = _encoded(request, self._api_key, self._compress)
        return _outputs(operation, await self._post(path, request))

    def __getattr__(self, name: str) -> Callable[..., Any]:
        if name.startswith("_"):
            raise AttributeError(name)
        _operation(name)
        return partial(self.call, name)

    async def aclose(self) -> None:
        await self._client.aclose()

    async def __aenter__(self) -> AsyncConvClient:
        return self

    async def __aexit__(
        self, kind: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        await self.aclose()
