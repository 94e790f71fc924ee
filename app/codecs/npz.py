"""application/x-npz: one .npz archive (plain or compressed) holding the arrays by name.

Hyperparameters travel in the query string. Member sizes are checked against the budget from
the archive's directory before anything is inflated, and reads are bounded all the same, since
a directory can lie.
"""

from __future__ import annotations

import io
import struct
import zipfile
from typing import Any

import numpy as np
from isal.isal_zlib import crc32

from app.errors import BadRequest, InvalidInput
from convengine import Operation

from .base import (
    Budget,
    Codec,
    Decoded,
    Fields,
    TensorStyle,
    check_known,
    check_names,
    npy_parts,
    read_npy,
)

__all__ = ["CODEC", "decode", "encode"]

MAX_MEMBERS = 16
# A directory entry is 46 bytes plus its name, extra field and comment: 64 KiB holds
# MAX_MEMBERS entries with room to spare, and nothing a client means to send is larger.
MAX_DIRECTORY_BYTES = 64 * 1024
_EOCD = b"PK\x05\x06"  # end of central directory record: 22 bytes and a comment
_ZIP64_LOCATOR = b"PK\x06\x07"  # 20 bytes, just before the end record
_ZIP64_EOCD = b"PK\x06\x06"  # 56 bytes and an extensible data sector
# What encode writes: stored members dated 1980-01-01 00:00 (as np.savez dates them), made
# on Unix, readable by the owner only; beyond 4 GiB the archive needs zip64 and NumPy.
_LOCAL_SIGNATURE = b"PK\x03\x04"
_CENTRAL_SIGNATURE = b"PK\x01\x02"
_LOCAL = struct.Struct("<4s5H3L2H")
_CENTRAL = struct.Struct("<4s6H3L5H2L")
_EOCD_STRUCT = struct.Struct("<4s4H2LH")
_DOS_1980 = (0, (0 << 9) | (1 << 5) | 1)  # time, date
_MADE_BY = (3 << 8) | 20
_EXTERNAL_ATTR = 0o600 << 16
_ZIP32_LIMIT = 0xFFFFFFFF
# Read in place: general purpose flags (after the signature and version) and the name's
# and extra field's lengths of a local header; members encrypted (bit 0), patched (5) or
# strongly encrypted (6) are left to zipfile, which refuses them.
_LOCAL_TAIL = struct.Struct("<H18xHH")
_UNREAD_FLAGS = 0x1 | 0x20 | 0x40
_UTF8_NAME = 0x800


def decode(
    body: bytes, operation: Operation, query: Fields, budget: Budget, options: Fields
) -> Decoded:
    _check_directory(body)
    try:
        archive = zipfile.ZipFile(io.BytesIO(body))
    except Exception as exc:  # zipfile raises a zoo of types on hostile bytes
        raise BadRequest(f"the body is not a valid .npz (zip) archive: {exc}") from exc
    with archive:
        members = archive.infolist()
        if len(members) > MAX_MEMBERS:
            raise InvalidInput(
                f"the archive holds {len(members)} members; at most {MAX_MEMBERS} are read"
            )
        arrays: dict[str, np.ndarray] = {}
        for member in members:
            name = member.filename.removesuffix(".npy")
            if name in arrays:
                raise InvalidInput(f"the archive holds {name!r} twice", loc=("body", name))
            check_known(name, operation)
            budget.take(member.file_size, name)
            # Charged above, from the directory, before inflating.
            data: bytes | memoryview | None = _stored(body, member)
            if data is None:
                data = _read_member(archive, member, name)
            arrays[name] = read_npy(data, name, None)
    check_names(arrays, operation)
    return Decoded(arrays, dict(query), "file", param_location="query", params_as_text=True)


def _check_directory(body: bytes) -> None:
    """The central directory's size and entry count, from its end record, within bounds.

    ``zipfile`` reads the whole directory into objects before anyone can count them: two
    million entries cost seconds and hundreds of MiB. The end record (zip64's, when the
    classic one is saturated) says both numbers in a few bytes; they are checked first.
    """
    start = body.rfind(_EOCD, max(0, len(body) - 22 - 0xFFFF))
    if start < 0 or len(body) - start < 22:
        raise BadRequest("the body is not a valid .npz (zip) archive: no end of central directory")
    entries, size = struct.unpack_from("<xxxxxxxxxxHI", body, start)
    if entries == 0xFFFF or size == 0xFFFFFFFF:
        entries, size = _zip64_directory(body, start)
    if entries > MAX_MEMBERS:
        raise InvalidInput(
            f"the archive's directory declares {entries} members; at most {MAX_MEMBERS} are read"
        )
    if size > MAX_DIRECTORY_BYTES or size > len(body):
        raise InvalidInput(
            f"the archive's central directory declares {size} bytes; at most "
            f"{min(MAX_DIRECTORY_BYTES, len(body))} are read"
        )


def _zip64_directory(body: bytes, eocd: int) -> tuple[int, int]:
    """Entry count and directory size from the zip64 end record the locator points to."""
    locator = eocd - 20
    if locator < 0 or body[locator : locator + 4] != _ZIP64_LOCATOR:
        raise BadRequest("the body is not a valid .npz (zip) archive: zip64 locator missing")
    (offset,) = struct.unpack_from("<Q", body, locator + 8)
    if offset + 56 > locator or body[offset : offset + 4] != _ZIP64_EOCD:
        raise BadRequest("the body is not a valid .npz (zip) archive: zip64 end record missing")
    entries, size = struct.unpack_from("<QQ", body, offset + 32)
    return int(entries), int(size)


def _stored(body: bytes, member: zipfile.ZipInfo) -> memoryview | None:
    """A stored member's bytes as a view of the body (no copy), when its local header and
    CRC agree with the directory; otherwise None, and zipfile reads it (and names the fault).
    """
    start = member.header_offset
    if (
        member.compress_type != zipfile.ZIP_STORED
        or member.flag_bits & _UNREAD_FLAGS
        or member.compress_size != member.file_size
        or body[start : start + 4] != _LOCAL_SIGNATURE
        or start + 30 > len(body)
    ):
        return None
    flags, name_length, extra_length = _LOCAL_TAIL.unpack_from(body, start + 6)
    name = body[start + 30 : start + 30 + name_length]
    data_start = start + 30 + name_length + extra_length
    data = memoryview(body)[data_start : data_start + member.file_size]
    try:
        named = name.decode("utf-8" if flags & _UTF8_NAME else "cp437") == member.orig_filename
    except UnicodeDecodeError:
        return None
    if not named or len(data) != member.file_size or crc32(data) != member.CRC:
        return None
    return data


def _read_member(archive: zipfile.ZipFile, member: zipfile.ZipInfo, name: str) -> bytes:
    try:
        with archive.open(member) as stream:
            data = stream.read(member.file_size + 1)
    except Exception as exc:  # corrupt data, unknown compression, encryption, bad CRC...
        raise BadRequest(
            f"{name} in the archive is corrupt or unreadable: {exc}", loc=("body", name)
        ) from exc
    if len(data) != member.file_size:
        raise BadRequest(
            f"{name} in the archive inflates to more than the {member.file_size} bytes its "
            f"directory declares",
            loc=("body", name),
        )
    return data


def encode(outputs: dict[str, np.ndarray], style: TensorStyle = "file") -> bytes:
    """The outputs as an uncompressed .npz, written in one pass (np.savez copies each array
    three times through zipfile and a growing buffer)."""
    files = [(f"{name}.npy".encode(), *npy_parts(array)) for name, array in outputs.items()]
    pieces: list[bytes | memoryview] = []
    directory = []
    offset = 0
    for name, header, data in files:
        size = len(header) + data.nbytes
        if offset + size + 128 >= _ZIP32_LIMIT:  # zip64 territory: left to NumPy
            stream = io.BytesIO()
            np.savez(stream, allow_pickle=False, **outputs)
            return stream.getvalue()
        crc = crc32(data, crc32(header))
        local = _LOCAL.pack(_LOCAL_SIGNATURE, 20, 0, 0, *_DOS_1980, crc, size, size, len(name), 0)
        directory.append(
            _CENTRAL.pack(
                _CENTRAL_SIGNATURE,
                _MADE_BY,
                20,
                0,
                0,
                *_DOS_1980,
                crc,
                size,
                size,
                len(name),
                0,
                0,
                0,
                0,
                _EXTERNAL_ATTR,
                offset,
            )
            + name
        )
        pieces += (local, name, header, data)
        offset += len(local) + len(name) + size
    central = b"".join(directory)
    end = _EOCD_STRUCT.pack(_EOCD, 0, 0, len(files), len(files), len(central), offset, 0)
    return b"".join([*pieces, central, end])


def _request_doc(operation: Operation) -> dict[str, Any]:
    return {
        "schema": {
            "type": "string",
            "format": "binary",
            "description": f".npz archive holding {', '.join(operation.inputs)} "
            f"({', '.join(sorted(operation.optional)) or 'none'} optional); "
            "hyperparameters in the query",
        }
    }


def _response_doc(operation: Operation) -> dict[str, Any]:
    return {
        "schema": {
            "type": "string",
            "format": "binary",
            "description": f".npz archive holding {', '.join(operation.outputs)}",
        }
    }


CODEC = Codec(
    "application/x-npz",
    decode=decode,
    encode=encode,
    request_doc=_request_doc,
    response_doc=_response_doc,
    query_parameters=True,
)
