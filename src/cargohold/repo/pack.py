"""Pack files: many encrypted blobs plus an encrypted header that lists them.

Layout of a pack (``data/<2 hex>/<sha256 of the pack>``)::

    blob 0 | blob 1 | ... | blob n-1 | AEAD(header, ad=AD_PACK_HEADER) | u32 LE header length

The header plaintext is ``b"CHPK" u8 version u8 type u32 count`` then per blob
``32-byte id, u32 stored length, u32 plaintext length``; offsets follow from the
lengths. A pack thus describes itself and the index can be rebuilt from packs alone.
"""

from __future__ import annotations

import hashlib
import struct
from typing import Protocol

from cargohold.errors import IntegrityError, UnsupportedFormat
from cargohold.repo.crypto import Cipher
from cargohold.repo.format import AD_PACK_HEADER, ID_SIZE, BlobType
from cargohold.repo.index import BlobEntry, PackRecord

_MAGIC = b"CHPK"
_HDR = struct.Struct("<4sBBI")
_ENTRY = struct.Struct("<32sII")
_TRAILER = struct.Struct("<I")
#: The largest header we accept when reading (guards against garbage lengths).
MAX_HEADER = 64 * 1024 * 1024


class Sink(Protocol):
    def write(self, data: bytes) -> None: ...


class PackStream:
    """A pack written to ``sink`` blob by blob as it is filled and hashed on the way; the
    sink is then published under :func:`pack_name` of the id. A worker process streams into
    a staged file (:meth:`LocalBackend.stage`), so nothing is buffered."""

    def __init__(self, btype: BlobType, sink: Sink) -> None:
        self.type = btype
        self.sink = sink
        self.entries: list[BlobEntry] = []
        self.size = 0
        self._sha = hashlib.sha256()

    def add(self, blob_id: bytes, stored: bytes, raw_length: int) -> None:
        self.sink.write(stored)
        self._sha.update(stored)
        self.entries.append(BlobEntry(blob_id, self.type, self.size, len(stored), raw_length))
        self.size += len(stored)

    def __len__(self) -> int:
        return len(self.entries)

    def finish(self, cipher: Cipher) -> tuple[bytes, PackRecord]:
        """Write the header and trailer; ``(pack id, record)``."""
        tail = _tail(cipher, self.type, self.entries)
        self.sink.write(tail)
        self._sha.update(tail)
        pack_id = self._sha.digest()
        return pack_id, PackRecord(pack_id, self.type, list(self.entries))


class _Buffer(bytearray):
    """One growing buffer: each blob is copied in once and can be freed at once. Growing
    a large bytearray moves no bytes (glibc's realloc remaps its pages), so this costs
    what joining a list of the blobs at the end cost, without holding the blobs and the
    joined pack side by side (16 MiB less at the peak of every worker uploading packs)."""

    def write(self, data: bytes) -> None:
        self += data


class PackBuilder:
    """A pack kept in memory until it is full (for backends written with one ``store``)."""

    def __init__(self, btype: BlobType) -> None:
        self.type = btype
        self._buffer = _Buffer()
        self._stream = PackStream(btype, self._buffer)
        self.entries = self._stream.entries

    def add(self, blob_id: bytes, stored: bytes, raw_length: int) -> None:
        self._stream.add(blob_id, stored, raw_length)

    @property
    def size(self) -> int:
        return self._stream.size

    def __len__(self) -> int:
        return len(self.entries)

    def finish(self, cipher: Cipher) -> tuple[bytes, bytearray, PackRecord]:
        """``(pack id, pack bytes, record)``; the builder must not be used afterwards."""
        pack_id, rec = self._stream.finish(cipher)
        data, self._buffer = self._buffer, _Buffer()
        return pack_id, data, rec


def _tail(cipher: Cipher, btype: BlobType, entries: list[BlobEntry]) -> bytes:
    """The sealed header listing ``entries`` and the trailer that gives its length."""
    header = bytearray(_HDR.pack(_MAGIC, 1, int(btype), len(entries)))
    for e in entries:
        header += _ENTRY.pack(e.id, e.length, e.raw_length)
    sealed = cipher.encrypt(bytes(header), AD_PACK_HEADER)
    return sealed + _TRAILER.pack(len(sealed))


def header_length(trailer: bytes, pack_size: int, *, what: str) -> int:
    if len(trailer) != _TRAILER.size:
        raise IntegrityError(f"{what}: truncated (no trailer)")
    n: int = _TRAILER.unpack(trailer)[0]
    if n <= Cipher.OVERHEAD or n > MAX_HEADER or n + _TRAILER.size > pack_size:
        raise IntegrityError(f"{what}: bad header length {n}")
    return n


def parse_header(cipher: Cipher, pack_id: bytes, sealed: bytes, data_size: int, *, what: str) -> PackRecord:
    """Decrypt and parse a pack header; ``data_size`` = bytes before the header."""
    try:
        plain = cipher.decrypt(sealed, AD_PACK_HEADER)
    except IntegrityError:
        raise IntegrityError(f"{what}: header authentication failed") from None
    try:
        magic, version, ptype, count = _HDR.unpack_from(plain, 0)
    except struct.error:
        raise IntegrityError(f"{what}: header too short") from None
    if magic != _MAGIC:
        raise IntegrityError(f"{what}: not a pack header")
    if version != 1:
        raise UnsupportedFormat(f"{what}: pack version {version} is not supported")
    if len(plain) != _HDR.size + count * _ENTRY.size:
        raise IntegrityError(f"{what}: header length does not match its {count} entries")
    try:
        btype = BlobType(ptype)
    except ValueError:
        raise IntegrityError(f"{what}: unknown blob type {ptype}") from None
    rec = PackRecord(pack_id, btype)
    off = 0
    pos = _HDR.size
    for _ in range(count):
        bid, length, raw = _ENTRY.unpack_from(plain, pos)
        pos += _ENTRY.size
        rec.blobs.append(BlobEntry(bid, btype, off, length, raw))
        off += length
    if off != data_size:
        raise IntegrityError(f"{what}: blobs cover {off} bytes, pack holds {data_size}")
    return rec


def read_pack_bytes(cipher: Cipher, pack_id: bytes, data: bytes, *, what: str) -> PackRecord:
    """Parse the header of a whole pack already in memory."""
    n = header_length(data[-_TRAILER.size :], len(data), what=what)
    start = len(data) - _TRAILER.size - n
    return parse_header(cipher, pack_id, data[start : len(data) - _TRAILER.size], start, what=what)


TRAILER_SIZE = _TRAILER.size
__all__ = ["ID_SIZE", "TRAILER_SIZE", "PackBuilder", "header_length", "parse_header", "read_pack_bytes"]
