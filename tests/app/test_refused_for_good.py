"""A request that could never be answered is refused for good (4xx), not asked to retry
(503), even when there is no room to read its body: an .npz announces its arrays' shapes
before their data (app.codecs.npz.Members, app.pipeline._foresee)."""

from __future__ import annotations

import io
import itertools
import zipfile
from concurrent.futures import ThreadPoolExecutor

import httpx
import ml_dtypes
import numpy as np
import orjson
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from app.codecs.npz import Members, encode
from app.config import Settings
from app.errors import InvalidInput
from app.limits.memory import Reservation
from benchmarks.payloads import npy_bytes

from ..servers import start_service
from .conftest import serve

MiB = 1 << 20
NPZ = {"content-type": "application/x-npz"}


def _savez(compressed: bool = False, **arrays: np.ndarray) -> bytes:
    stream = io.BytesIO()
    (np.savez_compressed if compressed else np.savez)(stream, **arrays)
    return stream.getvalue()


def _announced(body: bytes, cuts: list[int] | None = None) -> Members:
    members = Members({})
    bounds = [0, *sorted(cuts or []), len(body)]
    for start, end in itertools.pairwise(bounds):
        members.feed(body[start:end])
    return members


ARRAYS = {
    "x": np.zeros((2, 3, 5, 7), np.float32),
    "w": np.zeros((4, 3, 3, 3), ">f8"),
    "b": np.zeros(4, ml_dtypes.bfloat16),
}


@settings(max_examples=60, deadline=None)
@given(compressed=st.booleans(), data=st.data())
def test_an_archive_announces_every_member_however_its_bytes_arrive(compressed, data):
    body = _savez(compressed, **ARRAYS)
    cuts = data.draw(st.lists(st.integers(0, len(body)), max_size=30))
    members = _announced(body, cuts)
    assert not members.lost and members.ended
    assert {name: (shape, dtype.name) for name, (shape, dtype) in members.specs.items()} == {
        name: (array.shape, array.dtype.name) for name, array in ARRAYS.items()
    }


def test_one_byte_at_a_time_and_the_services_own_answers_and_zip64():
    body = _savez(False, **ARRAYS)
    assert _announced(body, list(range(len(body)))).specs.keys() == ARRAYS.keys()
    own = _announced(b"".join(encode({"out": np.ones((1, 2, 3)), "dw": np.ones(5)})))
    assert own.ended and {k: v[0] for k, v in own.specs.items()} == {"out": (1, 2, 3), "dw": (5,)}
    stream = io.BytesIO()
    with zipfile.ZipFile(stream, "w") as archive:
        for name, array in ARRAYS.items():
            with archive.open(f"{name}.npy", "w", force_zip64=True) as member:
                member.write(npy_bytes(array))
    zip64 = _announced(stream.getvalue())
    assert not zip64.lost and zip64.specs["w"][0] == (4, 3, 3, 3)
    # Only the compressed size saturated: the zip64 field holds it alone. (np.savez saturates
    # both and writes both in a 20-byte field: rewrite the first member's header.)
    body = bytearray(_savez(False, x=ARRAYS["x"], w=ARRAYS["w"]))
    name_end = 30 + int.from_bytes(body[26:28], "little")
    assert int.from_bytes(body[28:30], "little") == 20
    size = body[name_end + 4 : name_end + 12]  # the uncompressed size, as large as the other
    extra = (1).to_bytes(2, "little") + (8).to_bytes(2, "little") + size
    body[22:26] = size[:4]  # the uncompressed size in the header itself
    body[28:30] = len(extra).to_bytes(2, "little")
    body[name_end : name_end + 20] = extra
    alone = _announced(bytes(body))
    assert not alone.lost and {k: v[0] for k, v in alone.specs.items()} == {
        "x": (2, 3, 5, 7),
        "w": (4, 3, 3, 3),
    }


class _Unseekable(io.RawIOBase):
    def __init__(self) -> None:
        self.data = bytearray()

    def writable(self) -> bool:
        return True

    def write(self, b) -> int:  # type: ignore[override]
        self.data += b
        return len(b)


def test_what_cannot_be_followed_is_lost_not_guessed():
    # Written to a stream that cannot seek back, a member's sizes come after its data.
    stream = _Unseekable()
    with zipfile.ZipFile(stream, "w") as archive:
        archive.writestr("x.npy", npy_bytes(ARRAYS["x"]))
    assert _announced(bytes(stream.data)).lost
    bz2 = io.BytesIO()
    with zipfile.ZipFile(bz2, "w", compression=zipfile.ZIP_BZIP2) as archive:
        archive.writestr("x.npy", npy_bytes(ARRAYS["x"]))
    assert _announced(bz2.getvalue()).lost
    assert _announced(b"not an archive at all, but long enough to be read").lost
    assert _announced(_savez(False, x=np.zeros((1,) * 9, np.float32))).lost  # over 8 axes
    objects = _savez(False, x=np.zeros(3, np.int64))
    assert _announced(objects).lost and not _announced(objects).specs
    twice = io.BytesIO()
    with zipfile.ZipFile(twice, "w") as archive:
        archive.writestr("x.npy", npy_bytes(ARRAYS["x"]))
        with pytest.warns(UserWarning, match="Duplicate name"):
            archive.writestr("x.npy", npy_bytes(ARRAYS["w"]))
    assert _announced(twice.getvalue()).lost
    # Cut short: nothing is announced from half a header.
    body = _savez(False, **ARRAYS)
    first = _announced(body[:40])
    assert not first.lost and not first.specs and not first.ended


@settings(max_examples=200, deadline=None)
@given(compressed=st.booleans(), data=st.data())
def test_hostile_bytes_are_lost_or_read_never_raise(compressed, data):
    body = bytearray(_savez(compressed, **ARRAYS))
    for _ in range(data.draw(st.integers(1, 8))):
        body[data.draw(st.integers(0, len(body) - 1))] = data.draw(st.integers(0, 255))
    cut = data.draw(st.integers(0, len(body)))
    members = _announced(bytes(body[:cut]), data.draw(st.lists(st.integers(0, cut), max_size=5)))
    for shape, dtype in members.specs.values():  # whatever was read is a shape and a dtype
        assert all(isinstance(n, int) and n >= 0 for n in shape) and isinstance(dtype, np.dtype)


# --- through the service: the budget held by others ------------------------------------------

BUDGET = Settings(memory_budget_mb=64, memory_wait=0.2)
# 8 MiB of x; with its work and answer (8 maps of 1022 x 1022) it would hold about 551 MiB.
NEVER = _savez(x=np.ones((1, 1, 1024, 1024)), w=np.ones((8, 1, 3, 3)))
TOO_MUCH_WORK = _savez(x=np.ones((1, 1, 1024, 1024)), w=np.ones((64, 1, 3, 3)))
SOON = _savez(x=np.ones((1, 1, 256, 256)), w=np.ones((2, 1, 3, 3)))
MISMATCHED = _savez(x=np.ones((1, 3, 256, 256)), w=np.ones((2, 2, 3, 3)))


def _never(nbytes: int) -> InvalidInput:
    raise AssertionError(f"{nbytes} bytes refused")


async def _held_and_free(
    body: bytes, query: str = "", headers: dict[str, str] = NPZ
) -> tuple[httpx.Response, httpx.Response]:
    """The answers to ``body`` while every byte of the budget is held, then with room."""
    async with serve(BUDGET) as client:
        gate = client._transport.app.state.gate  # type: ignore[attr-defined]
        hold = Reservation(gate.memory)
        await hold.resize(gate.memory.total, _never)
        try:
            held = await client.post(f"/forward{query}", content=body, headers=headers)
        finally:
            hold.release()
        free = await client.post(f"/forward{query}", content=body, headers=headers)
    return held, free


def _multipart(fields: dict[str, str], **arrays: np.ndarray) -> tuple[bytes, dict[str, str]]:
    """A multipart body with the arrays first and the fields after them."""
    files = {name: (f"{name}.npy", npy_bytes(array)) for name, array in arrays.items()}
    built = httpx.Request("POST", "http://x/", files=files, data=fields)
    return built.read(), {"content-type": built.headers["content-type"]}


MULTIPARTS = {
    "beyond-the-budget": _multipart(
        {"stride": "1"}, x=np.ones((1, 1, 1024, 1024)), w=np.ones((8, 1, 3, 3))
    ),
    "mismatched": _multipart({}, x=np.ones((1, 3, 256, 256)), w=np.ones((2, 2, 3, 3))),
    "bad-field-last": _multipart(
        {"stride": "0"}, x=np.ones((1, 1, 256, 256)), w=np.ones((2, 1, 3, 3))
    ),
}


@pytest.mark.anyio
@pytest.mark.parametrize("case", MULTIPARTS)
async def test_a_multipart_body_is_refused_for_good_once_its_fields_have_arrived(case):
    body, headers = MULTIPARTS[case]
    held, free = await _held_and_free(body, headers=headers)
    assert free.status_code == 422, free.text
    assert (held.status_code, held.json()) == (free.status_code, free.json())


def test_a_multipart_body_announces_its_arrays_and_fields_at_its_end():
    from app.codecs.npy import Parts
    from convengine import OPERATIONS

    forward = OPERATIONS["forward"]
    body, headers = _multipart({"stride": "2", "padding": ""}, **ARRAYS)
    boundary = headers["content-type"].split("boundary=")[1]
    parts = Parts(forward, {}, {"boundary": boundary})
    for i in range(len(body)):
        parts.feed(body[i : i + 1])
        assert parts.ended or not parts.specs  # nothing before the closing boundary
    assert parts.ended and not parts.lost
    assert {k: v[0] for k, v in parts.specs.items()} == {k: a.shape for k, a in ARRAYS.items()}
    assert parts.sent.params == {"stride": "2"}  # a blank field is absent
    unknown, headers = _multipart({}, x=np.ones((1, 1, 2, 2)), q=np.ones(2))
    lost = Parts(forward, {}, {"boundary": headers["content-type"].split("boundary=")[1]})
    lost.feed(unknown)
    assert lost.lost  # an array forward does not take: the decoder names it
    assert Parts(forward, {}, {}).lost  # no boundary: the decoder names it


@pytest.mark.anyio
@pytest.mark.parametrize(
    "body",
    [NEVER, TOO_MUCH_WORK, MISMATCHED],
    ids=["beyond-the-budget", "beyond-the-work-limit", "mismatched"],
)
async def test_a_request_that_could_never_be_answered_is_refused_as_it_would_be_with_room(body):
    held, free = await _held_and_free(body)
    assert free.status_code == 422, free.text
    assert held.status_code == 422, held.text
    assert held.json() == free.json()
    assert "retry-after" not in held.headers


@pytest.mark.anyio
async def test_the_refusal_names_the_budget_and_what_the_request_would_hold():
    held, _ = await _held_and_free(NEVER, "?stride=1")
    (detail,) = held.json()["detail"]
    assert detail["type"] == "memory_budget"
    assert "memory budget of 64 MiB" in detail["msg"] and "about 551 MiB" in detail["msg"]


@pytest.mark.anyio
async def test_a_request_that_fits_the_budget_is_still_asked_to_come_back():
    held, free = await _held_and_free(SOON)
    assert held.status_code == 503 and held.headers["retry-after"] == "1", held.text
    assert free.status_code == 200


@pytest.mark.anyio
async def test_json_bodies_say_nothing_before_they_are_whole():
    async with serve(BUDGET) as client:
        gate = client._transport.app.state.gate  # type: ignore[attr-defined]
        hold = Reservation(gate.memory)
        await hold.resize(gate.memory.total, _never)
        try:
            response = await client.post(
                "/forward", json={"x": [[[[1.0] * 4096]]], "w": [[[[1.0]]]]}
            )
        finally:
            hold.release()
    assert response.status_code == 503


def test_concurrent_bodies_that_could_never_fit_are_all_refused_for_good(tmp_path):
    """The issue's case, scaled down: a dozen 8 MiB archives at once, each needing about
    551 MiB, on a 64 MiB budget that can read three of them at a time."""
    service = start_service(tmp_path, memory_budget_mb="64", memory_wait="1")
    try:
        service.wait_ready()

        def post(_: int) -> httpx.Response:
            return httpx.post(f"{service.url}/forward", content=NEVER, headers=NPZ, timeout=60)

        with ThreadPoolExecutor(12) as pool:
            answers = list(pool.map(post, range(12)))
        statuses = sorted(answer.status_code for answer in answers)
        assert statuses == [422] * 12, [a.text[:200] for a in answers if a.status_code != 422]
        assert all(a.json()["detail"][0]["type"] == "memory_budget" for a in answers)
        small = _savez(x=np.ones((1, 1, 4, 4)), w=np.ones((1, 1, 3, 3)))
        assert httpx.post(f"{service.url}/forward", content=small, headers=NPZ).status_code == 200
    finally:
        service.stop()


# --- the inference protocol's binary data: its JSON header comes first -----------------------


def _infer(model: str, **arrays: np.ndarray) -> tuple[str, bytes, dict[str, str]]:
    inputs = [
        {
            "name": name,
            "shape": list(array.shape),
            "datatype": "FP64",
            "parameters": {"binary_data_size": array.nbytes},
        }
        for name, array in arrays.items()
    ]
    header = orjson.dumps({"inputs": inputs, "parameters": {"padding": "0"}})
    body = header + b"".join(array.astype("<f8").tobytes() for array in arrays.values())
    headers = {
        "content-type": "application/octet-stream",
        "inference-header-content-length": str(len(header)),
    }
    return f"/v2/models/{model}/infer", body, headers


INFERENCES = {
    "beyond-the-budget": _infer("conv2d", x=np.ones((1, 1, 1024, 1024)), w=np.ones((8, 1, 3, 3))),
    "mismatched": _infer("conv2d", x=np.ones((1, 3, 256, 256)), w=np.ones((2, 2, 3, 3))),
    "wrong-rank": _infer("conv1d", x=np.ones((1, 1, 1024, 1024)), w=np.ones((8, 1, 3, 3))),
}


@pytest.mark.anyio
@pytest.mark.parametrize("case", INFERENCES)
async def test_an_inference_that_could_never_run_is_refused_as_it_would_be_with_room(case):
    path, body, headers = INFERENCES[case]
    async with serve(BUDGET) as client:
        gate = client._transport.app.state.gate  # type: ignore[attr-defined]
        hold = Reservation(gate.memory)
        await hold.resize(gate.memory.total, _never)
        try:
            held = await client.post(path, content=body, headers=headers)
        finally:
            hold.release()
        free = await client.post(path, content=body, headers=headers)
        fits = _infer("conv2d", x=np.ones((1, 1, 256, 256)), w=np.ones((2, 1, 3, 3)))
        await hold.resize(gate.memory.total, _never)
        try:
            busy = await client.post(fits[0], content=fits[1], headers=fits[2])
        finally:
            hold.release()
    assert free.status_code in (400, 422), free.text
    assert (held.status_code, held.json()) == (free.status_code, free.json())
    if case == "beyond-the-budget":
        assert "memory budget of 64 MiB" in held.json()["error"]
    assert busy.status_code == 503 and busy.headers["retry-after"] == "1"
