"""A small HTTP client for the service, sync and async, speaking .npz on the wire.

    >>> with ConvClient("http://127.0.0.1:8000") as client:
    ...     out = client.forward(x, w, b, stride=2, padding=1)
    ...     dx, dw, db = client.backward(dout, x, w, stride=2, padding=1)

It needs only httpx and NumPy. A 503 (the server is busy) is retried after its Retry-After,
``retries`` times; any other refusal raises :class:`ConvServiceError` with the server's
``detail``.
"""

from __future__ import annotations

import io
import time
from types import TracebackType
from typing import Any

import anyio
import httpx
import numpy as np
from numpy.typing import ArrayLike

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
    if isinstance(value, str):
        return value
    if isinstance(value, tuple | list):
        return ",".join(str(int(v)) for v in value)
    return str(int(value))  # type: ignore[call-overload]


def _request(arrays: dict[str, ArrayLike | None], hyper: dict[str, object]) -> dict[str, Any]:
    stream = io.BytesIO()
    present = {k: np.asarray(v) for k, v in arrays.items() if v is not None}
    np.savez(stream, allow_pickle=False, **present)
    return {
        "content": stream.getvalue(),
        "params": {key: _param(value) for key, value in hyper.items()},
        "headers": {"content-type": NPZ, "accept": NPZ},
    }


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


def _hyper(stride: object, padding: object, dilation: object, groups: int) -> dict[str, object]:
    return {"stride": stride, "padding": padding, "dilation": dilation, "groups": groups}


class ConvClient:
    """Blocking client; ``client`` may be given for tests and tuning."""

    def __init__(
        self,
        base_url: str,
        *,
        timeout: float = 120.0,
        retries: int = 3,
        client: httpx.Client | None = None,
    ) -> None:
        self._client = client or httpx.Client(base_url=base_url, timeout=timeout)
        self._retries = retries

    def _post(self, path: str, request: dict[str, Any]) -> dict[str, np.ndarray]:
        attempt = 0
        while True:
            response = self._client.post(path, **request)
            delay = _retry_delay(response, attempt, self._retries)
            if delay is None:
                return _result(response)
            time.sleep(delay)
            attempt += 1

    def forward(
        self,
        x: ArrayLike,
        w: ArrayLike,
        b: ArrayLike | None = None,
        *,
        stride: object = 1,
        padding: object = 0,
        dilation: object = 1,
        groups: int = 1,
    ) -> np.ndarray:
        """out (N, F, H_out, W_out) of x (N, C, H, W) convolved with w (F, C/groups, KH, KW)."""
        request = _request({"x": x, "w": w, "b": b}, _hyper(stride, padding, dilation, groups))
        return self._post("/forward", request)["out"]

    def backward(
        self,
        dout: ArrayLike,
        x: ArrayLike,
        w: ArrayLike,
        *,
        stride: object = 1,
        padding: object = 0,
        dilation: object = 1,
        groups: int = 1,
    ) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """(dx, dw, db) for the gradient dout of a loss w.r.t. the forward output."""
        request = _request(
            {"x": x, "w": w, "dout": dout}, _hyper(stride, padding, dilation, groups)
        )
        result = self._post("/backward", request)
        return result["dx"], result["dw"], result["db"]

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
    ) -> None:
        self._client = client or httpx.AsyncClient(base_url=base_url, timeout=timeout)
        self._retries = retries

    async def _post(self, path: str, request: dict[str, Any]) -> dict[str, np.ndarray]:
        attempt = 0
        while True:
            response = await self._client.post(path, **request)
            delay = _retry_delay(response, attempt, self._retries)
            if delay is None:
                return _result(response)
            await anyio.sleep(delay)
            attempt += 1

    async def forward(
        self,
        x: ArrayLike,
        w: ArrayLike,
        b: ArrayLike | None = None,
        *,
        stride: object = 1,
        padding: object = 0,
        dilation: object = 1,
        groups: int = 1,
    ) -> np.ndarray:
        request = _request({"x": x, "w": w, "b": b}, _hyper(stride, padding, dilation, groups))
        return (await self._post("/forward", request))["out"]

    async def backward(
        self,
        dout: ArrayLike,
        x: ArrayLike,
        w: ArrayLike,
        *,
        stride: object = 1,
        padding: object = 0,
        dilation: object = 1,
        groups: int = 1,
    ) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        request = _request(
            {"x": x, "w": w, "dout": dout}, _hyper(stride, padding, dilation, groups)
        )
        result = await self._post("/backward", request)
        return result["dx"], result["dw"], result["db"]

    async def aclose(self) -> None:
        await self._client.aclose()

    async def __aenter__(self) -> AsyncConvClient:
        return self

    async def __aexit__(
        self, kind: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        await self.aclose()
