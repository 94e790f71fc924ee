"""Every service error has its gRPC status, and no bad input is answered UNKNOWN or INTERNAL."""

from __future__ import annotations

import grpc
import pytest

import app.errors
from app.errors import InvalidInput, Overloaded, ServiceError, Unauthorized
from app.rpc.status import CODES, status_of


def _subclasses(kind: type) -> list[type]:
    found = []
    for sub in kind.__subclasses__():
        found += [sub, *_subclasses(sub)]
    return found


ERRORS = [kind for kind in _subclasses(ServiceError) if kind.__module__ == app.errors.__name__]


@pytest.mark.parametrize("kind", ERRORS, ids=lambda kind: kind.__name__)
def test_every_error_class_has_a_code_of_its_own(kind):
    assert kind in CODES, f"{kind.__name__} has no gRPC status in app/rpc/status.py"
    code = status_of(kind("a message")).code
    assert code not in (grpc.StatusCode.UNKNOWN, grpc.StatusCode.INTERNAL, grpc.StatusCode.OK)


@pytest.mark.parametrize(
    "status, code",
    [
        (400, grpc.StatusCode.INVALID_ARGUMENT),
        (401, grpc.StatusCode.UNAUTHENTICATED),
        (404, grpc.StatusCode.NOT_FOUND),
        (413, grpc.StatusCode.RESOURCE_EXHAUSTED),
        (422, grpc.StatusCode.INVALID_ARGUMENT),
        (503, grpc.StatusCode.UNAVAILABLE),
    ],
)
def test_http_statuses_map_as_the_protocol_says(status, code):
    (kind,) = [kind for kind in ERRORS if kind.status == status]
    assert CODES[kind] == code


def test_a_subclass_takes_its_base_s_code():
    class Narrower(InvalidInput):
        pass

    assert status_of(Narrower("x")).code == grpc.StatusCode.INVALID_ARGUMENT


def test_details_are_rest_s_message_and_headers_become_trailing_metadata():
    busy = status_of(
        Overloaded(
            "all places are taken: retry shortly",
            loc=(),
            headers={"Retry-After": "1", "Connection": "close"},
        )
    )
    assert busy.code == grpc.StatusCode.UNAVAILABLE
    assert busy.details == "all places are taken: retry shortly"
    assert busy.trailing_metadata == (("retry-after", "1"),)  # Connection means nothing here
    wrong = InvalidInput.of(
        [{"loc": ["parameters", "stride"], "msg": "must be positive", "type": "value_error"}]
    )
    assert status_of(wrong).details == "stride: must be positive"
    key = status_of(Unauthorized("no key", headers={"WWW-Authenticate": "Bearer"}))
    assert key.trailing_metadata == (("www-authenticate", "Bearer"),)


def test_a_bare_service_error_is_a_bug_not_bad_input():
    assert status_of(ServiceError("?")).code == grpc.StatusCode.INTERNAL
