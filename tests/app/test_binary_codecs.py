"""The .npz and .npy answers, written by hand, read back as NumPy's own files do."""

from __future__ import annotations

import io
import struct
import zipfile

import httpx
import numpy as np
import pytest

from app.codecs import Budget, npy, npz
from app.codecs.base import PIECE
from app.errors import ServiceError
from benchmarks.payloads import npy_bytes
from convengine import OPERATIONS
from convengine.npy_header import load_npz

SHAPES = {
    "one": [(1,)],
    "odd": [(2, 3, 5, 7)],
    "empty": [(1, 1, 0, 4)],
    "backward": [(3, 4, 5, 6), (7, 4, 3, 3), (7,)],
    "pieces": [(1, 3, 333, 337), (2,)],  # data in several pieces, the last one short
}


def _outputs(rng, dtype, shapes):
    outputs = {
        name: rng.standard_normal(shape).astype(dtype)
        for name, shape in zip(["dx", "dw", "db"], shapes)
    }
    outputs["dx"] = outputs["dx"][..., ::-1]  # not contiguous
    return outputs


@pytest.mark.parametrize("dtype", ["float32", "float64", ">f8"])
@pytest.mark.parametrize("shapes", SHAPES.values(), ids=SHAPES.keys())
def test_npz_answers_hold_what_savez_writes(rng, dtype, shapes):
    outputs = _outputs(rng, dtype, shapes)
    pieces = npz.encode(outputs)
    assert all(len(piece) <= PIECE for piece in pieces)  # never one buffer of the answer
    encoded = b"".join(pieces)
    with zipfile.ZipFile(io.BytesIO(encoded)) as archive:
        assert archive.testzip() is None  # every CRC right
        assert archive.namelist() == [f"{name}.npy" for name in outputs]
    savez = io.BytesIO()
    np.savez(savez, **outputs)
    with np.load(io.BytesIO(encoded)) as ours, np.load(io.BytesIO(savez.getvalue())) as numpys:
        for name in outputs:
            assert ours[name].dtype == numpys[name].dtype == outputs[name].dtype
            np.testing.assert_array_equal(ours[name], numpys[name])
            assert ours[name].tobytes() == outputs[name].tobytes()
    for name, array in load_npz(encoded).items():
        np.testing.assert_array_equal(array, outputs[name])


def test_npz_answers_past_zip32_sizes_are_left_to_numpy(rng, monkeypatch):
    outputs = _outputs(rng, "float32", SHAPES["backward"])
    monkeypatch.setattr(npz, "_ZIP32_LIMIT", 1000)
    savez = io.BytesIO()
    np.savez(savez, **outputs)
    assert b"".join(npz.encode(outputs)) == savez.getvalue()


@pytest.mark.parametrize("dtype", ["float32", "float64", ">f4"])
@pytest.mark.parametrize("shape", [(1,), (2, 3, 5, 7), (1, 1, 0, 4)])
def test_npy_answers_are_the_bytes_np_save_writes(rng, dtype, shape):
    out = rng.standard_normal(shape).astype(dtype)
    out = out[..., ::-1] if out.ndim > 1 else out
    saved = io.BytesIO()
    np.save(saved, out)
    assert b"".join(npy.encode({"out": out})) == saved.getvalue()


def _archive(x: np.ndarray, w: np.ndarray, how: str) -> bytes:
    stream = io.BytesIO()
    if how == "ours":
        return b"".join(npz.encode({"x": x, "w": w}))
    (np.savez_compressed if how == "compressed" else np.savez)(stream, x=x, w=w)
    return stream.getvalue()


def _corrupt(body: bytes, how: str) -> bytes:
    name_length, extra_length = struct.unpack_from("<HH", body, 26)  # of the first member
    data_of_x = 30 + name_length + extra_length + 50
    if how == "bit flipped":  # the CRC no longer matches
        return body[:data_of_x] + bytes([body[data_of_x] ^ 1]) + body[data_of_x + 1 :]
    if how == "local name":  # the local header names another file than the directory
        return body.replace(b"x.npy", b"y.npy", 1)
    if how == "local signature":
        return body.replace(b"PK\x03\x04", b"PK\x03\x05", 1)
    if how == "encrypted":  # flag bit 0 in the directory entry
        at = body.index(b"PK\x01\x02")
        return body[: at + 8] + bytes([body[at + 8] | 1]) + body[at + 9 :]
    if how == "cut":
        at = body.index(b"PK\x01\x02")
        return body[: at - 300] + body[at:]
    return body


def _npz_outcome(body: bytes, in_place: bool, monkeypatch) -> object:
    with monkeypatch.context() as patch:
        if not in_place:
            patch.setattr(npz, "_stored", lambda body, member: None)
        try:
            decoded = npz.decode(body, OPERATIONS["forward"], {}, Budget(1 << 30), {})
        except ServiceError as exc:
            return exc.status, exc.detail
    return {name: (a.dtype.str, a.shape, a.tobytes()) for name, a in decoded.arrays.items()}


@pytest.mark.parametrize("how", ["savez", "ours", "compressed"])
@pytest.mark.parametrize(
    "corruption", ["none", "bit flipped", "local name", "local signature", "encrypted", "cut"]
)
def test_npz_members_read_in_place_as_zipfile_reads_them(rng, how, corruption, monkeypatch):
    x, w = rng.standard_normal((2, 3, 9, 7)), rng.standard_normal((4, 3, 3, 3)).astype(">f4")
    body = _corrupt(_archive(x, w, how), corruption)
    outcome = _npz_outcome(body, True, monkeypatch)
    assert outcome == _npz_outcome(body, False, monkeypatch)
    assert isinstance(outcome, dict) == (corruption == "none"), outcome


@pytest.mark.parametrize("how", ["savez", "ours"])
def test_stored_npz_members_are_read_only_views_of_the_body(rng, how):
    x, w = rng.standard_normal((2, 3, 9, 7)), rng.standard_normal((4, 3, 3, 3))
    body = _archive(x, w, how)
    decoded = npz.decode(body, OPERATIONS["forward"], {}, Budget(1 << 30), {})
    for name, expected in {"x": x, "w": w}.items():
        array = decoded.arrays[name]
        np.testing.assert_array_equal(array, expected)
        assert not array.flags.writeable
        assert np.shares_memory(array, np.frombuffer(body, np.uint8))


def test_multipart_files_are_read_only_views_of_the_body(rng):
    x, w = rng.standard_normal((2, 3, 9, 7)), rng.standard_normal((4, 3, 3, 3)).astype(">f4")
    files = {name: (f"{name}.npy", npy_bytes(a)) for name, a in {"x": x, "w": w}.items()}
    sent = httpx.Request("POST", "http://convengine/", files=files, data={"padding": "1"})
    body, boundary = sent.read(), sent.headers["content-type"].split("boundary=")[1]
    decoded = npy.decode_multipart(
        body, OPERATIONS["forward"], {}, Budget(1 << 30), {"boundary": boundary}
    )
    assert decoded.params == {"padding": "1"}
    np.testing.assert_array_equal(decoded.arrays["w"], w)
    assert decoded.arrays["w"].dtype == np.float32  # made native: a copy
    x_read = decoded.arrays["x"]
    np.testing.assert_array_equal(x_read, x)
    assert not x_read.flags.writeable
    assert np.shares_memory(x_read, np.frombuffer(body, np.uint8))
