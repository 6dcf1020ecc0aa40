"""Key slots: the master key wrapped by password-derived keys.

Each slot is the object ``keys/<16 hex>`` (JSON, see docs/FORMAT-keys-locks.md)::

    {"version": 1, "id": ..., "created": ISO-8601, "host": ..., "user": ..., "label": ...,
     "kdf": {"algorithm": "argon2id", "time_cost": 3, "memory_kib": 65536,
             "parallelism": 2, "salt": base64(16 bytes)},
     "aead": "aes-256-gcm",
     "wrapped": base64(nonce || AES-256-GCM(argon2id(password, salt), master key) || tag),
     "config": base64(the repository config, sealed by the master key),
     "checksum": "sha256:..."}

The associated data of the wrap is ``b"cargohold-key\\0" + slot id``. A repository has
any number of slots, each opening the same master key with its own password; the
master key is never stored unwrapped.

``checksum`` (:mod:`cargohold.repo.docsum`) makes any damaged byte of a slot read as
damage, never as a wrong password. ``config`` is a copy of the repository config that
only the master key can vouch for (:func:`seal_config`): ``cargohold repair config``
restores a damaged or lost config from it. Slots written before both existed have
neither and still open.

The same pieces — KDF parameters, salt, wrapped key, sealed config — also make up a key
*export* (:class:`ExportedKey`, rendered as text by :mod:`cargohold.repo.paperkey`), which
opens the repository when every key file is lost.
"""

from __future__ import annotations

import base64
import binascii
import contextlib
import json
import logging
import os
import secrets
import socket
import struct
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any, ClassVar

import blake3
from argon2.exceptions import HashingError
from argon2.low_level import Type, hash_secret_raw

from cargohold.backends.base import Backend
from cargohold.errors import (
    ConfigDamaged,
    IntegrityError,
    KeyFileDamaged,
    ObjectExists,
    ObjectNotFound,
    RepositoryNotFound,
    UnsupportedFormat,
    UsageError,
    WrongPassword,
)
from cargohold.procinfo import current_user
from cargohold.repo import docsum
from cargohold.repo.chunker import ChunkerParams
from cargohold.repo.crypto import MasterKey, open_with_key, seal_with_key
from cargohold.repo.repository import RepoConfig

log = logging.getLogger(__name__)

PREFIX = "keys/"
#: Export records (``keys/exports/<16 hex>``): when the key was exported, for ``check``.
EXPORTS_PREFIX = "keys/exports/"
SLOT_VERSION = 1
SALT_LEN = 16
_AD_PREFIX = b"cargohold-key\0"
_EXPORT_AD_PREFIX = b"cargohold-key\0export:"
_ID_HEX = 16
_SLOT_INDENT = 1
# Bounds a slot's KDF parameters may take: a damaged or hostile slot must not make
# unlock allocate gigabytes or spin for minutes.
_MAX_MEMORY_KIB = 4 * 1024 * 1024
_MAX_TIME_COST = 64
_MAX_PARALLELISM = 64

#: The fields of a slot with a checksum; ``config`` may be absent (a slot made without one).
_SLOT_FIELDS = frozenset(
    {"version", "id", "created", "host", "user", "label", "kdf", "aead", "wrapped", "config", "checksum"}
)
#: Slots written before checksums: these fields, ``id`` optional, nothing else.
_LEGACY_SLOT_FIELDS = frozenset({"version", "id", "created", "host", "user", "label", "kdf", "aead", "wrapped"})
_KDF_FIELDS = frozenset({"algorithm", "time_cost", "memory_kib", "parallelism", "salt"})


@dataclass(frozen=True)
class KdfParams:
    """argon2id cost parameters."""

    time_cost: int
    memory_kib: int
    parallelism: int

    DEFAULT: ClassVar[KdfParams]
    #: For tests only (about 10 ms): selected by ``CARGOHOLD_KDF=fast``.
    FAST: ClassVar[KdfParams]

    def __post_init__(self) -> None:
        if not 1 <= self.time_cost <= _MAX_TIME_COST:
            raise ValueError(f"argon2 time_cost {self.time_cost} out of range")
        if not 1 <= self.parallelism <= _MAX_PARALLELISM:
            raise ValueError(f"argon2 parallelism {self.parallelism} out of range")
        if not 8 * self.parallelism <= self.memory_kib <= _MAX_MEMORY_KIB:
            raise ValueError(f"argon2 memory {self.memory_kib} KiB out of range")

    @classmethod
    def from_env(cls) -> KdfParams:
        """``CARGOHOLD_KDF=fast`` selects :attr:`FAST` (tests only); unset or ``default`` the default."""
        choice = os.environ.get("CARGOHOLD_KDF", "").strip().lower()
        if choice in ("", "default"):
            return cls.DEFAULT
        if choice == "fast":
            return cls.FAST
        raise UsageError(f"CARGOHOLD_KDF={choice!r} is not known", hint="use 'default' or 'fast' (tests only)")

    def derive(self, password: str, salt: bytes) -> bytes:
        """The 32-byte key argon2id derives from ``password`` and ``salt``."""
        try:
            return hash_secret_raw(
                password.encode("utf-8"),
                salt,
                time_cost=self.time_cost,
                memory_cost=self.memory_kib,
                parallelism=self.parallelism,
                hash_len=32,
                type=Type.ID,
            )
        except HashingError as err:
            raise IntegrityError(f"argon2id failed: {err}") from None


KdfParams.DEFAULT = KdfParams(time_cost=3, memory_kib=64 * 1024, parallelism=2)
KdfParams.FAST = KdfParams(time_cost=1, memory_kib=8 * 1024, parallelism=1)


@dataclass(frozen=True)
class KeySlot:
    id: str
    created: str
    host: str
    user: str
    label: str
    kdf: KdfParams
    #: The slot carries a checksum (written by a cargohold that knows them).
    checksummed: bool = False
    #: The slot carries a sealed copy of the repository config.
    has_config: bool = False


@dataclass(frozen=True)
class _Slot:
    info: KeySlot
    salt: bytes
    wrapped: bytes
    config: bytes | None = None


@dataclass(frozen=True)
class Unlocked:
    """What a password opened: the master key, the slot, and the slot's config copy."""

    master: MasterKey
    slot_id: str
    #: The slot's copy of the config, verified with the master key; None when it has none
    #: or the copy failed verification (``config_problem`` says so).
    config: RepoConfig | None = None
    config_problem: str = ""


def _now() -> str:
    return datetime.now(UTC).isoformat(timespec="seconds").replace("+00:00", "Z")


def _ad(slot_id: str) -> bytes:
    return _AD_PREFIX + slot_id.encode("ascii")


def _slot_id_of(name: str) -> str:
    return name[len(PREFIX) :]


def _valid_id(slot_id: str) -> bool:
    return len(slot_id) == _ID_HEX and all(c in "0123456789abcdef" for c in slot_id)


# --- the sealed config copy ----------------------------------------------------------------

_CONFIG_MAGIC = b"CHCF"
_CONFIG_COPY_VERSION = 1
_CONFIG_INTS = ">6IiI"  # 6 chunker sizes, compression level, pack size
_CONFIG_MAC_LEN = 16
_MAC_CONTEXT = "cargohold 2026-11 config copy MAC v1"
_CHUNKER_ORDER = ("cdc_min", "cdc_avg", "cdc_max", "fixed_size", "page_size", "fixed_min_file")


def _config_mac(master: MasterKey, body: bytes) -> bytes:
    mac_key = blake3.blake3(master.to_bytes(), derive_key_context=_MAC_CONTEXT).digest()
    return blake3.blake3(body, key=mac_key).digest()[:_CONFIG_MAC_LEN]


def seal_config(master: MasterKey, config: RepoConfig) -> bytes:
    """A compact copy of ``config`` authenticated by the master key (docs/FORMAT-keys-locks.md):
    ``"CHCF" | u8 1 | u8 format version | id 16 | u8 n | created (n bytes UTF-8) |
    6 x u32 chunker | i32 compression level | u32 pack size | MAC 16``."""
    created = config.created.encode("utf-8")
    if len(created) > 255:
        raise UsageError("the config's creation time is too long to copy")
    ch = config.chunker.to_json()
    body = (
        _CONFIG_MAGIC
        + bytes([_CONFIG_COPY_VERSION, config.version])
        + bytes.fromhex(config.id)
        + bytes([len(created)])
        + created
        + struct.pack(_CONFIG_INTS, *(ch[k] for k in _CHUNKER_ORDER), config.compression_level, config.pack_size)
    )
    return body + _config_mac(master, body)


def open_config(master: MasterKey, sealed: bytes) -> RepoConfig:
    """The config a :func:`seal_config` copy holds; IntegrityError unless ``master`` vouches for
    it and it is a valid config (a damaged copy is never used)."""
    body, mac = sealed[:-_CONFIG_MAC_LEN], sealed[-_CONFIG_MAC_LEN:]
    if len(sealed) <= _CONFIG_MAC_LEN or not secrets.compare_digest(mac, _config_mac(master, body)):
        raise IntegrityError("the config copy does not verify with the master key (damaged or not of this repository)")
    try:
        if body[:4] != _CONFIG_MAGIC or body[4] != _CONFIG_COPY_VERSION:
            raise ValueError("not a config copy of version 1")
        version, rid, n = body[5], body[6:22].hex(), body[22]
        created = body[23 : 23 + n].decode("utf-8")
        ints = struct.unpack(_CONFIG_INTS, body[23 + n :])
        config = RepoConfig(
            id=rid,
            version=version,
            created=created,
            chunker=ChunkerParams(**dict(zip(_CHUNKER_ORDER, ints[:6], strict=True))),
            compression_level=ints[6],
            pack_size=ints[7],
        )
        # The same checks as the config object itself gets.
        return RepoConfig.decode(config.encode(), where="the config copy")
    except (ValueError, IndexError, struct.error, ConfigDamaged, UnsupportedFormat) as err:
        raise IntegrityError(f"the config copy is malformed: {err}") from None


# --- slot documents ------------------------------------------------------------------------


def _encode(slot_id: str, info: KeySlot, salt: bytes, wrapped: bytes, config: bytes | None) -> bytes:
    doc: dict[str, Any] = {
        "version": SLOT_VERSION,
        "id": slot_id,
        "created": info.created,
        "host": info.host,
        "user": info.user,
        "label": info.label,
        "kdf": {
            "algorithm": "argon2id",
            "time_cost": info.kdf.time_cost,
            "memory_kib": info.kdf.memory_kib,
            "parallelism": info.kdf.parallelism,
            "salt": base64.b64encode(salt).decode("ascii"),
        },
        "aead": "aes-256-gcm",
        "wrapped": base64.b64encode(wrapped).decode("ascii"),
    }
    if config is not None:
        doc["config"] = base64.b64encode(config).decode("ascii")
    return docsum.seal(doc, _SLOT_INDENT)


def _fields_problem(doc: dict[str, Any], allowed: frozenset[str], required: frozenset[str]) -> str | None:
    unknown, missing = sorted(set(doc) - allowed), sorted(required - set(doc))
    if not unknown and not missing:
        return None
    parts = [f"unknown field(s) {', '.join(unknown)}"] if unknown else []
    parts += [f"missing field(s) {', '.join(missing)}"] if missing else []
    return "; ".join(parts)


def _decode(slot_id: str, raw: bytes) -> _Slot:
    """Parse and verify a slot; raise IntegrityError / UnsupportedFormat naming it."""
    where = f"key slot {PREFIX}{slot_id}"
    try:
        doc: Any = json.loads(raw)
    except (UnicodeDecodeError, json.JSONDecodeError) as err:
        raise IntegrityError(f"{where} is damaged: not valid JSON ({err})") from None
    if not isinstance(doc, dict):
        raise IntegrityError(f"{where} is damaged: not a JSON object")
    version = doc.get("version")
    checked = docsum.FIELD in doc
    if checked:
        problem = docsum.problem(doc, raw, _SLOT_INDENT)
        if problem is not None:
            raise IntegrityError(f"{where} is damaged: {problem}")
    if isinstance(version, int) and not isinstance(version, bool) and version > SLOT_VERSION:
        raise UnsupportedFormat(f"{where} has format version {version!r}; this cargohold reads {SLOT_VERSION}")
    if version != SLOT_VERSION:
        raise IntegrityError(f"{where} is damaged: format version {version!r}")
    if checked:
        fields = _fields_problem(doc, _SLOT_FIELDS, _SLOT_FIELDS - {"config"})
    else:
        fields = _fields_problem(doc, _LEGACY_SLOT_FIELDS, _LEGACY_SLOT_FIELDS - {"id"})
    if fields is None and isinstance(doc["kdf"], dict):
        fields = _fields_problem(doc["kdf"], _KDF_FIELDS, _KDF_FIELDS)
    if fields is not None:
        raise IntegrityError(f"{where} is damaged: {fields}")
    try:
        kdf = doc["kdf"]
        if kdf["algorithm"] != "argon2id" or doc["aead"] != "aes-256-gcm":
            raise UnsupportedFormat(f"{where} uses {kdf['algorithm']}/{doc['aead']}, not argon2id/aes-256-gcm")
        params = KdfParams(
            time_cost=_int(kdf["time_cost"]),
            memory_kib=_int(kdf["memory_kib"]),
            parallelism=_int(kdf["parallelism"]),
        )
        salt = base64.b64decode(_str(kdf["salt"]), validate=True)
        wrapped = base64.b64decode(_str(doc["wrapped"]), validate=True)
        config = base64.b64decode(_str(doc["config"]), validate=True) if "config" in doc else None
        info = KeySlot(
            id=slot_id,
            created=_str(doc["created"]),
            host=_str(doc["host"]),
            user=_str(doc["user"]),
            label=_str(doc["label"]),
            kdf=params,
            checksummed=checked,
            has_config=config is not None,
        )
    except (KeyError, TypeError, ValueError, binascii.Error) as err:
        raise IntegrityError(f"{where} is damaged: {type(err).__name__} {err}") from None
    if doc.get("id", slot_id) != slot_id:
        raise IntegrityError(f"{where} is damaged: it names itself {doc.get('id')!r}")
    if len(salt) < 8 or not wrapped:
        raise IntegrityError(f"{where} is damaged: salt or wrapped key too short")
    return _Slot(info=info, salt=salt, wrapped=wrapped, config=config)


def _int(v: object) -> int:
    if not isinstance(v, int) or isinstance(v, bool):
        raise TypeError(f"expected an integer, got {v!r}")
    return v


def _str(v: object) -> str:
    if not isinstance(v, str):
        raise TypeError(f"expected a string, got {v!r}")
    return v


def _slot_names(backend: Backend) -> list[str]:
    return sorted(
        info.name for info in backend.list(PREFIX) if _valid_id(_slot_id_of(info.name)) and info.name.count("/") == 1
    )


def _read_slots(backend: Backend) -> tuple[list[_Slot], dict[str, IntegrityError | UnsupportedFormat]]:
    """All readable slots, and the errors of the unreadable ones by slot id."""
    good: list[_Slot] = []
    bad: dict[str, IntegrityError | UnsupportedFormat] = {}
    for name in _slot_names(backend):
        slot_id = _slot_id_of(name)
        try:
            good.append(_decode(slot_id, backend.load(name)))
        except ObjectNotFound:
            continue  # removed since we listed
        except (IntegrityError, UnsupportedFormat) as err:
            bad[slot_id] = err
    good.sort(key=lambda s: (s.info.created, s.info.id))
    return good, bad


def create_key(
    backend: Backend,
    password: str,
    master: MasterKey,
    *,
    label: str = "",
    kdf: KdfParams | None = None,
    config: RepoConfig | None = None,
) -> str:
    """Add a slot that opens ``master`` with ``password``; return its id. ``config`` (the
    repository's verified config) is kept in the slot as a sealed copy."""
    if not password:
        raise UsageError("the password must not be empty")
    params = kdf or KdfParams.from_env()
    salt = secrets.token_bytes(SALT_LEN)
    wrapping_key = params.derive(password, salt)
    sealed = seal_config(master, config) if config is not None else None
    created, host, user = _now(), socket.gethostname(), current_user()
    for _ in range(8):
        slot_id = secrets.token_hex(_ID_HEX // 2)
        info = KeySlot(id=slot_id, created=created, host=host, user=user, label=label, kdf=params)
        wrapped = seal_with_key(wrapping_key, master.to_bytes(), _ad(slot_id))
        try:
            backend.create(PREFIX + slot_id, _encode(slot_id, info, salt, wrapped, sealed))
        except ObjectExists:
            continue
        return slot_id
    raise IntegrityError("could not find a free key slot id")  # pragma: no cover - 2**64 ids


def _unwrap(kdf: KdfParams, salt: bytes, wrapped: bytes, password: str, ad: bytes, where: str) -> MasterKey | None:
    wrapping_key = kdf.derive(password, salt)
    try:
        raw = open_with_key(wrapping_key, wrapped, ad)
    except IntegrityError:
        return None
    try:
        return MasterKey.from_bytes(raw)
    except (IntegrityError, UnsupportedFormat) as err:
        raise KeyFileDamaged(f"{where} holds a malformed master key: {err.message}") from None


def _open_slot(slot: _Slot, password: str) -> MasterKey | None:
    where = f"key slot {PREFIX}{slot.info.id}"
    return _unwrap(slot.info.kdf, slot.salt, slot.wrapped, password, _ad(slot.info.id), where)


def open_slots(backend: Backend, password: str) -> Unlocked:
    """Open the first slot ``password`` opens: the master key, its id and its config copy.

    Damaged slots are skipped (and logged). When no slot opens and one is damaged, the
    error is :class:`KeyFileDamaged` naming it — the password may be that slot's — not
    :class:`WrongPassword`.
    """
    slots, bad = _read_slots(backend)
    if not slots and not bad:
        try:
            backend.stat("config")
        except ObjectNotFound:
            raise RepositoryNotFound(f"no repository at {backend.url} (it has no key slots)") from None
        raise KeyFileDamaged(
            f"the repository at {backend.url} has no key files left (keys/ holds no key slot)",
            hint="import an exported key with `cargohold key import FILE` "
            "(or put back the keys/ files from a copy of the repository)",
        )
    for slot in slots:
        master = _open_slot(slot, password)
        if master is None:
            continue
        for slot_id, problem in bad.items():
            log.warning("%s (slot %s skipped)", problem.message, slot_id)
        config: RepoConfig | None = None
        config_problem = ""
        if slot.config is not None:
            try:
                config = open_config(master, slot.config)
            except IntegrityError as err:
                config_problem = f"key slot {PREFIX}{slot.info.id}: {err.message}"
                log.warning("%s", config_problem)
        return Unlocked(master, slot.info.id, config, config_problem)
    details = "; ".join(err.message for err in bad.values())
    damaged = sorted(sid for sid, err in bad.items() if not isinstance(err, UnsupportedFormat))
    if damaged:
        names = ", ".join(PREFIX + sid for sid in damaged)
        if slots:
            raise KeyFileDamaged(
                f"no key slot of {backend.url} opens with this password, and {len(damaged)} key file(s) are "
                f"damaged ({names}): if the password is right, its key file is the damaged one; {details}"
            )
        raise KeyFileDamaged(
            f"every key file of {backend.url} is damaged ({names}): {details}",
            hint="import an exported key with `cargohold key import FILE` "
            "(or put back the keys/ files from a copy of the repository)",
        )
    if not slots:
        raise UnsupportedFormat(f"no key slot of {backend.url} has a format this cargohold reads: {details}")
    suffix = f" (besides, {details})" if bad else ""
    raise WrongPassword(f"wrong password: none of the {len(slots)} key slots of {backend.url} opens with it{suffix}")


def unlock(backend: Backend, password: str) -> tuple[MasterKey, str]:
    """The master key and the id of the slot ``password`` opens (see :func:`open_slots`)."""
    opened = open_slots(backend, password)
    return opened.master, opened.slot_id


def config_copies_of(backend: Backend, master: MasterKey) -> tuple[list[str], list[str]]:
    """The readable slots whose config copy ``master`` verifies, and those whose copy it does
    not (slots of another master key); slots without a copy are in neither list."""
    good: list[str] = []
    foreign: list[str] = []
    for slot in _read_slots(backend)[0]:
        if slot.config is None:
            continue
        try:
            open_config(master, slot.config)
        except IntegrityError:
            foreign.append(slot.info.id)
        else:
            good.append(slot.info.id)
    return good, foreign


def list_keys(backend: Backend) -> list[KeySlot]:
    """The readable key slots, oldest first (see :func:`damaged_keys` for the others)."""
    slots, _ = _read_slots(backend)
    return [s.info for s in slots]


def damaged_keys(backend: Backend) -> dict[str, str]:
    """Slots that cannot be read: slot id -> what is wrong (for ``check`` and ``key list``)."""
    _, bad = _read_slots(backend)
    return {slot_id: err.message for slot_id, err in bad.items()}


def remove_key(backend: Backend, slot_id: str, *, current: str) -> None:
    """Delete a slot; refuse the slot in use and the last readable slot."""
    if slot_id == current:
        raise UsageError(
            f"key slot {slot_id} is the one in use",
            hint="unlock with another password to remove it, or use `cargohold key passwd`",
        )
    slots, bad = _read_slots(backend)
    ids = {s.info.id for s in slots}
    if slot_id not in ids and slot_id not in bad:
        raise UsageError(f"no key slot {slot_id!r}", hint="list them with `cargohold key list`")
    if slot_id in ids and len(ids - {slot_id}) == 0:
        raise UsageError(f"key slot {slot_id} is the last one; removing it would lose the repository")
    try:
        backend.delete(PREFIX + slot_id)
    except ObjectNotFound:
        raise UsageError(f"no key slot {slot_id!r}", hint="list them with `cargohold key list`") from None


def change_password(
    backend: Backend, master: MasterKey, current: str, new_password: str, *, config: RepoConfig | None = None
) -> str:
    """Replace slot ``current`` by a new slot for ``new_password``; return the new id.

    The new slot is written before the old one is removed, so a crash in between
    leaves both passwords working, never none.
    """
    label = ""
    with contextlib.suppress(ObjectNotFound, IntegrityError, UnsupportedFormat):
        label = _decode(current, backend.load(PREFIX + current)).info.label
    new_id = create_key(backend, new_password, master, label=label, config=config)
    with contextlib.suppress(ObjectNotFound):
        backend.delete(PREFIX + current)
    return new_id


# --- exports -------------------------------------------------------------------------------


@dataclass(frozen=True)
class ExportedKey:
    """A key export: the master key wrapped by the password like a slot (bound to the
    repository id instead of a slot id), and the sealed config copy."""

    repo_id: str
    kdf: KdfParams
    salt: bytes
    wrapped: bytes
    config: bytes

    def __repr__(self) -> str:
        return f"ExportedKey(repo_id={self.repo_id!r})"


def _export_ad(repo_id: str) -> bytes:
    return _EXPORT_AD_PREFIX + repo_id.encode("ascii")


def export_key(master: MasterKey, config: RepoConfig, password: str, *, kdf: KdfParams | None = None) -> ExportedKey:
    """Seal ``master`` with ``password`` (a fresh salt) together with a copy of ``config``."""
    if not password:
        raise UsageError("the password must not be empty")
    params = kdf or KdfParams.from_env()
    salt = secrets.token_bytes(SALT_LEN)
    wrapped = seal_with_key(params.derive(password, salt), master.to_bytes(), _export_ad(config.id))
    return ExportedKey(config.id, params, salt, wrapped, seal_config(master, config))


def open_export(exported: ExportedKey, password: str) -> tuple[MasterKey, RepoConfig]:
    """The master key and the verified config of an export; WrongPassword when the password
    does not open it (the export's own checksum has ruled out damage by then)."""
    master = _unwrap(
        exported.kdf, exported.salt, exported.wrapped, password, _export_ad(exported.repo_id), "the exported key"
    )
    if master is None:
        raise WrongPassword(
            f"wrong password: it does not open the exported key of repository {exported.repo_id}",
            hint="give the password the key had when it was exported (CARGOHOLD_PASSWORD or --password-file)",
        )
    config = open_config(master, exported.config)
    if config.id != exported.repo_id:
        raise IntegrityError(
            f"the exported key names repository {exported.repo_id} but holds the config of {config.id}"
        )
    return master, config


@dataclass(frozen=True)
class ExportRecord:
    time: str
    form: str
    slot: str


def record_export(backend: Backend, *, form: str, slot: str) -> str:
    """Note in the repository that its key was exported (``keys/exports/<16 hex>``)."""
    doc = {
        "version": 1,
        "time": _now(),
        "form": form,
        "slot": slot,
        "host": socket.gethostname(),
        "user": current_user(),
    }
    name = EXPORTS_PREFIX + secrets.token_hex(8)
    backend.create(name, docsum.seal(doc, _SLOT_INDENT))
    return name


def list_exports(backend: Backend) -> list[ExportRecord]:
    """Every export record, oldest first; an unreadable one still counts (time "unknown")."""
    out: list[ExportRecord] = []
    for info in backend.list(EXPORTS_PREFIX):
        try:
            doc = json.loads(backend.load(info.name))
            out.append(ExportRecord(str(doc["time"]), str(doc["form"]), str(doc["slot"])))
        except ObjectNotFound:
            continue
        except (ValueError, KeyError, TypeError):
            out.append(ExportRecord("unknown", "unknown", ""))
    out.sort(key=lambda r: r.time)
    return out
