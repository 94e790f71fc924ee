"""The header of a .npy file, read without ``ast``; and ``.npz`` archives read with it.

NumPy reads the header's Python-literal dict with ``ast.literal_eval``, whose AST
constructor is not thread-safe before CPython 3.11.8 (gh-106905): concurrent requests once
failed with ``SystemError: AST constructor recursion depth mismatch``. The header is a small,
fixed grammar, so it is parsed here with regular expressions, strictly: the three keys
NumPy writes, each once, and nothing else.
"""

from __future__ import annotations

import io
import re
import struct
import zipfile
from dataclasses import dataclass

import numpy as np

__all__ = ["NpyHeader", "load_npz", "parse_header"]

MAGIC = b"\x93NUMPY"
MAX_HEADER = 10_000
MAX_DIM_DIGITS = 12
# (length field format, text encoding) per format version
_VERSIONS = {1: ("<H", "latin1"), 2: ("<I", "latin1"), 3: ("<I", "utf8")}
_STRING = r"'([^'\\]{0,64})'|\"([^\"\\]{0,64})\""
_ENTRY = re.compile(
    rf"\s*(?:'|\")(descr|fortran_order|shape)(?:'|\")\s*:\s*"
    rf"(?:{_STRING}|(True|False)|\(([^()]{{0,400}})\)|(\[[^{{}}]{{0,2000}}?\]))\s*(,|\}})"
)
_DIM = re.compile(rf"\s*([0-9]{{1,{MAX_DIM_DIGITS}}})\s*")


@dataclass(frozen=True)
class NpyHeader:
    shape: tuple[int, ...]
    fortran_order: bool
    dtype: np.dtype | None  # None: a structured dtype (a list), which the service never reads
    data_offset: int


def parse_header(data: bytes) -> NpyHeader:
    """The header of the .npy file ``data``; ValueError with the reason for anything else."""
    if data[:6] != MAGIC or len(data) < 10:
        raise ValueError("it does not start with the .npy magic string")
    major, minor = data[6], data[7]
    if major not in _VERSIONS or minor != 0:
        raise ValueError(f"unsupported .npy format version ({major}, {minor})")
    length_format, encoding = _VERSIONS[major]
    start = 8 + struct.calcsize(length_format)
    (length,) = struct.unpack_from(length_format, data, 8)
    if length > MAX_HEADER:
        raise ValueError(f"the header is {length} bytes long, over the limit of {MAX_HEADER}")
    if start + length > len(data):
        raise ValueError("the header is cut short")
    text = data[start : start + length].decode(encoding).rstrip(" \n")
    return _parse_dict(text, start + length)


def _parse_dict(text: str, offset: int) -> NpyHeader:
    if not text.startswith("{"):
        raise ValueError("the header is not a dict")
    values: dict[str, object] = {}
    position, closed = 1, False
    while not closed:
        match = _ENTRY.match(text, position)
        if match is None:
            raise ValueError(f"the header cannot be read at {text[position : position + 30]!r}")
        key = match[1]
        if key in values:
            raise ValueError(f"the header names {key!r} twice")
        values[key] = _value(key, match)
        position, closed = match.end(), match[7] == "}"
        if not closed and text[position:].strip() == "}":
            closed, position = True, len(text)
    if position != len(text) or set(values) != {"descr", "fortran_order", "shape"}:
        raise ValueError("the header must hold exactly descr, fortran_order and shape")
    return NpyHeader(
        values["shape"],  # type: ignore[arg-type]
        values["fortran_order"],  # type: ignore[arg-type]
        values["descr"],  # type: ignore[arg-type]
        offset,
    )


def _value(key: str, match: re.Match[str]) -> object:
    string = match[2] if match[2] is not None else match[3]
    if key == "descr":
        if match[6] is not None:
            return None  # a list: a structured dtype
        if string is None:
            raise ValueError("descr must be a dtype string")
        try:
            return np.dtype(string)
        except TypeError as exc:
            raise ValueError(f"descr {string!r} is not a dtype") from exc
    if key == "fortran_order":
        if match[4] is None:
            raise ValueError("fortran_order must be True or False")
        return match[4] == "True"
    if match[5] is None:
        raise ValueError("shape must be a tuple of non-negative integers")
    parts = match[5].split(",")
    if parts[-1].strip() == "":
        parts = parts[:-1]
    dims = []
    for part in parts:
        dim = _DIM.fullmatch(part)
        if dim is None:
            raise ValueError(f"shape must be a tuple of non-negative integers, got ({match[5]})")
        dims.append(int(dim[1]))
    return tuple(dims)


def load_npz(data: bytes, limit: int | None = None) -> dict[str, np.ndarray]:
    """The arrays of an ``.npz`` archive (the service's answers), read without ``ast``, and
    never inflated beyond ``limit`` bytes in all (a small archive may claim gigabytes).

    ``np.load`` parses each member's header with ``ast.literal_eval``, which fails under
    threads on CPython before 3.11.8; the client reads answers from several threads at once.
    """
    arrays = {}
    with zipfile.ZipFile(io.BytesIO(data)) as archive:
        members = archive.infolist()
        claimed = sum(member.file_size for member in members)
        if limit is not None and claimed > limit:
            raise ValueError(f"its members hold {claimed} bytes, more than the {limit} expected")
        for member in members:  # zipfile reads no more of a member than its size says
            raw = archive.read(member)
            header = parse_header(raw)
            if header.dtype is None:
                raise ValueError(f"{member.filename} holds a structured array")
            count = 1
            for size in header.shape:
                count *= size
            array = np.frombuffer(raw, header.dtype, count=count, offset=header.data_offset)
            shaped = array.reshape(header.shape, order="F" if header.fortran_order else "C")
            arrays[member.filename.removesuffix(".npy")] = shaped
    return arrays
