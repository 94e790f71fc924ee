"""``inference.GRPCInferenceService`` and the standard health service, on uvicorn's event loop.

:func:`start` runs grpcio's asyncio server on the loop that serves HTTP (started by the
application's lifespan, app.main), so that both transports share one admission gate, memory
budget, metrics registry and engine thread pool without a lock: the gate's counters are
touched on that loop only. An inference call follows the HTTP flow step for step: a place
(:meth:`Gate.check_places`), memory reserved for the message (its size is known, it arrived
whole), then :func:`app.pipeline.admitted` decodes and validates, resizes the reservation,
computes and encodes in the computation threads. The message is read into a protocol request
by :mod:`app.rpc.codec` and checked by :func:`app.protocol.prepare`, as REST's is.

Every call has a request id (``x-request-id`` metadata, echoed, else a new one) sent back in
the initial metadata with ``x-replica``, a line in the access log (method ``GRPC``, status the
code's name) and the request metrics; inference calls also the per-model statistics. With an
API keys file, every RPC but ServerLive, ServerReady and the health service needs
``authorization: Bearer <key>`` (or ``x-api-key``) metadata. Errors become statuses in one
place, :mod:`app.rpc.status`.
"""

from __future__ import annotations

import asyncio
import logging
import re
import time
from collections.abc import Awaitable, Callable
from functools import partial
from typing import Any

import grpc
from google.protobuf import json_format
from google.protobuf.message import Message
from grpc_health.v1 import health, health_pb2, health_pb2_grpc

from app import pipeline, protocol
from app.auth import KeyFile, key_id, presented, refusal
from app.config import Settings
from app.errors import ServiceError, count_refusal
from app.limits.body import reading_bytes
from app.limits.memory import Reservation
from app.observe import Exchange, record, request_id
from app.routes.health import readiness
from app.statistics import Timing

from . import codec
from .messages import MESSAGES, METHODS, SERVICE
from .status import status_of

__all__ = ["Health", "InferenceService", "start"]

logger = logging.getLogger("app.rpc")
# Like /v2/health/live and /v2/health/ready: probes need no key.
_PUBLIC = frozenset({"ServerLive", "ServerReady"})
Handler = Callable[[Any, grpc.aio.ServicerContext], Awaitable[Any]]


class InferenceService:
    """The RPCs of ``inference.GRPCInferenceService`` for an application's state (its
    settings, gate, models and readiness)."""

    def __init__(self, state: Any) -> None:
        self.state = state
        settings: Settings = state.settings
        self.settings = settings
        self.keys = KeyFile(settings.api_keys_file) if settings.api_keys_file else None

    def handler(self) -> grpc.GenericRpcHandler:
        """The service's methods for a grpcio server; ModelInfer takes and gives bytes, so that
        its size is known (and memory reserved) before it is decoded."""
        handlers = {}
        for method, (request_class, response_class) in METHODS.items():
            whole = method == "ModelInfer"
            handlers[method] = grpc.unary_unary_rpc_method_handler(
                self._observed(method, getattr(self, _snake_case(method))),
                request_deserializer=None if whole else request_class.FromString,
                response_serializer=None if whole else response_class.SerializeToString,
            )
        return grpc.method_handlers_generic_handler(SERVICE, handlers)

    # The RPCs, named as in the service definition (in snake case).

    async def server_live(self, request: Message, context: Any) -> Message:
        return MESSAGES["ServerLiveResponse"](live=True)

    async def server_ready(self, request: Message, context: Any) -> Message:
        return MESSAGES["ServerReadyResponse"](ready=readiness(self.state) == "ready")

    async def model_ready(self, request: Message, context: Any) -> Message:
        self._model(request)
        return MESSAGES["ModelReadyResponse"](ready=readiness(self.state) == "ready")

    async def server_metadata(self, request: Message, context: Any) -> Message:
        return _message("ServerMetadataResponse", protocol.server_metadata())

    async def model_metadata(self, request: Message, context: Any) -> Message:
        return _message("ModelMetadataResponse", protocol.metadata(*self._model(request)))

    async def model_config(self, request: Message, context: Any) -> Message:
        config = protocol.config(*self._model(request))
        return _message("ModelConfigResponse", {"config": config})

    async def model_statistics(self, request: Message, context: Any) -> Message:
        statistics = protocol.statistics(self.state.models, request.name, request.version)
        return _message("ModelStatisticsResponse", statistics)

    async def repository_index(self, request: Message, context: Any) -> Message:
        index = protocol.repository_index(self.state.models)
        return _message("RepositoryIndexResponse", {"models": index})

    async def model_infer(self, body: bytes, context: Any) -> bytes:
        gate, timing = self.state.gate, Timing("")
        held = reading_bytes(len(body), 0)  # a message arrives whole
        reservation = gate.reservation()
        try:
            gate.check_places()
            gate.check_body(held)
            await gate.grow(reservation, held)
            content, _ = await pipeline.admitted(
                gate, reservation, body, partial(self._prepare, timing)
            )
            timing.done(ok=True)
            return b"".join(content)  # one piece: the message
        except BaseException:
            timing.done(ok=False)
            raise
        finally:
            # The answer's bytes now belong to grpcio, which sends them after this returns.
            reservation.release()

    def _prepare(
        self, timing: Timing, body: bytes, reservation: Reservation
    ) -> protocol.PreparedInference:
        """Parse, find the model, decode and validate (in a computation thread)."""
        message = codec.message(body)
        served = self._model_of(message.model_name, message.model_version)
        timing.model = message.model_name
        return protocol.prepare(
            served,
            body,
            reservation,
            self.settings,
            parse=lambda _: codec.read(message),
            encode=codec.encode,
            timing=timing,
        )

    def _model(self, request: Message) -> Any:
        return self._model_of(request.name, request.version)

    def _model_of(self, name: str, version: str) -> Any:
        return protocol.model(self.state.models, name, version or None)

    # Around every RPC: request id, key, errors as statuses, access log and metrics.

    def _observed(self, method: str, call: Handler) -> Handler:
        route = f"/{SERVICE}/{method}"

        async def observed(request: Any, context: grpc.aio.ServicerContext) -> Any:
            started = time.perf_counter()
            metadata = [(name, value) for name, value in context.invocation_metadata() or ()]
            text = [(name, value) for name, value in metadata if isinstance(value, str)]
            rid = request_id(next((v for n, v in text if n == "x-request-id"), None))
            await context.send_initial_metadata(
                (("x-request-id", rid), ("x-replica", self.settings.replica))
            )
            exchange = Exchange(
                request_id=rid,
                replica=self.settings.replica,
                method="GRPC",
                route=route,
                operation="",
                path=route,
                status="UNKNOWN",
                seconds=0.0,
                bytes_in=_size(request),
                bytes_out=0,
                client=_client(context.peer()),
                key=None,
            )
            try:
                if self.keys is not None and method not in _PUBLIC:
                    exchange.key = self._authorize(text)
                response = await call(request, context)
                exchange.status, exchange.bytes_out = "OK", _size(response)
                return response
            except ServiceError as exc:
                count_refusal(exc.status, exc.detail)
                status = status_of(exc)
                exchange.status = status.code.name
                context.set_trailing_metadata(status.trailing_metadata)
                await context.abort(status.code, status.details)
            except asyncio.CancelledError:
                exchange.status = "CANCELLED"
                raise
            except Exception:
                # A bug: logged once, with the request id the client was given.
                logger.exception("unexpected error in %s (request id %s)", method, rid)
                exchange.status = "INTERNAL"
                await context.abort(
                    grpc.StatusCode.INTERNAL,
                    f"internal error: the service's log has it under request id {rid}",
                )
            finally:
                exchange.seconds = time.perf_counter() - started
                record(exchange)

        return observed

    def _authorize(self, metadata: list[tuple[str, str]]) -> str:
        """The id of the key in ``metadata``; 401 (UNAUTHENTICATED) without a known one."""
        assert self.keys is not None
        key = presented(metadata)
        digest = None if key is None else self.keys.match(key)
        if digest is None:
            raise refusal(key)
        return key_id(digest)


class Health(health.aio.HealthServicer):  # type: ignore[misc]
    """The standard health service: SERVING while the application is ready (warmed up, with
    room to admit work), for the whole server ("") and for the inference service alike."""

    def __init__(self, state: Any) -> None:
        super().__init__()
        self.state = state

    async def Check(self, request: Any, context: Any) -> Any:  # noqa: N802 (grpcio's name)
        if request.service not in ("", SERVICE):
            return await super().Check(request, context)  # NOT_FOUND
        serving = readiness(self.state) == "ready"
        status = health_pb2.HealthCheckResponse
        return status(status=status.SERVING if serving else status.NOT_SERVING)


def _message(name: str, document: dict[str, Any]) -> Message:
    """The response ``name`` holding ``document`` (the REST answer), fields gRPC has not dropped."""
    return json_format.ParseDict(document, MESSAGES[name](), ignore_unknown_fields=True)


def _snake_case(name: str) -> str:
    return re.sub(r"(?<!^)(?=[A-Z])", "_", name).lower()


def _size(message: Any) -> int:
    return len(message) if isinstance(message, bytes) else int(message.ByteSize())


def _client(peer: str) -> str | None:
    """The client's address in a grpcio peer ("ipv4:127.0.0.1:5000", "ipv6:[::1]:5000")."""
    kind, _, address = peer.partition(":")
    if kind not in ("ipv4", "ipv6"):
        return None
    host = address.rpartition(":")[0]
    return host.strip("[]") or None


async def start(state: Any, settings: Settings) -> grpc.aio.Server:
    """A started gRPC server on ``settings.grpc_port`` (``settings.host``), for ``state``."""
    server = grpc.aio.server(
        options=[
            ("grpc.max_receive_message_length", settings.max_body_bytes),
            ("grpc.max_send_message_length", -1),  # answers are bounded by the memory budget
            # Several workers share the port (the kernel balances connections); one alone
            # must own it, so that a port already taken fails the start.
            ("grpc.so_reuseport", 1 if settings.workers > 1 else 0),
        ],
    )
    server.add_generic_rpc_handlers([InferenceService(state).handler()])
    health_pb2_grpc.add_HealthServicer_to_server(Health(state), server)
    host = f"[{settings.host}]" if ":" in settings.host else settings.host
    address = f"{host}:{settings.grpc_port}"
    try:
        bound = server.add_insecure_port(address)
    except RuntimeError as exc:  # grpcio >= 1.60 raises where older releases returned 0
        raise OSError(f"cannot listen for gRPC on {address}: {exc}") from exc
    if bound == 0:
        raise OSError(f"cannot listen for gRPC on {address}")
    await server.start()
    logger.info("gRPC inference protocol on %s", address)
    return server
