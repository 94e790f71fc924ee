"""The replicas of a client: where each shard goes, and which replica rests after a failure.

Thread-safe, and free of any wait: the clients do the sleeping, each its own way.
"""

from __future__ import annotations

import socket
import threading
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

import httpx

from .._shards import Limits
from ._wire import retry_after

RETRIED = frozenset({502, 503, 504})
BACKOFF = 0.05  # seconds before the first retry; doubled each time, up to BACKOFF_CAP
BACKOFF_CAP = 2.0
RESOLVE_EVERY = 30.0  # seconds between look-ups of a name's addresses

Resolver = Callable[[str, int], Sequence[str]]


def resolve_addresses(host: str, port: int) -> list[str]:
    """Every address ``host`` resolves to, in the resolver's order, each once."""
    infos = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM)
    return list(dict.fromkeys(str(info[4][0]) for info in infos))


@dataclass
class Endpoint:
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

    @property
    def headers(self) -> dict[str, str]:
        """The default headers of its connection pool: the name's Host, if resolved."""
        return {"host": self.host} if self.host else {}


def _expand(url: str, resolver: Resolver | None) -> list[Endpoint]:
    """``url`` as one endpoint, or one per address its name resolves to (Host kept)."""
    if resolver is None:
        return [Endpoint(url)]
    parsed = httpx.URL(url)
    port = parsed.port or (443 if parsed.scheme == "https" else 80)
    return [
        Endpoint(str(parsed.copy_with(host=address, port=port)), parsed.netloc.decode("ascii"))
        for address in resolver(parsed.host, port)
    ]


def _urls(base_url: str | Sequence[str]) -> list[str]:
    urls = [base_url] if isinstance(base_url, str) else list(base_url)
    if not urls:
        raise ValueError("give at least one base URL")
    return urls


def _resolver(resolve: bool | Resolver) -> Resolver | None:
    if resolve is True:
        return resolve_addresses
    return resolve or None


class Fleet:
    """The replicas of a client, and which one a shard goes to next (thread-safe)."""

    def __init__(self, base_url: str | Sequence[str], resolve: bool | Resolver) -> None:
        self.urls, self.resolver = _urls(base_url), _resolver(resolve)
        self.endpoints: list[Endpoint] = []
        self.resolved_at = -float("inf")
        self.lock = threading.Lock()
        self.turn = 0

    def refresh(self) -> tuple[list[Endpoint], list[Endpoint]]:
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

    def width(self, shards: int, concurrency: int | None) -> int:
        """Shards in flight at once: ``concurrency``, or two per replica."""
        return min(shards, concurrency or 2 * len(self.endpoints))

    def acquire(self, avoid: Endpoint | None) -> tuple[Endpoint, float]:
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

    def _rest(self, endpoint: Endpoint) -> None:
        endpoint.failures += 1
        rest = min(BACKOFF_CAP, BACKOFF * 2**endpoint.failures)
        endpoint.resting_until = time.monotonic() + rest

    def unread(self) -> list[Endpoint]:
        """The endpoints whose limits are not known yet, and that are not resting."""
        now = time.monotonic()
        return [e for e in self.endpoints if e.limits is None and e.resting_until <= now]

    def unreachable(self, endpoint: Endpoint) -> None:
        with self.lock:
            self._rest(endpoint)

    def release(self, endpoint: Endpoint, outcome: httpx.Response | Exception | None) -> None:
        """The try on ``endpoint`` is over: ``outcome`` None if it was given up (cancelled)."""
        with self.lock:
            endpoint.in_flight -= 1
            if outcome is None:
                return
            if isinstance(outcome, Exception):
                self._rest(endpoint)
            elif busy_or_gone(outcome):
                rest = retry_after(outcome) if outcome.status_code == 503 else BACKOFF
                endpoint.resting_until = time.monotonic() + rest
            else:
                endpoint.failures = 0


def busy_or_gone(response: httpx.Response) -> bool:
    """A busy replica (502, 503, 504), or a 500 that no replica signed (no ``X-Replica``,
    which the service sets on every answer): a proxy's whose replica died mid-request, as
    Ray Serve's proxies answer."""
    return response.status_code in RETRIED or (
        response.status_code == 500 and "x-replica" not in response.headers
    )


def retrying(outcome: httpx.Response | Exception, attempt: int, retries: int) -> bool:
    """Whether this try's outcome is worth another: a transport error, a busy or lost replica."""
    retryable = isinstance(outcome, httpx.TransportError) or (
        isinstance(outcome, httpx.Response) and busy_or_gone(outcome)
    )
    return retryable and attempt < retries


def backoff(attempt: int) -> float:
    """Seconds before the retry after try ``attempt`` (0 first): doubling, capped."""
    return float(min(BACKOFF_CAP, BACKOFF * 2**attempt))
