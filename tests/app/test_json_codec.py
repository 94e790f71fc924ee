"""The JSON codec's base64 shortcuts read and write exactly what parsing everything did."""

from __future__ import annotations

import base64
import json

import numpy as np
import orjson
import pytest

from app.codecs import Budget
from app.codecs import json as json_codec
from app.codecs.base import PIECE
from app.errors import ServiceError
from convengine import OPERATIONS

FORWARD = OPERATIONS["forward"]
W = {"shape": [1, 1, 1, 1], "dtype": "float32", "b64": "AACAPw=="}  # [[[[1.0]]]]


def _b64(array: np.ndarray) -> str:
    return base64.b64encode(array.astype(array.dtype.newbyteorder("<")).tobytes()).decode()


def _tensor(array: np.ndarray) -> dict[str, object]:
    return {"shape": list(array.shape), "dtype": array.dtype.name, "b64": _b64(array)}


def _outcome(
    body: bytes, set_aside: bool, monkeypatch: pytest.MonkeyPatch, budget: int = 1 << 30
) -> object:
    """What decoding ``body`` gives: its arrays and parameters, or its error's status and detail."""
    with monkeypatch.context() as patch:
        if not set_aside:
            patch.setattr(json_codec, "_set_aside", lambda body, budget: None)
        try:
            decoded = json_codec.decode(body, FORWARD, {}, Budget(budget), {})
        except ServiceError as exc:
            return exc.status, exc.detail
    arrays = {name: (a.dtype.name, a.shape, a.tobytes()) for name, a in decoded.arrays.items()}
    return arrays, decoded.params, decoded.style


# Bodies the shortcut must read as parsing them whole did, errors included.
TRICKY = {
    "plain": b'{"x": %(x)s, "w": %(w)s, "padding": 0}',
    "no spaces, b64 first": b'{"x":{"b64":"AACAPwAAAEA=","dtype":"float32","shape":[1,1,1,2]},"w":%(w)s}',
    "spaces around the colon": b'{"x": {"shape": [1,1,1,2], "dtype": "float32", "b64" \n:\t "AACAPwAAAEA="}, "w": %(w)s}',
    "escaped slash": b'{"x": {"shape": [1,1,1,1], "dtype": "float32", "b64": "AAD\\/fw=="}, "w": %(w)s}',
    "unicode escape": b'{"x": {"shape": [1,1,1,1], "dtype": "float32", "b64": "\\u0041ACAPw=="}, "w": %(w)s}',
    "bad base64": b'{"x": {"shape": [1,1,1,1], "dtype": "float32", "b64": "@@@@"}, "w": %(w)s}',
    "non-ascii": '{"x": {"shape": [1,1,1,1], "dtype": "float32", "b64": "AACAPé=="}, "w": %(w)s}'.encode(),
    "invalid utf-8": b'{"x": {"shape": [1,1,1,1], "dtype": "float32", "b64": "AAC\xffPw=="}, "w": %(w)s}',
    "newline inside": b'{"x": {"shape": [1,1,1,1], "dtype": "float32", "b64": "AACA\nPw=="}, "w": %(w)s}',
    "wrong length": b'{"x": {"shape": [1,1,2,2], "dtype": "float32", "b64": "AACAPw=="}, "w": %(w)s}',
    "no padding": b'{"x": {"shape": [1,1,1,1], "dtype": "float32", "b64": "AACAPw"}, "w": %(w)s}',
    "empty": b'{"x": {"shape": [1,1,0,1], "dtype": "float32", "b64": ""}, "w": %(w)s}',
    "extra key": b'{"x": {"shape": [1,1,1,1], "dtype": "float32", "b64": "AACAPw==", "z": 1}, "w": %(w)s}',
    "b64 twice": b'{"x": {"shape": [1,1,1,1], "dtype": "float32", "b64": "AAAAAA==", "b64": "AACAPw=="}, "w": %(w)s}',
    "b64 in a hyperparameter": b'{"x": %(x)s, "w": %(w)s, "padding": {"b64": "AACAPw=="}}',
    "b64 as a top-level key": b'{"x": %(x)s, "w": %(w)s, "b64": "AACAPw=="}',
    "b64 in a nested list": b'{"x": [[[[{"b64": "AACAPw=="}]]]], "w": %(w)s}',
    "b64 inside a string": b'{"x": %(x)s, "w": %(w)s, "padding": "\\"b64\\": \\"AACAPw==\\""}',
    "key ends in b64": b'{"x": %(x)s, "w": %(w)s, "a\\"b64": "AACAPw=="}',
    "unterminated": b'{"x": {"shape": [1,1,1,1], "dtype": "float32", "b64": "AACAPw==',
    "stray quote after": b'{"x": {"shape": [1,1,1,1], "dtype": "float32", "b64": "AACAPw=="b64": "AA=="}, "w": %(w)s}',
    "invalid json after": b'{"x": %(x)s, "w": %(w)s, "padding": NaN}',
    "a list": b"[%(x)s]",
    "shape too large": b'{"x": {"shape": [1,1,1,99999999999], "dtype": "float32", "b64": "AACAPw=="}, "w": %(w)s}',
    "many b64 keys": b'{"x": %(x)s, "w": %(w)s, "pad": ['
    + b",".join([b'{"b64": "AA=="}'] * 20)
    + b"]}",
}


@pytest.mark.parametrize("body", TRICKY.values(), ids=TRICKY.keys())
def test_the_shortcut_reads_every_body_as_parsing_it_whole(body, monkeypatch):
    x = np.arange(6, dtype=np.float32).reshape(1, 1, 2, 3)
    body = body % {b"x": orjson.dumps(_tensor(x)), b"w": orjson.dumps(W)}
    assert _outcome(body, True, monkeypatch) == _outcome(body, False, monkeypatch)


@pytest.mark.parametrize("dtype", ["float32", "float64"])
@pytest.mark.parametrize("shape", [(1, 1, 1, 1), (2, 3, 5, 7), (1, 1, 0, 4), (1, 2, 3, 1)])
def test_random_arrays_come_back_through_the_shortcut(rng, dtype, shape, monkeypatch):
    x = rng.standard_normal(shape).astype(dtype)
    w = rng.standard_normal((2, shape[1], 1, 1)).astype(dtype)
    body = json.dumps({"x": _tensor(x), "w": _tensor(w), "stride": 1}, indent=2).encode()
    parsed: list[int] = []
    loads = orjson.loads
    monkeypatch.setattr(orjson, "loads", lambda text: parsed.append(len(text)) or loads(text))
    decoded = json_codec.decode(body, FORWARD, {}, Budget(1 << 30), {})
    assert parsed and parsed[0] < 400  # the base64 was set aside, not parsed
    np.testing.assert_array_equal(decoded.arrays["x"], x)
    np.testing.assert_array_equal(decoded.arrays["w"], w)
    assert decoded.arrays["x"].dtype == np.dtype(dtype)
    assert decoded.params == {"stride": 1} and decoded.style == "b64"
    monkeypatch.setattr(orjson, "loads", loads)
    assert _outcome(body, True, monkeypatch) == _outcome(body, False, monkeypatch)


@pytest.mark.parametrize("room", [0, 4, 63, 64, 67, 68])
def test_the_budget_is_charged_as_before(room, monkeypatch):
    x = np.zeros((1, 1, 4, 4), np.float32)  # 64 bytes, and w 4
    body = orjson.dumps({"x": _tensor(x), "w": W})
    outcome = _outcome(body, True, monkeypatch, room)
    assert outcome == _outcome(body, False, monkeypatch, room)
    if room < 68:
        assert outcome[0] == 413 and outcome[1][0]["loc"] == ["body", "x" if room < 64 else "w"]


def test_nothing_is_decoded_beyond_the_budget():
    x = np.zeros((1, 1, 4, 4), np.float32)
    body = orjson.dumps({"x": _tensor(x), "w": W})
    # 88 and 8 characters of base64: at most 66 and 6 bytes, before their padding is known
    assert json_codec._set_aside(body, 71) is None
    assert json_codec._set_aside(body, 72) is not None


def _encoded_whole(outputs: dict[str, np.ndarray]) -> bytes:
    """The b64 answer as orjson wrote it whole, before the base64 was set aside."""
    document = {
        name: {
            "shape": list(a.shape),
            "dtype": a.dtype.name,
            "b64": base64.b64encode(
                np.ascontiguousarray(a).astype(a.dtype.newbyteorder("<"))
            ).decode(),
        }
        for name, a in outputs.items()
    }
    return orjson.dumps(document)


@pytest.mark.parametrize("dtype", ["float32", "float64", ">f4", ">f8"])
@pytest.mark.parametrize(
    "shapes",
    [
        [(1,)],
        [(2, 3, 5, 7)],
        [(1, 1, 0, 4)],
        [(3, 4, 5, 6), (7, 4, 3, 3), (7,)],
        [(1, 1, 1, 5)],
        [(1, 3, 333, 337), (2,)],  # written in several pieces, the last one short
    ],
    ids=["one", "odd", "empty", "backward", "padded", "pieces"],
)
def test_b64_answers_are_the_bytes_orjson_wrote(rng, dtype, shapes):
    outputs = {
        name: rng.standard_normal(shape).astype(dtype)
        for name, shape in zip(["dx", "dw", "db"], shapes)
    }
    outputs["dx"] = outputs["dx"][..., ::-1]  # not contiguous
    pieces = json_codec.encode(outputs, "b64")
    assert all(len(piece) <= PIECE for piece in pieces)
    encoded = b"".join(pieces)
    assert encoded == _encoded_whole(outputs)
    for name, value in orjson.loads(encoded).items():
        raw = base64.b64decode(value["b64"])
        back = np.frombuffer(raw, np.dtype(value["dtype"]).newbyteorder("<"))
        np.testing.assert_array_equal(back.reshape(value["shape"]), outputs[name])
