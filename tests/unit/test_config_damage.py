"""Issue 16 (3): one damaged byte of ``config`` or of a key file is reported as damage, naming
the file — never as a newer format, never as a wrong password, never silently accepted —
and ``repair config`` restores a damaged or lost config from a key slot's verified copy."""

from __future__ import annotations

import base64
import json
import random
import uuid
from collections.abc import Iterator

import pytest

from cargohold.backends import open_backend
from cargohold.cli import exit_codes
from cargohold.errors import (
    CargoholdError,
    ConfigDamaged,
    IntegrityError,
    KeyFileDamaged,
    UnsupportedFormat,
    WrongPassword,
)
from cargohold.repo import docsum, keys
from cargohold.repo.chunker import ChunkerParams
from cargohold.repo.repository import RepoConfig, Repository, read_config
from cargohold.services import keys as keysvc

PW = "pw"


@pytest.fixture(autouse=True)
def fast_kdf(monkeypatch: pytest.MonkeyPatch) -> Iterator[None]:
    monkeypatch.setenv("CARGOHOLD_KDF", "fast")
    yield


@pytest.fixture
def repo() -> Repository:
    # A named in-memory store: the services open it again by its URL.
    return Repository.init(open_backend(f"memory://config-damage-{uuid.uuid4().hex}"), PW)


def slot_name(repo: Repository) -> str:
    return f"keys/{repo.key_id}"


def variants(raw: bytes, seed: int) -> Iterator[tuple[str, bytes]]:
    """Every byte position changed twice (its lowest bit flipped, and XOR a seeded random
    non-zero byte), and every truncation."""
    rng = random.Random(seed)
    for i in range(len(raw)):
        for mask in (0x01, rng.randrange(1, 256)):
            b = bytearray(raw)
            b[i] ^= mask
            yield f"byte {i} ^ {mask:#04x}", bytes(b)
    for n in range(len(raw)):
        yield f"truncated to {n}", raw[:n]


# --- config ----------------------------------------------------------------------------------


def test_every_config_byte_flip_and_truncation_is_named_damage(repo: Repository) -> None:
    raw = repo.backend.load("config")
    detected = 0
    total = 0
    for label, bad in variants(raw, seed=16):
        total += 1
        repo.backend.store("config", bad)
        with pytest.raises(CargoholdError) as info:
            read_config(repo.backend)
        err = info.value
        assert isinstance(err, ConfigDamaged), (label, err)
        assert "memory://" in err.message and "/config is damaged" in err.message, (label, err.message)
        assert "repair config" in str(err)
        assert exit_codes.exit_code_for(err) == exit_codes.INTEGRITY
        detected += 1
    assert detected == total == 3 * len(raw)


def test_config_damage_through_open_is_never_a_wrong_password(repo: Repository) -> None:
    """End to end (key slots opened too) on a seeded sample: the copy in the key slot is
    named as the way to repair."""
    raw = repo.backend.load("config")
    sample = random.Random(7).sample(list(variants(raw, seed=3)), 60)
    for label, bad in sample:
        repo.backend.store("config", bad)
        with pytest.raises(ConfigDamaged) as info:
            Repository.open(repo.backend, PW)
        assert "repair config" in info.value.hint and repo.key_id in info.value.hint, label
    # With a wrong password the config is still reported as damaged (not the password).
    repo.backend.store("config", raw.replace(b'"pack_size"', b'"pack_sise"'))
    with pytest.raises(ConfigDamaged, match="checksum") as info:
        Repository.open(repo.backend, "wrong")
    assert "repair config" in info.value.hint


def test_damaged_config_names_what_it_should_hold_and_what_is_readable(repo: Repository) -> None:
    raw = repo.backend.load("config")
    repo.backend.store("config", raw.replace(b'"cdc_avg"', b'"cdv_avg"'))
    with pytest.raises(ConfigDamaged) as info:
        read_config(repo.backend)
    msg = info.value.message
    assert "checksum" in msg and "should be the JSON object" in msg
    assert f"id={repo.config.id}" in msg and "pack_size=16777216" in msg and "cdc_max=8388608" in msg
    assert info.value.recovered["id"] == repo.config.id
    assert "cdc_avg" not in info.value.recovered


def _legacy_config(config: RepoConfig) -> bytes:
    """A config as cargohold wrote it before the checksum field existed."""
    return json.dumps(config.to_doc(), sort_keys=True, indent=2).encode() + b"\n"


def test_legacy_config_without_checksum_is_read_strictly(repo: Repository) -> None:
    legacy = _legacy_config(repo.config)
    repo.backend.store("config", legacy)
    assert read_config(repo.backend) == repo.config
    assert Repository.open(repo.backend, PW).config == repo.config
    # The flip the campaign found: an unknown name no longer falls back to a default.
    repo.backend.store("config", legacy.replace(b'"cdc_avg"', b'"cdv_avg"'))
    with pytest.raises(ConfigDamaged, match=r"unknown field\(s\) cdv_avg; missing field\(s\) cdc_avg"):
        read_config(repo.backend)
    doc = repo.config.to_doc()
    del doc["compression_level"]
    repo.backend.store("config", json.dumps(doc).encode())
    with pytest.raises(ConfigDamaged, match=r"missing field\(s\) compression_level"):
        read_config(repo.backend)
    doc = repo.config.to_doc()
    doc["pack_size"] = "16777216"
    repo.backend.store("config", json.dumps(doc).encode())
    with pytest.raises(ConfigDamaged, match="pack_size"):
        read_config(repo.backend)


def test_legacy_config_that_differs_from_the_slot_copy_is_damage(repo: Repository) -> None:
    # Without a checksum a changed digit parses; the key slot's verified copy catches it.
    doc = repo.config.to_doc()
    doc["pack_size"] = 16777217
    repo.backend.store("config", json.dumps(doc, sort_keys=True, indent=2).encode() + b"\n")
    with pytest.raises(ConfigDamaged, match=r"does not match the verified copy .*pack_size"):
        Repository.open(repo.backend, PW)
    res = keysvc.repair_config(repo.backend.url, PW)
    assert res.action == "restored" and "pack_size" in res.problem
    assert Repository.open(repo.backend, PW).config == repo.config


def test_newer_format_versions_are_unsupported_not_damaged(repo: Repository) -> None:
    doc = repo.config.to_doc()
    doc["version"] = 2
    repo.backend.store("config", docsum.seal(doc, 2))  # a newer writer's own valid checksum
    with pytest.raises(UnsupportedFormat, match="version 2"):
        read_config(repo.backend)
    repo.backend.store("config", b'{"version": 99, "id": "x"}')  # without a checksum
    with pytest.raises(UnsupportedFormat):
        read_config(repo.backend)
    # The 2 under the checksum of a version-1 config is a damaged byte.
    repo.backend.store("config", docsum.stored_form({**doc, "checksum": docsum.checksum(repo.config.to_doc())}, 2))
    with pytest.raises(ConfigDamaged, match="format version 2"):
        read_config(repo.backend)


def test_chunker_params_from_json_is_strict() -> None:
    good = ChunkerParams().to_json()
    assert ChunkerParams.from_json(good) == ChunkerParams()
    with pytest.raises(ValueError, match=r"unknown field.*cdv_avg.*missing field.*cdc_avg"):
        ChunkerParams.from_json({("cdv_avg" if k == "cdc_avg" else k): v for k, v in good.items()})
    with pytest.raises(ValueError, match="missing"):
        ChunkerParams.from_json({k: v for k, v in good.items() if k != "page_size"})
    for bad in ("8192", 8192.0, True, 0, -1):
        with pytest.raises(ValueError, match="page_size"):
            ChunkerParams.from_json({**good, "page_size": bad})
    with pytest.raises(ValueError, match="cdc_max"):
        ChunkerParams.from_json({**good, "cdc_max": 1024})
    with pytest.raises(TypeError):
        ChunkerParams.from_json([])  # type: ignore[arg-type]


# --- key files -------------------------------------------------------------------------------


def test_every_key_file_byte_flip_and_truncation_is_named_damage(repo: Repository) -> None:
    name = slot_name(repo)
    raw = repo.backend.load(name)
    total = 0
    for label, bad in variants(raw, seed=61):
        total += 1
        repo.backend.store(name, bad)
        with pytest.raises(CargoholdError) as info:
            keys.open_slots(repo.backend, PW)
        err = info.value
        assert not isinstance(err, WrongPassword), (label, err)
        assert isinstance(err, KeyFileDamaged), (label, err)
        assert name in err.message and "damaged" in err.message, (label, err.message)
        assert "key import" in str(err)
        assert exit_codes.exit_code_for(err) == exit_codes.INTEGRITY
    assert total == 3 * len(raw) > 600


def test_a_damaged_salt_is_damage_and_other_slots_still_open(repo: Repository) -> None:
    """The campaign's case: a flipped byte in the salt read as a wrong password."""
    name = slot_name(repo)
    second = keys.create_key(repo.backend, "second", repo.key, config=repo.config)
    raw = repo.backend.load(name)
    doc = json.loads(raw)
    salt = doc["kdf"]["salt"]
    doc["kdf"]["salt"] = ("B" if salt[0] == "A" else "A") + salt[1:]
    repo.backend.store(name, docsum.stored_form(doc, 1))
    assert name in keys.damaged_keys(repo.backend)[repo.key_id]
    assert keys.unlock(repo.backend, "second") == (repo.key, second)
    with pytest.raises(KeyFileDamaged, match=f"{name}.*checksum") as info:
        Repository.open(repo.backend, PW)
    assert "another key slot" in info.value.hint
    # A truly wrong password among intact slots stays a wrong password.
    repo.backend.store(name, raw)
    with pytest.raises(WrongPassword):
        Repository.open(repo.backend, "nope")


def test_new_slots_carry_a_checksum_and_a_verified_config_copy(repo: Repository) -> None:
    from cargohold.services import repository as svc

    added = svc.key_add(repo, "second")
    changed = svc.key_passwd(Repository.open(repo.backend, "second"), "third")
    for slot in keys.list_keys(repo.backend):
        assert slot.checksummed and slot.has_config, slot
    for pw, sid in ((PW, repo.key_id), ("third", changed)):
        opened = keys.open_slots(repo.backend, pw)
        assert opened.slot_id == sid and opened.config == repo.config
    assert added not in {s.id for s in keys.list_keys(repo.backend)}


def test_a_tampered_config_copy_is_never_used(repo: Repository) -> None:
    name = slot_name(repo)
    doc = json.loads(repo.backend.load(name))
    sealed = bytearray(base64.b64decode(doc["config"]))
    sealed[30] ^= 0x20  # inside the copy; the slot's checksum is recomputed to match
    doc["config"] = base64.b64encode(bytes(sealed)).decode()
    repo.backend.store(name, docsum.seal({k: v for k, v in doc.items() if k != "checksum"}, 1))
    opened = keys.open_slots(repo.backend, PW)
    assert opened.config is None and "does not verify" in opened.config_problem
    repo.backend.store("config", b"{}")
    with pytest.raises(ConfigDamaged, match="does not verify"):
        keysvc.repair_config(repo.backend.url, PW)
    assert repo.backend.load("config") == b"{}"


# --- repair config ---------------------------------------------------------------------------


def test_repair_config_restores_a_damaged_or_lost_config(repo: Repository) -> None:
    url = repo.backend.url
    raw = repo.backend.load("config")
    assert keysvc.repair_config(url, PW).action == "intact"
    for bad in (raw[:40], raw.replace(b'"version": 1', b'"version": 7'), None):
        if bad is None:
            repo.backend.delete("config")
        else:
            repo.backend.store("config", bad)
        with pytest.raises(ConfigDamaged):
            Repository.open(repo.backend, PW)
        res = keysvc.repair_config(url, PW)
        assert res.action == "restored" and res.slot_id == repo.key_id
        assert "config" in res.problem or bad is None
        assert repo.backend.load("config") == raw
        assert Repository.open(repo.backend, PW).config == repo.config
    assert not list(repo.backend.list("locks/"))


def test_repair_config_rewrites_a_legacy_config_with_its_checksum(repo: Repository) -> None:
    repo.backend.store("config", _legacy_config(repo.config))
    assert any("no checksum" in w for w in keysvc.key_warnings(Repository.open(repo.backend, PW)))
    res = keysvc.repair_config(repo.backend.url, PW)
    assert res.action == "rewritten" and res.compared
    assert repo.backend.load("config") == repo.config.encode()


def test_repair_config_without_a_copy_says_what_to_do(repo: Repository) -> None:
    name = slot_name(repo)
    doc = json.loads(repo.backend.load(name))
    del doc["checksum"], doc["config"]
    repo.backend.store(name, json.dumps(doc, indent=1, sort_keys=True).encode())  # a legacy slot
    repo.backend.store("config", b"garbage")
    with pytest.raises(ConfigDamaged, match="has no copy of the config") as info:
        keysvc.repair_config(repo.backend.url, PW)
    assert "key import" in info.value.hint and "another key slot" in info.value.hint
    with pytest.raises(WrongPassword):
        keysvc.repair_config(repo.backend.url, "wrong")


def test_init_refuses_a_location_whose_config_is_lost(repo: Repository) -> None:
    repo.backend.delete("config")
    with pytest.raises(CargoholdError, match="config is lost") as info:
        Repository.init(repo.backend, PW)
    assert "repair config" in str(info.value)
    assert not isinstance(info.value, IntegrityError)
