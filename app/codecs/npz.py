"""application/x-npz: one .npz archive (plain or compressed) holding the arrays by name.

Hyperparameters travel in the query string. Member sizes are checked against the budget from
the archive's directory before anything is inflated, and reads are bounded all the same, since
a directory can lie.
"""

from __future__ import annotations

import io
import struct
import zipfile
import zlib
from typing import Any

import numpy as np
from isal.isal_zlib import crc32

from app.errors import BadRequest, InvalidInput
from convengine import Operation
from convengine.npy_header import MAX_HEADER, parse_header

from .base import (
    Budget,
    Codec,
    Decoded,
    Fields,
    Pieces,
    TensorStyle,
    check_known,
    check_names,
    npy_parts,
    pieces_of,
    read_npy,
    readable,
)

__all__ = ["CODEC", "Members", "decode", "encode"]

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
    return _decoded(arrays, query)


def _decoded(arrays: dict[str, np.ndarray], query: Fields) -> Decoded:
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


_ZIP64_EXTRA = 0x0001
_DEFLATED = 8
_SIZES_AFTER_DATA = 0x8  # general purpose flag: sizes in a descriptor after the data
_NPY_PREFIX = 12  # magic, version and the longest length field


class Members:
    """The shapes and dtypes of an archive's members, read from the bytes as they arrive,
    holding only headers (app.pipeline reads what a body says before it has all arrived).

    Each local header and the start of its member's data (the .npy header, inflated when the
    member is deflated) are parsed; the rest of the data is passed over. Anything unusual (a
    member whose sizes come after its data, an unknown compression, a header that cannot be
    read) ends the reading: ``lost``; the decoder names the fault once the body is whole.
    """

    def __init__(self, query: Fields) -> None:
        self.query = query
        self.specs: dict[str, tuple[tuple[int, ...], np.dtype]] = {}
        self.lost = False
        self.ended = False  # the central directory has started: every member seen
        self._header = bytearray()  # the local header being read
        self._npy = bytearray()  # the start of the member's .npy
        self._inflate: Any = None  # a zlib decompressor for a deflated member
        self._name = ""
        self._left = 0  # data bytes of the member still to pass over
        self._in_data = False
        self._count = 0

    @property
    def sent(self) -> Decoded:
        """What the request sent besides its arrays: its hyperparameters, from the query."""
        return _decoded({}, self.query)

    def feed(self, piece: bytes | memoryview) -> None:
        view = memoryview(piece)
        while view and not (self.lost or self.ended):
            view = self._data(view) if self._in_data else self._local(view)

    def _local(self, view: memoryview) -> memoryview:
        wanted = 30 if len(self._header) < 30 else self._header_length()
        taken = min(len(view), wanted - len(self._header))
        self._header += view[:taken]
        if len(self._header) == 30:
            signature = bytes(self._header[:4])
            if signature != _LOCAL_SIGNATURE:
                self.ended = signature == _CENTRAL_SIGNATURE
                self.lost = not self.ended
                return view[taken:]
        if len(self._header) >= 30 and len(self._header) == self._header_length():
            self._start_member()
        return view[taken:]

    def _header_length(self) -> int:
        name_length, extra_length = struct.unpack_from("<HH", self._header, 26)
        return 30 + int(name_length) + int(extra_length)

    def _start_member(self) -> None:
        fields = _LOCAL.unpack_from(self._header)
        flags, method, compressed, name_length = fields[2], fields[3], fields[7], fields[9]
        name = bytes(self._header[30 : 30 + name_length])
        if compressed == _ZIP32_LIMIT:
            compressed = self._zip64_size(30 + name_length, fields[8] == _ZIP32_LIMIT)
        self._name = name.decode("utf-8" if flags & _UTF8_NAME else "cp437", "replace")
        self._name = self._name.removesuffix(".npy")
        self._count += 1
        if (
            flags & (_UNREAD_FLAGS | _SIZES_AFTER_DATA)
            or method not in (0, _DEFLATED)
            or self._name in self.specs
            or self._count > MAX_MEMBERS
        ):
            self.lost = True  # the decoder refuses these, or reads them whole
            return
        self._inflate = zlib.decompressobj(-15) if method == _DEFLATED else None
        self._left, self._in_data = compressed, True
        self._header.clear()
        self._npy.clear()

    def _zip64_size(self, start: int, after_size: bool) -> int:
        """The compressed size from the zip64 extra field, which holds the saturated sizes
        in order: the uncompressed one first when it is there too (``after_size``)."""
        end, skip = len(self._header), 8 if after_size else 0
        while start + 4 <= end:
            kind, length = struct.unpack_from("<HH", self._header, start)
            if kind == _ZIP64_EXTRA and length >= skip + 8 and start + 4 + length <= end:
                return int(struct.unpack_from("<Q", self._header, start + 4 + skip)[0])
            start += 4 + length
        return -1  # ends the reading: no size to pass over

    def _data(self, view: memoryview) -> memoryview:
        if self._left < 0:
            self.lost = True
            return view
        taken = min(len(view), self._left)
        data, self._left = view[:taken], self._left - taken
        if self._name not in self.specs:
            self._read_npy(data)
        if self._left == 0:
            self._in_data = False
        return view[taken:]

    def _read_npy(self, data: memoryview) -> None:
        room = _NPY_PREFIX + MAX_HEADER - len(self._npy)
        if room <= 0:
            self.lost = True
            return
        if self._inflate is None:
            self._npy += data[:room]
        else:
            try:
                self._npy += self._inflate.decompress(data, room)
            except zlib.error:
                self.lost = True
                return
        if len(self._npy) < _NPY_PREFIX:
            if self._left == 0:
                self.lost = True
            return
        try:
            header = parse_header(bytes(self._npy))
        except ValueError as exc:
            cut = "cut short" in str(exc) and len(self._npy) < _NPY_PREFIX + MAX_HEADER
            self.lost = not cut or self._left == 0
            return
        spec = readable(header)
        if spec is None or self._name in self.specs:
            self.lost = True
            return
        self.specs[self._name] = spec


def encode(outputs: dict[str, np.ndarray], style: TensorStyle = "file") -> Pieces:
    """The outputs as an uncompressed .npz, in pieces, each array's data copied once (np.savez
    copies each array three times through zipfile and a growing buffer)."""
    files = [(f"{name}.npy".encode(), *npy_parts(array)) for name, array in outputs.items()]
    pieces: Pieces = []
    directory = []
    offset = 0
    for name, header, data in files:
        size = len(header) + data.nbytes
        if offset + size + 128 >= _ZIP32_LIMIT:  # zip64 territory: left to NumPy
            stream = io.BytesIO()
            np.savez(stream, allow_pickle=False, **outputs)
            return [stream.getvalue()]
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
        pieces += (local + name + header, *pieces_of(data))
        offset += len(local) + len(name) + size
    central = b"".join(directory)
    end = _EOCD_STRUCT.pack(_EOCD, 0, 0, len(files), len(files), len(central), offset, 0)
    return [*pieces, central + end]


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
    announced=lambda operation, query, options: Members(query),
)
