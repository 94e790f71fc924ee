"""The .npy header parser that replaces NumPy's ast-based one (gh-106905)."""

from __future__ import annotations

import io
import struct
from concurrent.futures import ThreadPoolExecutor

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from convengine.npy_header import load_npz, parse_header

DTYPES = ["<f4", ">f4", "<f8", ">f8", "<i8", "|u1", "|b1", "<c16", "<f2", "|O"]


def _saved(array: np.ndarray, version: tuple[int, int] | None = None) -> bytes:
    stream = io.BytesIO()
    if version is None:
        np.save(stream, array, allow_pickle=False)
    else:
        np.lib.format.write_array(stream, array, version=version, allow_pickle=False)
    return stream.getvalue()


def _numpy_header(data: bytes):
    stream = io.BytesIO(data)
    version = np.lib.format.read_magic(stream)
    reader = {
        (1, 0): np.lib.format.read_array_header_1_0,
        (2, 0): np.lib.format.read_array_header_2_0,
    }[version]
    shape, fortran, dtype = reader(stream)
    return shape, fortran, dtype, stream.tell()


@settings(max_examples=200, deadline=None)
@given(
    shape=st.lists(st.integers(0, 5), max_size=6).map(tuple),
    dtype=st.sampled_from([d for d in DTYPES if d != "|O"]),
    fortran=st.booleans(),
    version=st.sampled_from([(1, 0), (2, 0)]),
)
def test_agrees_with_numpy(shape, dtype, fortran, version):
    array = np.zeros(shape, dtype=dtype, order="F" if fortran else "C")
    data = _saved(array, version)
    header = parse_header(data)
    expected_shape, expected_fortran, expected_dtype, offset = _numpy_header(data)
    assert header.shape == expected_shape
    assert header.fortran_order == expected_fortran
    assert header.dtype == expected_dtype
    assert header.data_offset == offset


def test_structured_dtypes_are_recognised_not_read():
    data = _saved(np.zeros(3, dtype=[("a", "<f4"), ("b", [("c", "<f8")])]))
    assert parse_header(data).dtype is None


def _with_header(text: str) -> bytes:
    raw = text.encode("latin1")
    return b"\x93NUMPY\x01\x00" + struct.pack("<H", len(raw)) + raw


@pytest.mark.parametrize(
    "text",
    [
        "{'descr': '<f8', 'fortran_order': False, 'shape': (-2, -3), }",
        "{'descr': '<f8', 'fortran_order': False, 'shape': (2, 3), 'extra': 1, }",
        "{'descr': '<f8', 'descr': '<f4', 'fortran_order': False, 'shape': (2,), }",
        "{'descr': '<f8', 'fortran_order': 0, 'shape': (2,), }",
        "{'descr': '<f8', 'fortran_order': False, 'shape': (2.5,), }",
        "{'descr': '<f8', 'fortran_order': False, 'shape': (²,), }",
        "{'descr': '<f8', 'fortran_order': False, 'shape': (1" + "0" * 40 + ",), }",
        "{'descr': os.system('x'), 'fortran_order': False, 'shape': (2,), }",
        "{'descr': '<f8', 'fortran_order': False}",
        "['descr', '<f8']",
        "{'descr': 'not a dtype', 'fortran_order': False, 'shape': (2,), }",
    ],
)
def test_hostile_headers_are_refused(text):
    with pytest.raises(ValueError):
        parse_header(_with_header(text))


@pytest.mark.parametrize(
    "data",
    [b"", b"\x93NUMPY", b"\x93NUMPY\x09\x00\x00\x00", b"\x93NUMPY\x01\x00\xff\xff{", b"PK\x03\x04"],
)
def test_broken_framing_is_refused(data):
    with pytest.raises(ValueError):
        parse_header(data)


def test_other_writers_spacing_and_quotes():
    text = '{"shape": (4,3) , "fortran_order":True,"descr":"<f4"}'
    header = parse_header(_with_header(text))
    assert (header.shape, header.fortran_order, header.dtype) == ((4, 3), True, np.dtype("<f4"))


def test_many_threads_at_once():
    files = [_saved(np.zeros((i % 5, 3, i % 7), dtype="<f4")) for i in range(64)]
    with ThreadPoolExecutor(8) as pool:
        for _ in range(20):
            shapes = list(pool.map(lambda data: parse_header(data).shape, files))
            assert shapes == [(i % 5, 3, i % 7) for i in range(64)]


def test_load_npz_reads_what_numpy_writes_from_many_threads():
    rng = np.random.default_rng(0)
    arrays = {
        "out": rng.standard_normal((2, 3, 4, 5)).astype(np.float32),
        "db": rng.standard_normal(7),
        "dw": np.asfortranarray(rng.standard_normal((3, 4))),
    }
    stream = io.BytesIO()
    np.savez(stream, allow_pickle=False, **arrays)
    data = stream.getvalue()
    with ThreadPoolExecutor(8) as pool:
        for loaded in pool.map(lambda _: load_npz(data), range(64)):
            assert set(loaded) == set(arrays)
            for name, array in arrays.items():
                np.testing.assert_array_equal(loaded[name], array)
                assert loaded[name].dtype == array.dtype
