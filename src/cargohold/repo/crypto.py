"""Keys, blob ids and authenticated encryption of the repository.

* :class:`MasterKey` — random per repository: an AES-256-GCM key, a key for the
  keyed BLAKE3 blob ids and the seed of the content-defined chunker. It is only ever
  stored wrapped by a password-derived key (:mod:`cargohold.repo.keys`).
* :func:`blob_id` — keyed BLAKE3-256 of the plaintext: equal data gives equal ids in
  one repository (deduplication) while ids reveal nothing about the data to anyone
  without the key (no confirmation-of-file attacks on the stored names).
* :class:`Cipher` — AES-256-GCM with a random 96-bit nonce per message; the output is
  ``nonce || ciphertext || tag``. The associated data binds a ciphertext to its place
  (blob type and id), so a blob swapped for another one fails authentication.

Random 96-bit nonces keep the GCM collision bound (2**-32) up to about 2**32
messages per key, i.e. 2**32 blobs: far beyond one repository's lifetime at a
minimum blob size of hundreds of bytes and petabytes of data.
"""

from __future__ import annotations

import os
import secrets
import struct
from dataclasses import dataclass

import blake3
from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives.ciphers.aead import AESGCM

from cargohold.errors import IntegrityError, UnsupportedFormat

KEY_LEN = 32
NONCE_LEN = 12
TAG_LEN = 16
_MASTER_MAGIC = b"CHMK"
_MASTER_VERSION = 1
_MASTER_FMT = f">4sB{KEY_LEN}s{KEY_LEN}sI"
MASTER_KEY_SIZE = struct.calcsize(_MASTER_FMT)


@dataclass(frozen=True)
class MasterKey:
    enc_key: bytes
    id_key: bytes
    chunker_seed: int

    def __post_init__(self) -> None:
        if len(self.enc_key) != KEY_LEN or len(self.id_key) != KEY_LEN:
            raise ValueError("master key parts must be 32 bytes")
        if not 0 <= self.chunker_seed < 2**31:
            raise ValueError("chunker seed out of range")

    def __repr__(self) -> str:  # never print key material
        return "MasterKey(<secret>)"

    @classmethod
    def generate(cls) -> MasterKey:
        return cls(
            enc_key=secrets.token_bytes(KEY_LEN),
            id_key=secrets.token_bytes(KEY_LEN),
            chunker_seed=secrets.randbelow(2**31),
        )

    def to_bytes(self) -> bytes:
        """``"CHMK" | version u8 | enc_key 32 | id_key 32 | chunker_seed u32 BE`` (73 bytes)."""
        return struct.pack(_MASTER_FMT, _MASTER_MAGIC, _MASTER_VERSION, self.enc_key, self.id_key, self.chunker_seed)

    @classmethod
    def from_bytes(cls, b: bytes) -> MasterKey:
        if len(b) < 5 or b[:4] != _MASTER_MAGIC:
            raise IntegrityError("malformed master key")
        if b[4] != _MASTER_VERSION:
            raise UnsupportedFormat(f"master key format version {b[4]} is not known")
        if len(b) != MASTER_KEY_SIZE:
            raise IntegrityError(f"malformed master key ({len(b)} bytes)")
        _magic, _version, enc_key, id_key, seed = struct.unpack(_MASTER_FMT, b)
        try:
            return cls(enc_key=enc_key, id_key=id_key, chunker_seed=seed)
        except ValueError as err:
            raise IntegrityError(f"malformed master key: {err}") from None


def blob_id(key: MasterKey, data: bytes | memoryview) -> bytes:
    """Keyed BLAKE3-256 of ``data`` (32 bytes)."""
    return blake3.blake3(data, key=key.id_key).digest()


class Cipher:
    """AES-256-GCM; ``encrypt`` returns ``nonce(12) || ciphertext || tag(16)``."""

    OVERHEAD: int = NONCE_LEN + TAG_LEN

    def __init__(self, key: MasterKey) -> None:
        self._aead = AESGCM(key.enc_key)

    def encrypt(self, plaintext: bytes | memoryview, ad: bytes) -> bytes:
        return _seal(self._aead, plaintext, ad)

    def decrypt(self, data: bytes | memoryview, ad: bytes) -> bytes:
        return _open(self._aead, data, ad)


def seal_with_key(raw_key: bytes, plaintext: bytes | memoryview, ad: bytes) -> bytes:
    """Like :meth:`Cipher.encrypt` with a raw 32-byte key (key slots wrap the master key)."""
    return _seal(AESGCM(raw_key), plaintext, ad)


def open_with_key(raw_key: bytes, data: bytes | memoryview, ad: bytes) -> bytes:
    """Like :meth:`Cipher.decrypt` with a raw 32-byte key; raises IntegrityError."""
    return _open(AESGCM(raw_key), data, ad)


def _seal(aead: AESGCM, plaintext: bytes | memoryview, ad: bytes) -> bytes:
    nonce = os.urandom(NONCE_LEN)
    return nonce + aead.encrypt(nonce, plaintext, ad)


def _open(aead: AESGCM, data: bytes | memoryview, ad: bytes) -> bytes:
    if len(data) < NONCE_LEN + TAG_LEN:
        raise IntegrityError(f"ciphertext of {len(data)} bytes is shorter than nonce and tag")
    view = memoryview(data)
    try:
        return aead.decrypt(view[:NONCE_LEN], view[NONCE_LEN:], ad)
    except InvalidTag:
        raise IntegrityError("authentication failed: data damaged or not of this repository") from None
