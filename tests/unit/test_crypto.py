from __future__ import annotations

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from cargohold.errors import IntegrityError, UnsupportedFormat
from cargohold.repo.crypto import (
    MASTER_KEY_SIZE,
    Cipher,
    MasterKey,
    blob_id,
    open_with_key,
    seal_with_key,
)

KEY = MasterKey.generate()
CIPHER = Cipher(KEY)


def test_master_key_generate_is_random_and_valid() -> None:
    a, b = MasterKey.generate(), MasterKey.generate()
    assert a != b
    assert len(a.enc_key) == len(a.id_key) == 32
    assert a.enc_key != a.id_key
    assert 0 <= a.chunker_seed < 2**31
    assert "secret" in repr(a) and a.enc_key.hex() not in repr(a)


def test_master_key_bytes_round_trip() -> None:
    raw = KEY.to_bytes()
    assert len(raw) == MASTER_KEY_SIZE == 73
    assert MasterKey.from_bytes(raw) == KEY


def test_master_key_from_bad_bytes() -> None:
    raw = KEY.to_bytes()
    with pytest.raises(IntegrityError):
        MasterKey.from_bytes(raw[:-1])
    with pytest.raises(IntegrityError):
        MasterKey.from_bytes(b"XXXX" + raw[4:])
    with pytest.raises(IntegrityError):
        MasterKey.from_bytes(b"")
    with pytest.raises(UnsupportedFormat):
        MasterKey.from_bytes(raw[:4] + b"\x09" + raw[5:])
    with pytest.raises(ValueError):
        MasterKey(b"x" * 31, b"y" * 32, 1)
    with pytest.raises(ValueError):
        MasterKey(b"x" * 32, b"y" * 32, 2**31)


def test_blob_id_is_keyed_and_deterministic() -> None:
    other = MasterKey.generate()
    data = b"some chunk of a database page" * 100
    assert blob_id(KEY, data) == blob_id(KEY, memoryview(data))
    assert len(blob_id(KEY, data)) == 32
    assert blob_id(KEY, data) != blob_id(other, data)
    assert blob_id(KEY, data) != blob_id(KEY, data + b"\0")


def test_blob_id_known_answer() -> None:
    # BLAKE3 reference test vector: keyed_hash, input_len 0.
    key = MasterKey(enc_key=bytes(32), id_key=b"whats the Elvish word for friend", chunker_seed=0)
    assert blob_id(key, b"").hex() == "92b2b75604ed3c761f9d6f62392c8a9227ad0ea3f09573e783f1498a4ed60d26"


def test_encrypt_layout_and_randomized_nonce() -> None:
    c1 = CIPHER.encrypt(b"hello", b"ad")
    c2 = CIPHER.encrypt(b"hello", b"ad")
    assert len(c1) == 5 + Cipher.OVERHEAD == 5 + 28
    assert c1 != c2 and c1[:12] != c2[:12]
    assert CIPHER.decrypt(c1, b"ad") == CIPHER.decrypt(c2, b"ad") == b"hello"
    assert b"hello" not in c1


def test_tamper_any_byte_fails() -> None:
    plaintext = bytes(range(64))
    ct = CIPHER.encrypt(plaintext, b"\x01" + b"i" * 32)
    for i in range(len(ct)):
        for flip in (0x01, 0x80):
            bad = bytearray(ct)
            bad[i] ^= flip
            with pytest.raises(IntegrityError):
                CIPHER.decrypt(bytes(bad), b"\x01" + b"i" * 32)


def test_truncated_or_extended_ciphertext_fails() -> None:
    ct = CIPHER.encrypt(b"payload", b"")
    for cut in range(len(ct)):
        with pytest.raises(IntegrityError):
            CIPHER.decrypt(ct[:cut], b"")
    with pytest.raises(IntegrityError):
        CIPHER.decrypt(ct + b"\0", b"")


def test_wrong_associated_data_fails() -> None:
    ad = b"\x00" + bytes(32)
    ct = CIPHER.encrypt(b"tree blob", ad)
    with pytest.raises(IntegrityError):
        CIPHER.decrypt(ct, b"\x01" + bytes(32))  # other blob type
    with pytest.raises(IntegrityError):
        CIPHER.decrypt(ct, b"\x00" + bytes(31) + b"\x01")  # other blob id
    with pytest.raises(IntegrityError):
        CIPHER.decrypt(ct, b"")


def test_wrong_key_fails() -> None:
    ct = CIPHER.encrypt(b"secret", b"ad")
    with pytest.raises(IntegrityError):
        Cipher(MasterKey.generate()).decrypt(ct, b"ad")


def test_raw_key_seal_open() -> None:
    raw = bytes(range(32))
    sealed = seal_with_key(raw, b"master", b"keys/0011")
    assert open_with_key(raw, sealed, b"keys/0011") == b"master"
    with pytest.raises(IntegrityError):
        open_with_key(raw, sealed, b"keys/0012")
    with pytest.raises(IntegrityError):
        open_with_key(bytes(32), sealed, b"keys/0011")


@settings(max_examples=200, deadline=None)
@given(plaintext=st.binary(max_size=4096), ad=st.binary(max_size=64), view=st.booleans())
def test_round_trip_property(plaintext: bytes, ad: bytes, view: bool) -> None:
    data: bytes | memoryview = memoryview(plaintext) if view else plaintext
    ct = CIPHER.encrypt(data, ad)
    assert len(ct) == len(plaintext) + Cipher.OVERHEAD
    assert CIPHER.decrypt(memoryview(ct) if view else ct, ad) == plaintext


@settings(max_examples=100, deadline=None)
@given(plaintext=st.binary(min_size=1, max_size=512), pos=st.integers(min_value=0), bit=st.integers(0, 7))
def test_tamper_property(plaintext: bytes, pos: int, bit: int) -> None:
    ct = bytearray(CIPHER.encrypt(plaintext, b"ad"))
    ct[pos % len(ct)] ^= 1 << bit
    with pytest.raises(IntegrityError):
        CIPHER.decrypt(bytes(ct), b"ad")
