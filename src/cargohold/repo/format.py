"""Constants and byte-level codecs of the repository format (see docs/FORMAT.md).

Everything here is pure: no backend, no threads. A blob is encoded as::

    stored = AEAD(codec byte || payload, ad = blob type byte || blob id)

where ``payload`` is the zstd frame of the plaintext (codec 1) or the plaintext itself
(codec 0, used when zstd does not shrink it). Whole objects (index files, snapshots)
use the same scheme with a fixed associated data string per object kind.
"""

from __future__ import annotations

import enum
import hashlib
import threading

import zstandard

from cargohold.errors import IntegrityError
from cargohold.repo.crypto import Cipher

#: Repository format version written into ``config``.
FORMAT_VERSION = 1

#: Target size of a pack file; a pack is closed once it holds at least this much.
PACK_SIZE = 16 * 1024 * 1024

#: Size of the 32-byte ids (blob ids, pack ids, index and snapshot ids).
ID_SIZE = 32


class BlobType(enum.IntEnum):
    """What a blob holds; data and tree blobs never share a pack."""

    DATA = 0
    TREE = 1


class Codec(enum.IntEnum):
    RAW = 0
    ZSTD = 1


#: Associated data of whole objects (not blobs).
AD_PACK_HEADER = b"cargohold:pack-header"
AD_INDEX = b"cargohold:index"
AD_SNAPSHOT = b"cargohold:snapshot"

# zstd contexts are not thread safe: one per thread.
_local = threading.local()


def _compressor(level: int) -> zstandard.ZstdCompressor:
    cache: dict[int, zstandard.ZstdCompressor] | None = getattr(_local, "c", None)
    if cache is None:
        cache = {}
        _local.c = cache
    comp = cache.get(level)
    if comp is None:
        comp = zstandard.ZstdCompressor(level=level, write_content_size=True)
        cache[level] = comp
    return comp


def _decompressor() -> zstandard.ZstdDecompressor:
    d: zstandard.ZstdDecompressor | None = getattr(_local, "d", None)
    if d is None:
        d = zstandard.ZstdDecompressor()
        _local.d = d
    return d


def blob_ad(btype: BlobType, blob_id: bytes) -> bytes:
    return bytes((int(btype),)) + blob_id


def encode_payload(plaintext: bytes | memoryview, *, level: int, compress: bool = True) -> bytes:
    """``codec || payload``: zstd when it shrinks the data, raw otherwise."""
    if compress and len(plaintext) > 0:
        z = _compressor(level).compress(plaintext)
        if len(z) < len(plaintext):
            return b"\x01" + z
    return b"\x00" + bytes(plaintext)


def decode_payload(data: bytes, *, what: str, max_size: int | None = None) -> bytes:
    """Inverse of :func:`encode_payload`."""
    if not data:
        raise IntegrityError(f"{what}: empty payload")
    codec = data[0]
    if codec == Codec.RAW:
        return data[1:]
    if codec == Codec.ZSTD:
        try:
            if max_size is not None:
                return _decompressor().decompress(data[1:], max_output_size=max_size)
            return _decompressor().decompress(data[1:])
        except zstandard.ZstdError as err:
            raise IntegrityError(f"{what}: cannot decompress ({err})") from None
    raise IntegrityError(f"{what}: unknown codec {codec}")


def encode_blob(
    cipher: Cipher,
    btype: BlobType,
    blob_id: bytes,
    plaintext: bytes | memoryview,
    *,
    level: int,
    compress: bool = True,
) -> bytes:
    return cipher.encrypt(encode_payload(plaintext, level=level, compress=compress), blob_ad(btype, blob_id))


def decode_blob(cipher: Cipher, btype: BlobType, blob_id: bytes, stored: bytes, raw_length: int) -> bytes:
    what = f"{btype.name.lower()} blob {blob_id.hex()}"
    try:
        payload = cipher.decrypt(stored, blob_ad(btype, blob_id))
    except IntegrityError:
        raise IntegrityError(f"{what}: authentication failed") from None
    plain = decode_payload(payload, what=what, max_size=max(raw_length, 1))
    if len(plain) != raw_length:
        raise IntegrityError(f"{what}: length {len(plain)} != {raw_length}")
    return plain


def encode_object(cipher: Cipher, plaintext: bytes, ad: bytes, *, level: int = 3) -> bytes:
    return cipher.encrypt(encode_payload(plaintext, level=level), ad)


def decode_object(cipher: Cipher, stored: bytes, ad: bytes, *, what: str) -> bytes:
    try:
        payload = cipher.decrypt(stored, ad)
    except IntegrityError:
        raise IntegrityError(f"{what}: authentication failed (damaged or not ours)") from None
    return decode_payload(payload, what=what)


def sha256_hex(data: bytes | memoryview) -> str:
    return hashlib.sha256(data).hexdigest()


def pack_name(pack_id: bytes) -> str:
    h = pack_id.hex()
    return f"data/{h[:2]}/{h}"


def parse_hex_id(text: str) -> bytes | None:
    if len(text) != 2 * ID_SIZE:
        return None
    try:
        return bytes.fromhex(text)
    except ValueError:
        return None
