from __future__ import annotations

import json
import logging
import time
from collections.abc import Iterator

import pytest

from cargohold.backends import MemoryBackend
from cargohold.backends.faults import FaultBackend, FaultCrash, FaultPlan
from cargohold.errors import (
    IntegrityError,
    KeyFileDamaged,
    RepositoryNotFound,
    UnsupportedFormat,
    UsageError,
    WrongPassword,
)
from cargohold.repo import docsum, keys
from cargohold.repo.crypto import MasterKey
from cargohold.repo.keys import (
    KdfParams,
    change_password,
    create_key,
    damaged_keys,
    list_keys,
    remove_key,
    unlock,
)


@pytest.fixture(autouse=True)
def fast_kdf(monkeypatch: pytest.MonkeyPatch) -> Iterator[None]:
    monkeypatch.setenv("CARGOHOLD_KDF", "fast")
    yield


@pytest.fixture
def repo() -> tuple[MemoryBackend, MasterKey, str]:
    backend = MemoryBackend()
    master = MasterKey.generate()
    slot = create_key(backend, "correct horse", master, label="admin")
    return backend, master, slot


def test_kdf_params_from_env(monkeypatch: pytest.MonkeyPatch) -> None:
    assert KdfParams.from_env() == KdfParams.FAST
    monkeypatch.delenv("CARGOHOLD_KDF")
    assert KdfParams.from_env() == KdfParams.DEFAULT
    assert KdfParams.DEFAULT.memory_kib >= 64 * 1024 and KdfParams.DEFAULT.time_cost >= 3
    monkeypatch.setenv("CARGOHOLD_KDF", "default")
    assert KdfParams.from_env() == KdfParams.DEFAULT
    monkeypatch.setenv("CARGOHOLD_KDF", "turbo")
    with pytest.raises(UsageError):
        KdfParams.from_env()


def test_kdf_params_bounds() -> None:
    with pytest.raises(ValueError):
        KdfParams(time_cost=0, memory_kib=8192, parallelism=1)
    with pytest.raises(ValueError):
        KdfParams(time_cost=1, memory_kib=64 * 1024 * 1024, parallelism=1)
    with pytest.raises(ValueError):
        KdfParams(time_cost=1, memory_kib=8, parallelism=4)


def test_derive_is_deterministic_and_salted() -> None:
    p = KdfParams.FAST
    salt = b"s" * 16
    assert p.derive("pw", salt) == p.derive("pw", salt)
    assert len(p.derive("pw", salt)) == 32
    assert p.derive("pw", salt) != p.derive("pw", b"t" * 16)
    assert p.derive("pw", salt) != p.derive("pW", salt)
    assert p.derive("pw", salt) != KdfParams(2, 8192, 1).derive("pw", salt)


def test_create_and_unlock(repo: tuple[MemoryBackend, MasterKey, str]) -> None:
    backend, master, slot = repo
    assert unlock(backend, "correct horse") == (master, slot)
    names = [i.name for i in backend.list("keys/")]
    assert names == [f"keys/{slot}"]
    assert len(slot) == 16 and int(slot, 16) >= 0


def test_slot_never_holds_the_master_key(repo: tuple[MemoryBackend, MasterKey, str]) -> None:
    backend, master, slot = repo
    raw = backend.load(f"keys/{slot}")
    for secret in (master.enc_key, master.id_key, master.to_bytes()):
        assert secret not in raw
        assert secret.hex().encode() not in raw
    doc = json.loads(raw)
    assert doc["kdf"]["algorithm"] == "argon2id"
    assert doc["kdf"]["memory_kib"] == KdfParams.FAST.memory_kib
    assert doc["aead"] == "aes-256-gcm"
    assert doc["label"] == "admin"


def test_wrong_password(repo: tuple[MemoryBackend, MasterKey, str]) -> None:
    backend, _, _ = repo
    with pytest.raises(WrongPassword) as info:
        unlock(backend, "Correct horse")
    assert "\n" not in str(info.value)


def test_no_repository() -> None:
    with pytest.raises(RepositoryNotFound):
        unlock(MemoryBackend(), "x")


def test_empty_password_refused() -> None:
    with pytest.raises(UsageError):
        create_key(MemoryBackend(), "", MasterKey.generate())


def test_several_slots(repo: tuple[MemoryBackend, MasterKey, str]) -> None:
    backend, master, slot = repo
    s2 = create_key(backend, "second", master, label="ci")
    s3 = create_key(backend, "third", master, kdf=KdfParams(2, 8192, 2))
    assert len({slot, s2, s3}) == 3
    assert unlock(backend, "correct horse") == (master, slot)
    assert unlock(backend, "second") == (master, s2)
    assert unlock(backend, "third") == (master, s3)
    listed = list_keys(backend)
    assert {k.id for k in listed} == {slot, s2, s3}
    by_id = {k.id: k for k in listed}
    assert by_id[s2].label == "ci"
    assert by_id[s3].kdf == KdfParams(2, 8192, 2)
    assert all(k.host and k.user and k.created.endswith("Z") for k in listed)


def test_remove_key(repo: tuple[MemoryBackend, MasterKey, str]) -> None:
    backend, master, slot = repo
    s2 = create_key(backend, "second", master)
    with pytest.raises(UsageError, match="in use"):
        remove_key(backend, slot, current=slot)
    with pytest.raises(UsageError, match="no key slot"):
        remove_key(backend, "0123456789abcdef", current=slot)
    remove_key(backend, s2, current=slot)
    with pytest.raises(WrongPassword):
        unlock(backend, "second")
    assert [k.id for k in list_keys(backend)] == [slot]


def test_remove_last_slot_refused(repo: tuple[MemoryBackend, MasterKey, str]) -> None:
    backend, master, slot = repo
    s2 = create_key(backend, "second", master)
    remove_key(backend, slot, current=s2)
    # s2 is both in use and the last one; from a "foreign" session it is still the last.
    with pytest.raises(UsageError, match="last"):
        remove_key(backend, s2, current="ffffffffffffffff")
    assert unlock(backend, "second") == (master, s2)


def test_change_password(repo: tuple[MemoryBackend, MasterKey, str]) -> None:
    backend, master, slot = repo
    new = change_password(backend, master, slot, "new secret")
    assert new != slot
    assert unlock(backend, "new secret") == (master, new)
    with pytest.raises(WrongPassword):
        unlock(backend, "correct horse")
    assert [(k.id, k.label) for k in list_keys(backend)] == [(new, "admin")]


def test_change_password_crash_keeps_old_password(repo: tuple[MemoryBackend, MasterKey, str]) -> None:
    backend, master, slot = repo
    # Crash at the delete of the old slot: both passwords still open the repository.
    faulty = FaultBackend(backend, FaultPlan(crash_at=1, ops=frozenset({"create", "delete"})))
    with pytest.raises(FaultCrash):
        change_password(faulty, master, slot, "new secret")
    assert unlock(backend, "correct horse") == (master, slot)
    assert unlock(backend, "new secret")[0] == master
    # Crash at the create: the old password still works, nothing half-written.
    faulty = FaultBackend(backend, FaultPlan(crash_at=0, ops=frozenset({"create", "delete"})))
    with pytest.raises(FaultCrash):
        change_password(faulty, master, slot, "third")
    assert len(list_keys(backend)) == 2


@pytest.mark.parametrize(
    "damage",
    [
        lambda raw: raw[: len(raw) // 2],  # truncated
        lambda raw: b"",
        lambda raw: b"\xff\xfe garbage",
        lambda raw: b"[]",
        lambda raw: raw.replace(b'"salt"', b'"sugar"'),
        lambda raw: raw.replace(b'"wrapped": "', b'"wrapped": "!!'),
        lambda raw: raw.replace(b'"memory_kib": 8192', b'"memory_kib": 99999999999'),
        lambda raw: raw.replace(b'"time_cost": 1', b'"time_cost": "1"'),
    ],
)
def test_corrupt_slot_is_named_and_others_still_open(
    repo: tuple[MemoryBackend, MasterKey, str], damage: object, caplog: pytest.LogCaptureFixture
) -> None:
    backend, master, slot = repo
    s2 = create_key(backend, "second", master)
    raw = backend.load(f"keys/{slot}")
    assert callable(damage)
    backend.store(f"keys/{slot}", damage(raw))
    with caplog.at_level(logging.WARNING, logger="cargohold.repo.keys"):
        assert unlock(backend, "second") == (master, s2)
    assert slot in caplog.text
    problems = damaged_keys(backend)
    assert list(problems) == [slot]
    assert f"keys/{slot}" in problems[slot]
    assert [k.id for k in list_keys(backend)] == [s2]
    # The damaged slot's password no longer opens: the error says a key file is damaged
    # (the password may be right), names it, and is not a wrong password.
    with pytest.raises(KeyFileDamaged, match=slot) as info:
        unlock(backend, "correct horse")
    assert "damaged" in str(info.value) and "key import" in str(info.value)
    # A password that is wrong for every slot gets the same answer: no slot can be ruled out.
    with pytest.raises(KeyFileDamaged):
        unlock(backend, "neither")


def test_all_slots_damaged(repo: tuple[MemoryBackend, MasterKey, str]) -> None:
    backend, _, slot = repo
    backend.store(f"keys/{slot}", b"{not json")
    with pytest.raises(KeyFileDamaged, match=f"keys/{slot}") as info:
        unlock(backend, "correct horse")
    assert isinstance(info.value, IntegrityError)
    assert "key import" in str(info.value)


def _legacy(raw: bytes) -> bytes:
    """A slot as cargohold wrote it before checksums and config copies."""
    doc = json.loads(raw)
    del doc["checksum"]
    doc.pop("config", None)
    return json.dumps(doc, indent=1, sort_keys=True).encode() + b"\n"


def test_tampered_wrap_is_damage_not_a_wrong_password(repo: tuple[MemoryBackend, MasterKey, str]) -> None:
    backend, _, slot = repo
    doc = json.loads(backend.load(f"keys/{slot}"))
    doc["wrapped"] = doc["wrapped"][:10] + ("A" if doc["wrapped"][10] != "A" else "B") + doc["wrapped"][11:]
    backend.store(f"keys/{slot}", docsum.stored_form(doc, 1))
    with pytest.raises(KeyFileDamaged, match="checksum"):
        unlock(backend, "correct horse")


def test_tampered_wrap_of_a_legacy_slot_is_a_wrong_password(repo: tuple[MemoryBackend, MasterKey, str]) -> None:
    # Without a checksum nothing tells a damaged wrap from a wrong password.
    backend, _, slot = repo
    doc = json.loads(_legacy(backend.load(f"keys/{slot}")))
    doc["wrapped"] = doc["wrapped"][:10] + ("A" if doc["wrapped"][10] != "A" else "B") + doc["wrapped"][11:]
    backend.store(f"keys/{slot}", json.dumps(doc).encode())
    with pytest.raises(WrongPassword):
        unlock(backend, "correct horse")


def test_legacy_slot_still_opens(repo: tuple[MemoryBackend, MasterKey, str]) -> None:
    backend, master, slot = repo
    backend.store(f"keys/{slot}", _legacy(backend.load(f"keys/{slot}")))
    opened = keys.open_slots(backend, "correct horse")
    assert (opened.master, opened.slot_id, opened.config) == (master, slot, None)
    (info,) = list_keys(backend)
    assert not info.checksummed and not info.has_config
    assert damaged_keys(backend) == {}
    # ... and an unknown field in a legacy slot is damage, not ignored.
    doc = json.loads(backend.load(f"keys/{slot}"))
    doc["lable"] = doc.pop("label")
    backend.store(f"keys/{slot}", json.dumps(doc).encode())
    assert "unknown field(s) lable" in damaged_keys(backend)[slot]


def test_slot_moved_to_another_name_does_not_open(repo: tuple[MemoryBackend, MasterKey, str]) -> None:
    backend, _, slot = repo
    raw = backend.load(f"keys/{slot}")
    backend.delete(f"keys/{slot}")
    backend.store("keys/00000000000000aa", raw)
    with pytest.raises(KeyFileDamaged, match="names itself"):
        unlock(backend, "correct horse")
    doc = json.loads(_legacy(raw))
    del doc["id"]
    backend.store("keys/00000000000000aa", json.dumps(doc).encode())
    with pytest.raises(WrongPassword):  # the wrap is bound to its slot id
        unlock(backend, "correct horse")


def test_unknown_slot_version(repo: tuple[MemoryBackend, MasterKey, str]) -> None:
    backend, _, slot = repo
    doc = json.loads(backend.load(f"keys/{slot}"))
    doc["version"] = 7
    # With the checksum of version 1 the 7 is damage ...
    backend.store(f"keys/{slot}", docsum.stored_form(doc, 1))
    assert "checksum" in damaged_keys(backend)[slot]
    # ... with its own valid checksum it is a newer format.
    backend.store(f"keys/{slot}", docsum.seal(doc, 1))
    assert "version 7" in damaged_keys(backend)[slot]
    with pytest.raises(UnsupportedFormat, match="version 7"):
        unlock(backend, "correct horse")


def test_foreign_objects_under_keys_are_ignored(repo: tuple[MemoryBackend, MasterKey, str]) -> None:
    backend, master, slot = repo
    backend.store("keys/README", b"not a slot")
    backend.store("keys/0123456789abcdef/x", b"nested")
    assert [k.id for k in list_keys(backend)] == [slot]
    assert damaged_keys(backend) == {}
    assert unlock(backend, "correct horse") == (master, slot)


def test_default_kdf_cost_is_real(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("CARGOHOLD_KDF")
    backend = MemoryBackend()
    master = MasterKey.generate()
    t0 = time.perf_counter()
    slot = create_key(backend, "pw", master)
    elapsed = time.perf_counter() - t0
    assert list_keys(backend)[0].kdf == KdfParams.DEFAULT
    assert unlock(backend, "pw") == (master, slot)
    assert elapsed > 0.01  # 64 MiB of argon2id is not free
    assert keys.SALT_LEN == 16
