"""A small HTTP client for the convengine service, blocking and async, speaking .npz on the wire.

    >>> with ConvClient("http://127.0.0.1:8000") as client:
    ...     out = client.forward(x, w, b, stride=2, padding=1)
    ...     dx, dw, db = client.backward(dout, x, w, stride=2, padding=1)

Every operation of :data:`convengine.OPERATIONS` is a method (``forward``, ``backward``,
``conv_transpose``, ``conv_transpose_backward``), its arrays positional in the table's order
and its hyperparameters as typed keywords; ``call(name, *arrays, **hyperparameters)`` runs
any of them by name. Gradients come back as :class:`Gradients` ``(dx, dw, db)``.
:class:`AsyncConvClient` is the same client with awaitable methods. It needs httpx, NumPy
and, for ``progress=True``, tqdm (``pip install '.[client]'`` from a checkout). Any other
refusal than a 503 raises :class:`ConvServiceError` with the server's ``detail``.

One call, many replicas: the client takes one base URL or several (and with ``resolve=True``
every address a name resolves to, such as a Kubernetes headless Service's pods). A call whose
request would exceed what the service accepts (its ``GET /limits``, read once per replica),
or that is given ``shards=`` or ``max_request_bytes=``, is split along the batch into shards
sent concurrently (at most ``concurrency`` at once, one connection pool per replica, each
shard to the least busy replica). Per-sample outputs are concatenated in order and batch sums
(``dw``, ``db``) added in float64 in shard order (:mod:`convengine._shards`), so the answer is
the same, bit for bit, whatever order the shards finish in and however many replicas there
are. A shard that fails on a transport error, a 502, 503 or 504, or a 500 without
``X-Replica`` (a proxy's whose replica died, as Ray Serve's answer) is retried (``retries``
times, on another replica if there is one, after a backoff, or the 503's Retry-After when
there is no other); any other refusal fails the whole call at once.

``api_key=`` sends a key (``Authorization: Bearer``) with every request, ``GET /limits``
included; ``compress=True`` gzips the request bodies and asks for gzipped answers (off by
default: ``.npz`` of dense arrays shrinks by a few percent only).

The layout: ``_async/client.py`` is the client, written once; ``_sync/client.py`` is
generated from it by ``scripts/unasync.py``; ``_concurrency`` holds the one part written
twice (shards as tasks or as threads); ``_wire`` the requests and answers; ``_fleet`` the
replicas. None of it imports the service's libraries.
"""

try:
    import httpx  # noqa: F401
except ImportError as exc:  # the engine alone is installed
    raise ImportError(
        "convengine.client needs httpx: install the client extra, pip install '.[client]' "
        "from a checkout or '<wheel>[client]'"
    ) from exc

from ._async.client import AsyncConvClient
from ._fleet import Resolver, resolve_addresses
from ._progress import Progress
from ._sync.client import ConvClient
from ._wire import ConvServiceError, Gradients

__all__ = [
    "AsyncConvClient",
    "ConvClient",
    "ConvServiceError",
    "Gradients",
    "Progress",
    "Resolver",
    "resolve_addresses",
]
