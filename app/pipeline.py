"""One request, read top to bottom: a place, its body, decode, validate, compute, encode.

:func:`serve` is the whole flow, for every route that computes (the operations' routes and
the inference protocol's): each step once, the admission gate (app.limits.admission) asked
for a place and memory between them. :func:`prepare` decodes and validates a request to an
operation's route and says what it will hold until its answer is sent (:func:`memory_need`);
:meth:`Prepared.finish` computes and encodes. Shapes and costs come from the engine's table,
reckoned once when the request is validated; this module computes none.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass
from functools import partial
from typing import Protocol

import numpy as np
import pydantic
from starlette.requests import Request
from starlette.responses import Response

from app import metrics
from app.codecs import Budget, Codec, Decoded, choose_decoder, choose_encoder
from app.config import Settings
from app.errors import InvalidInput, validation_errors
from app.limits import Gate, WorkLimits
from app.limits.admission import Answer
from app.limits.body import declared_length, is_json, reading_cost
from app.limits.memory import Reservation
from app.schemas import HYPERPARAMETERS, UNION_TAGS, ConvRequest, TensorSpec, request_model
from convengine import Cost, Operation

__all__ = [
    "Prepared",
    "Preparing",
    "answer",
    "check",
    "compute",
    "memory_need",
    "prepare",
    "serve",
    "validate",
]


class Preparing(Protocol):
    """A decoded and validated request, ready to compute."""

    @property
    def need(self) -> int:
        """Bytes it holds from now to its answer: decoded arrays, work and encoded answer."""

    def finish(self) -> tuple[bytes, dict[str, str]]:
        """Compute and encode: the answer's body and headers."""


async def serve(
    request: Request,
    gate: Gate,
    least: int,
    expected: int,
    prepare: Callable[[bytes, Reservation], Preparing],
) -> Response:
    """The answer to ``request``, whose body ``prepare`` decodes and validates (in a thread).

    ``least``: what reading and decoding the body holds for sure; ``expected``: what the
    whole request is expected to hold (:func:`app.limits.body.reading_cost`).
    """
    reservation = gate.reservation()
    try:
        gate.check_places()  # no upload, nor memory, for a request that would be refused
        await gate.reserve_body(reservation, least, expected)
        body = await request.body()  # holding memory, but no computation place
        # One place from decoding to the answer, so that work decoded is never refused.
        async with gate.admit():
            prepared = await gate.run(partial(prepare, body, reservation))  # decode, validate
            await gate.hold(reservation, len(body) + prepared.need)
            reservation.settle()  # from here on it only gives back
            content, headers = await gate.run(prepared.finish)  # compute, encode
        del prepared  # its arrays: only the answer and the body remain
        await gate.hold(reservation, len(body) + len(content))  # shrinks
        return Answer(content, headers, reservation)
    except BaseException:
        reservation.release()
        raise


async def answer(request: Request, operation: Operation) -> Response:
    """The answer to a request to ``operation``'s own route (/forward, /backward, ...)."""
    state = request.app.state
    content_type = request.headers.get("content-type")
    length = declared_length(request, state.settings, content_type)
    least, expected = reading_cost(length, length if is_json(content_type) else 0)
    preparing = partial(
        prepare,
        operation,
        content_type=content_type,
        accept=request.headers.get("accept"),
        query=dict(request.query_params),
        settings=state.settings,
    )
    return await serve(request, state.gate, least, expected, preparing)


@dataclass
class Prepared:
    """A decoded, validated request, and what it will hold until its answer is sent."""

    request: ConvRequest
    decoded: Decoded
    encoder: Codec
    need: int

    def finish(self) -> tuple[bytes, dict[str, str]]:
        outputs = compute(self.request, self.decoded.arrays)
        assert self.encoder.encode is not None
        content = self.encoder.encode(outputs, self.decoded.style)
        return content, {"content-type": self.encoder.media_type}


def memory_need(
    request: ConvRequest, arrays: Mapping[str, np.ndarray], answer_bytes: Callable[[Cost], int]
) -> int:
    """Decoded arrays, working memory, outputs and encoded answer of a validated request, in
    bytes; ``answer_bytes(cost)``: what the answer's encoding holds beside the outputs."""
    cost = request.cost
    decoded = sum(array.nbytes for array in arrays.values())
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
    encoder = choose_encoder(accept, operation)
    decoder, options = choose_decoder(content_type)
    assert decoder.decode is not None and encoder.encode is not None
    budget = Budget(
        settings.max_decoded_bytes,
        allowance=max(0, reservation.held - len(body)),
        reserve=reservation.take_now,
    )
    decoded = decoder.decode(body, operation, query, budget, options)
    if decoded.param_location == "body" and query:
        key = next(iter(query))
        raise InvalidInput(
            f"query parameter {key!r} is not read: with this Content-Type the "
            f"hyperparameters go in the body (the query is for application/x-npz)",
            loc=("query", key),
            type="extra_forbidden",
        )
    request = validate(operation, decoded, settings)
    need = memory_need(request, decoded.arrays, encoder.answer_bytes)
    return Prepared(request, decoded, encoder, need)


def validate(operation: Operation, decoded: Decoded, settings: Settings) -> ConvRequest:
    """The validated request: hyperparameters and the decoded arrays' specs checked against
    each other."""
    specs = {
        name: TensorSpec(shape=array.shape, dtype=array.dtype.name)
        for name, array in decoded.arrays.items()
    }
    return check(operation, decoded.params, specs, decoded, settings)


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
    context = {
        "text": sent is not None and sent.params_as_text,
        "limits": WorkLimits(settings.max_work_bytes, settings.max_gflop),
    }
    try:
        return request_model(operation).model_validate({**params, **specs}, context=context)
    except pydantic.ValidationError as exc:
        raise validation_errors(exc, location, parameters=HYPERPARAMETERS, drop=UNION_TAGS) from exc


def compute(request: ConvRequest, arrays: Mapping[str, np.ndarray]) -> dict[str, np.ndarray]:
    """The operation's outputs, by the engine, for the geometry the request was validated with."""
    operation = request.operation
    seconds = metrics.ENGINE_SECONDS.labels(operation.name)
    # Overflow to inf is an answer, not a warning: encoders report values JSON cannot carry.
    with np.errstate(all="ignore"), metrics.COMPUTING.track_inprogress(), seconds.time():
        return operation.run(request.geometry, arrays)
