"""One request, read top to bottom: a place, its body, decode, validate, compute, encode.

:func:`serve` is the whole flow, for every route that computes (the operations' routes and
the inference protocol's): each step once, the admission gate (app.limits.admission) asked
for a place and memory between them. :func:`prepare` decodes and validates a request to an
operation's route and says what it will hold until its answer is sent (:func:`memory_need`);
:meth:`Prepared.finish` computes and encodes. Shapes and costs come from the engine's table,
reckoned once when the request is validated; this module computes none.
"""

from __future__ import annotations

import math
from collections.abc import AsyncIterator, Callable, Iterable, Mapping
from dataclasses import dataclass
from functools import lru_cache, partial
from typing import Protocol

import numpy as np
import pydantic
from starlette.requests import Request
from starlette.responses import Response

from app import metrics
from app.codecs import Budget, Codec, Decoded, choose_decoder, choose_encoder
from app.codecs import json as json_codec
from app.codecs.base import DTYPES, Announced, Pieces
from app.config import Settings
from app.encoding import gzip_answer
from app.errors import InvalidInput, Overloaded, ServiceError, validation_errors
from app.limits import Gate, WorkLimits
from app.limits.admission import Answer
from app.limits.body import declared, holding, is_json
from app.limits.memory import Reservation
from app.schemas import HYPERPARAMETERS, UNION_TAGS, ConvRequest, TensorSpec, request_model
from convengine import Cost, Operation

__all__ = [
    "Foresight",
    "Prepared",
    "Preparing",
    "admitted",
    "answer",
    "check",
    "compute",
    "memory_need",
    "prepare",
    "serve",
    "tiny",
    "validate",
]


# Body bytes a reservation grows ahead of what has arrived, so that it grows in steps.
_READ_AHEAD = 256 << 10

# A request this small is served on the event loop, without the hops to a computation thread
# and back (about 300 us of a tiny request's 900 us in the service): decoding and validating
# a body of at most INLINE_BODY_BYTES whose arrays take at most INLINE_MEMORY_BYTES, computing
# and encoding a plan of at most INLINE_FLOPS and INLINE_MEMORY_BYTES. Such work is mostly
# Python that holds the GIL, so in a thread it would stop the loop all the same; it holds
# the loop about 150 us, the largest such request as long as the tiniest (benchmarks.tiny
# measures both), one request at a time. Anything larger, or a body that inflates beyond the
# bound, goes to a computation thread as before.
INLINE_BODY_BYTES = 16 << 10
INLINE_FLOPS = 1 << 15
INLINE_MEMORY_BYTES = 128 << 10


class Preparing(Protocol):
    """A decoded and validated request, ready to compute."""

    @property
    def need(self) -> int:
        """Bytes it holds from now to its answer: decoded arrays, work and encoded answer."""

    @property
    def text(self) -> bool:
        """Whether its answer writes numbers out as text (worth gzipping for any client)."""

    @property
    def cost(self) -> Cost:
        """What its computation holds and computes, from the engine's plan."""

    def finish(self) -> tuple[Pieces, dict[str, str]]:
        """Compute and encode: the answer's body, in pieces, and headers."""


@dataclass
class Foresight:
    """What a body announces of its arrays before they arrive (``announced``, fed the bytes),
    and ``plan()``: what the request would hold beside its body, from what was announced
    (None until every array it needs has been), raising the request's own refusal if it has
    one."""

    announced: Announced
    plan: Callable[[], int | None]


async def serve(
    request: Request,
    gate: Gate,
    holding: Callable[[int], int],
    prepare: Callable[[bytes, Reservation], Preparing],
    foresight: Callable[[], Foresight | None] | None = None,
) -> Response:
    """The answer to ``request``, whose body ``prepare`` decodes and validates (in a thread).

    ``holding(n)``: what reading and decoding the body holds once ``n`` of its bytes have
    arrived (:func:`app.limits.body.holding`). ``foresight()``: what the body says of the
    request before all of it has arrived, for a body that says it (:func:`_read`); made
    only when it is needed, off the common path.
    """
    reservation = gate.reservation()
    try:
        gate.check_places()  # no upload, nor memory, for a request that would be refused
        length = declared(request)
        if length is not None:
            gate.check_body(holding(length))  # a 413 before a byte is read
        body = await _read(request, gate, reservation, holding, foresight)  # no place yet
        finish = partial(_coded, request=request)
        content, headers = await admitted(gate, reservation, body, prepare, finish)
        return Answer(content, headers, reservation)
    except BaseException:
        reservation.release()
        raise


async def _read(
    request: Request,
    gate: Gate,
    reservation: Reservation,
    holding: Callable[[int], int],
    foresight: Callable[[], Foresight | None] | None,
) -> bytes:
    """The body, its reservation grown as its bytes arrive (and a step ahead): a body that
    has not arrived holds no memory, so a stalled upload keeps no one else waiting.

    When there is no room for the rest of it (503), a body that announces its arrays is read
    on, holding none of it, until they are known: a request that could never be answered is
    refused for good (422), not asked to come back.
    """
    pieces: list[bytes] = []
    received = 0
    stream = request.stream()
    try:
        async for piece in stream:
            pieces.append(piece)
            received += len(piece)
            if holding(received) > reservation.held:
                await gate.grow(reservation, holding(received + _READ_AHEAD))
    except Overloaded:
        sight = foresight() if foresight is not None else None
        if sight is not None:
            reservation.release()
            length = max(received, declared(request) or 0)  # the whole body's, if declared
            await _foresee(sight, gate, pieces, stream, length)
        raise
    return b"".join(pieces)


async def _foresee(
    foresight: Foresight,
    gate: Gate,
    pieces: list[bytes],
    stream: AsyncIterator[bytes],
    length: int,
) -> None:
    """Raise the refusal for good of a request whose body says it could never be answered:
    ``pieces`` have arrived (they are let go), the rest are read from ``stream`` and passed
    over until the body has announced all it needs; ``length``: the body's, as far as known."""
    announced = foresight.announced
    arrived = sum(map(len, pieces))
    for piece in pieces:
        announced.feed(piece)
    pieces.clear()

    def need() -> int | None:
        return None if announced.lost else foresight.plan()

    needed = need()
    if needed is None and not (announced.lost or announced.ended):
        async for piece in stream:
            announced.feed(piece)
            arrived += len(piece)
            needed = need()
            if needed is not None or announced.lost or announced.ended:
                break
    if needed is not None:
        gate.check_need(max(length, arrived) + needed)


def _coded(prepared: Preparing, request: Request) -> tuple[Pieces, dict[str, str]]:
    """Compute, encode and code (gzip) the answer, in the computation thread."""
    content, headers = prepared.finish()
    settings: Settings = request.app.state.settings
    content, coding = gzip_answer(
        content,
        request.headers.get("accept-encoding", ""),
        prepared.text,
        settings.compress_min_bytes,
        settings.compress_level,
    )
    return content, {**headers, **coding}


def _finished(prepared: Preparing) -> tuple[Pieces, dict[str, str]]:
    return prepared.finish()


async def admitted(
    gate: Gate,
    reservation: Reservation,
    body: bytes,
    prepare: Callable[[bytes, Reservation], Preparing],
    finish: Callable[[Preparing], tuple[Pieces, dict[str, str]]] = _finished,
) -> tuple[Pieces, dict[str, str]]:
    """The answer to a body read whole, ``reservation`` holding what reading it held: its
    content and headers (``finish``: compute and encode, and code for HTTP), the reservation
    resized to the body and the content.

    The steps every transport shares once a body is in memory (HTTP's read by :func:`serve`,
    a gRPC message whole, app.rpc.service).
    """
    waited: list[float] = []  # for a computation slot
    # One place from decoding to the answer, so that work decoded is never refused.
    async with gate.admit():
        prepared = await _prepared(gate, reservation, body, prepare, waited)
        await gate.hold(reservation, len(body) + prepared.need)
        reservation.settle()  # from here on it only gives back
        work = partial(finish, prepared)
        content, headers = work() if tiny(prepared.cost) else await gate.run(work, waited)
    metrics.QUEUE_SECONDS.observe(sum(waited))
    del prepared  # its arrays: only the answer and the body remain
    # Shrinks to what is left: the body and the answer, which the estimate bounds; were an
    # answer ever larger, it is sent on what is held rather than refused after computing.
    answer_bytes = sum(len(piece) for piece in content)
    await gate.hold(reservation, min(reservation.held, len(body) + answer_bytes))
    return content, headers


def tiny(cost: Cost) -> bool:
    """Whether a plan is small enough to compute and encode on the event loop."""
    return cost.flops <= INLINE_FLOPS and cost.memory_bytes <= INLINE_MEMORY_BYTES


class _Offload(Exception):
    """A decode on the event loop would take more memory than it may there."""


class _OnLoop(Reservation):
    """A reservation as a decode on the event loop sees it: what reading the body holds, and
    at most INLINE_MEMORY_BYTES for the arrays, so that a small body that inflates to more is
    decoded in a thread instead."""

    def __init__(self, reservation: Reservation, body_bytes: int) -> None:
        super().__init__(reservation.budget)
        self.held = min(reservation.held, body_bytes + INLINE_MEMORY_BYTES)

    def take_now(self, nbytes: int, what: str) -> None:
        raise _Offload


async def _prepared(
    gate: Gate,
    reservation: Reservation,
    body: bytes,
    prepare: Callable[[bytes, Reservation], Preparing],
    waited: list[float],
) -> Preparing:
    """Decode and validate: on the event loop for a small body, else in a computation thread."""
    if len(body) <= INLINE_BODY_BYTES:
        try:
            return prepare(body, _OnLoop(reservation, len(body)))
        except _Offload:
            pass  # decoded again in a thread, with the reservation free to grow
    return await gate.run(partial(prepare, body, reservation), waited)


async def answer(request: Request, operation: Operation) -> Response:
    """The answer to a request to ``operation``'s own route (/forward, /backward, ...)."""
    state = request.app.state
    content_type = request.headers.get("content-type")
    preparing = partial(
        prepare,
        operation,
        content_type=content_type,
        accept=request.headers.get("accept"),
        query=dict(request.query_params),
        settings=state.settings,
    )
    held = holding(None if is_json(content_type) else 0)
    foresight = partial(_foresight, request, operation)
    return await serve(request, state.gate, held, preparing, foresight)


def _foresight(request: Request, operation: Operation) -> Foresight | None:
    """For a body whose form announces its arrays (an .npz's and a multipart body's .npy
    headers come before their data): what it says, and the plan of the request from it."""
    content_type = request.headers.get("content-type")
    try:
        codec, options = choose_decoder(content_type)
    except ServiceError:  # an unknown form: prepare refuses it, once the body has arrived
        return None
    if codec.announced is None:
        return None
    query = dict(request.query_params)
    announced = codec.announced(operation, query, options)
    plan = partial(
        _plan,
        operation,
        announced,
        query,
        accept=request.headers.get("accept"),
        content_type=content_type,
        settings=request.app.state.settings,
    )
    return Foresight(announced, plan)


def _plan(
    operation: Operation,
    announced: Announced,
    query: Mapping[str, str],
    accept: str | None,
    content_type: str | None,
    settings: Settings,
) -> int | None:
    """What a request would hold beside its body, from the arrays its body announced (None
    until every array it needs has been, or if one the operation has no use for is)."""
    if any(name not in announced.specs for name in operation.required) or any(
        name not in operation.inputs for name in announced.specs
    ):
        return None
    specs = {
        name: TensorSpec(shape=shape, dtype=dtype.name)
        for name, (shape, dtype) in announced.specs.items()
    }
    sent = announced.sent
    _check_query(sent, query)
    request = check(operation, sent.params, specs, sent, settings)
    return memory_need(request, choose_encoder(accept, operation, content_type).answer_bytes)


@dataclass
class Prepared:
    """A decoded, validated request, and what it will hold until its answer is sent."""

    request: ConvRequest
    decoded: Decoded
    encoder: Codec
    need: int

    @property
    def cost(self) -> Cost:
        return self.request.cost

    @property
    def text(self) -> bool:
        # A JSON answer imitates x: base64 stays base64, anything else becomes numbers.
        return self.encoder.media_type == json_codec.MEDIA_TYPE and self.decoded.style != "b64"

    def finish(self) -> tuple[Pieces, dict[str, str]]:
        outputs = compute(self.request, self.decoded.arrays)
        assert self.encoder.encode is not None
        content = self.encoder.encode(outputs, self.decoded.style)
        return content, {"content-type": self.encoder.media_type}


def memory_need(request: ConvRequest, answer_bytes: Callable[[Cost], int]) -> int:
    """Decoded arrays, working memory, outputs and encoded answer of a validated request, in
    bytes; ``answer_bytes(cost)``: what the answer's encoding holds beside the outputs."""
    cost = request.cost
    decoded = sum(
        math.prod(spec.shape) * DTYPES[spec.dtype].itemsize for spec in request.specs().values()
    )
    return decoded + cost.work_bytes + cost.output_bytes + answer_bytes(cost)


def prepare(
    operation: Operation,
    body: bytes,
    reservation: Reservation,
    content_type: str | None,
    accept: str | None,
    query: Mapping[str, str],
    settings: Settings,
) -> Prepared:
    """Decode and validate one request to ``operation``'s route (in a worker thread)."""
    encoder = choose_encoder(accept, operation, content_type)
    decoder, options = choose_decoder(content_type)
    assert decoder.decode is not None and encoder.encode is not None
    budget = Budget(
        settings.max_decoded_bytes,
        allowance=max(0, reservation.held - len(body)),
        reserve=reservation.take_now,
    )
    decoded = decoder.decode(body, operation, query, budget, options)
    _check_query(decoded, query)
    request = validate(operation, decoded, settings)
    need = memory_need(request, encoder.answer_bytes)
    return Prepared(request, decoded, encoder, need)


def _check_query(sent: Decoded, query: Mapping[str, str]) -> None:
    if sent.param_location == "body" and query:
        key = next(iter(query))
        raise InvalidInput(
            f"query parameter {key!r} is not read: with this Content-Type the "
            f"hyperparameters go in the body (the query is for application/x-npz)",
            loc=("query", key),
            type="extra_forbidden",
        )


def validate(operation: Operation, decoded: Decoded, settings: Settings) -> ConvRequest:
    """The validated request: hyperparameters and the decoded arrays' specs checked against
    each other."""
    specs = {name: _spec(array.shape, array.dtype) for name, array in decoded.arrays.items()}
    return check(operation, decoded.params, specs, decoded, settings)


@lru_cache(maxsize=256)
def _spec(shape: tuple[int, ...], dtype: np.dtype) -> TensorSpec:
    """An array's spec, kept for the next array alike: a spec is a pydantic model, and a
    dtype's name is reckoned in Python (together 3 us, a tenth of a tiny layer's compute)."""
    return TensorSpec(shape=shape, dtype=dtype.name)


def check(
    operation: Operation,
    params: Mapping[str, object],
    specs: Mapping[str, TensorSpec],
    sent: Decoded | None,
    settings: Settings,
) -> ConvRequest:
    """The validated request from hyperparameters and array specs alone (a dry run's too).

    ``sent``: how the hyperparameters arrived (where, and whether as text); None for a JSON
    body's fields."""
    location = sent.param_location if sent is not None else "body"
    text = sent is not None and sent.params_as_text
    limits = WorkLimits(settings.max_work_bytes, settings.max_gflop)
    # Each value with its type: 1, 1.0 and True are equal keys but not the same request.
    given = tuple((name, type(value), value) for name, value in params.items())
    try:
        if _keyable(params.values()):
            return _validated(operation, given, tuple(specs.items()), text, limits)
        # A value that cannot be a key (a list, from JSON) or is long: validated, not kept.
        context = {"text": text, "limits": limits}
        return request_model(operation).model_validate({**params, **specs}, context=context)
    except pydantic.ValidationError as exc:
        raise validation_errors(exc, location, parameters=HYPERPARAMETERS, drop=UNION_TAGS) from exc


# Longest text a kept key holds: " 1" padded with a megabyte of spaces is a valid stride, and
# 256 such keys must not hold 256 MB beside the memory budget.
_KEY_TEXT = 64


def _keyable(values: Iterable[object]) -> bool:
    """Whether hyperparameters may be kept as a key: numbers, None and short text only."""
    return all(
        value is None
        or type(value) in (bool, int, float)
        or (type(value) is str and len(value) <= _KEY_TEXT)
        for value in values
    )


# The validated requests of the last 256 kinds of request, kept for the next one alike (a
# training loop sends the same shapes and hyperparameters every step): validating costs
# about 40 us, as much as a tiny layer's computation. A validated request is never changed
# (it holds specs, not arrays); refusals are not kept.
@lru_cache(maxsize=256)
def _validated(
    operation: Operation,
    given: tuple[tuple[str, type, object], ...],
    specs: tuple[tuple[str, TensorSpec], ...],
    text: bool,
    limits: WorkLimits,
) -> ConvRequest:
    data = {name: value for name, _, value in given} | dict(specs)
    context = {"text": text, "limits": limits}
    return request_model(operation).model_validate(data, context=context)


def compute(request: ConvRequest, arrays: Mapping[str, np.ndarray]) -> dict[str, np.ndarray]:
    """The operation's outputs, by the engine, for the geometry the request was validated with."""
    operation = request.operation
    seconds = metrics.ENGINE_SECONDS.labels(operation.name)
    # Overflow to inf is an answer, not a warning: encoders report values JSON cannot carry.
    with np.errstate(all="ignore"), metrics.COMPUTING.track_inprogress(), seconds.time():
        return operation.run(request.geometry, arrays)
