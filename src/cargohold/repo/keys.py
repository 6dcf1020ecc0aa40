"""Key slots: the master key wrapped by password-derived keys.

Each slot is the object ``keys/<16 hex>`` (JSON, see docs/FORMAT.md)::

    {"version": 1, "created": ISO-8601, "host": ..., "user": ..., "label": ...,
     "kdf": {"algorithm": "argon2id", "time_cost": 3, "memory_kib": 65536,
             "parallelism": 2, "salt": base64(16 bytes)},
     "aead": "aes-256-gcm",
     "wrapped": base64(nonce || AES-256-GCM(argon2id(password, salt), master key) || tag)}

The associated data of the wrap is ``b"cargohold-key\\0" + slot id``. A repository has
any number of slots, each opening the same master key with its own password; the
master key is never stored unwrapped.
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
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any, ClassVar

from argon2.exceptions import HashingError
from argon2.low_level import Type, hash_secret_raw

from cargohold.backends.base import Backend
from cargohold.errors import (
    IntegrityError,
    ObjectExists,
    ObjectNotFound,
    RepositoryNotFound,
    UnsupportedFormat,
    UsageError,
    WrongPassword,
)
from cargohold.procinfo import current_user
from cargohold.repo.crypto import MasterKey, open_with_key, seal_with_key

log = logging.getLogger(__name__)

PREFIX = "keys/"
SLOT_VERSION = 1
SALT_LEN = 16
_AD_PREFIX = b"cargohold-key\0"
_ID_HEX = 16
# Bounds a slot's KDF parameters may take: a damaged or hostile slot must not make
# unlock allocate gigabytes or spin for minutes.
_MAX_MEMORY_KIB = 4 * 1024 * 1024
_MAX_TIME_COST = 64
_MAX_PARALLELISM = 64


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


@dataclass(frozen=True)
class _Slot:
    info: KeySlot
    salt: bytes
    wrapped: bytes


def _now() -> str:
    return datetime.now(UTC).isoformat(timespec="seconds").replace("+00:00", "Z")


def _ad(slot_id: str) -> bytes:
    return _AD_PREFIX + slot_id.encode("ascii")


def _slot_id_of(name: str) -> str:
    return name[len(PREFIX) :]


def _valid_id(slot_id: str) -> bool:
    return len(slot_id) == _ID_HEX and all(c in "0123456789abcdef" for c in slot_id)


def _encode(slot_id: str, info: KeySlot, salt: bytes, wrapped: bytes) -> bytes:
    doc = {
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
    return json.dumps(doc, indent=1, sort_keys=True).encode("utf-8") + b"\n"


def _decode(slot_id: str, raw: bytes) -> _Slot:
    """Parse a slot; raise IntegrityError / UnsupportedFormat naming it."""
    where = f"key slot {PREFIX}{slot_id}"
    try:
        doc: Any = json.loads(raw)
    except (UnicodeDecodeError, json.JSONDecodeError) as err:
        raise IntegrityError(f"{where} is damaged: not valid JSON ({err})") from None
    if not isinstance(doc, dict):
        raise IntegrityError(f"{where} is damaged: not a JSON object")
    version = doc.get("version")
    if version != SLOT_VERSION:
        raise UnsupportedFormat(f"{where} has format version {version!r}; this cargohold reads {SLOT_VERSION}")
    try:
        kdf = doc["kdf"]
        if kdf["algorithm"] != "argon2id" or doc["aead"] != "aes-256-gcm":
            raise UnsupportedFormat(f"{where} uses {kdf['algorithm']}/{doc['aead']}, not argon2id/aes-256-gcm")
        params = KdfParams(
            time_cost=_int(kdf["time_cost"]),
            memory_kib=_int(kdf["memory_kib"]),
            parallelism=_int(kdf["parallelism"]),
        )
        salt = base64.b64decode(kdf["salt"], validate=True)
        wrapped = base64.b64decode(doc["wrapped"], validate=True)
        info = KeySlot(
            id=slot_id,
            created=_str(doc["created"]),
            host=_str(doc["host"]),
            user=_str(doc["user"]),
            label=_str(doc["label"]),
            kdf=params,
        )
    except (KeyError, TypeError, ValueError, binascii.Error) as err:
        raise IntegrityError(f"{where} is damaged: {type(err).__name__} {err}") from None
    if doc.get("id", slot_id) != slot_id:
        raise IntegrityError(f"{where} is damaged: it names itself {doc.get('id')!r}")
    if len(salt) < 8 or not wrapped:
        raise IntegrityError(f"{where} is damaged: salt or wrapped key too short")
    return _Slot(info=info, salt=salt, wrapped=wrapped)


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
    backend: Backend, password: str, master: MasterKey, *, label: str = "", kdf: KdfParams | None = None
) -> str:
    """Add a slot that opens ``master`` with ``password``; return its id."""
    if not password:
        raise UsageError("the password must not be empty")
    params = kdf or KdfParams.from_env()
    salt = secrets.token_bytes(SALT_LEN)
    wrapping_key = params.derive(password, salt)
    info_base = {"created": _now(), "host": socket.gethostname(), "user": current_user(), "label": label}
    for _ in range(8):
        slot_id = secrets.token_hex(_ID_HEX // 2)
        info = KeySlot(id=slot_id, kdf=params, **info_base)
        wrapped = seal_with_key(wrapping_key, master.to_bytes(), _ad(slot_id))
        try:
            backend.create(PREFIX + slot_id, _encode(slot_id, info, salt, wrapped))
        except ObjectExists:
            continue
        return slot_id
    raise IntegrityError("could not find a free key slot id")  # pragma: no cover - 2**64 ids


def _open_slot(slot: _Slot, password: str) -> MasterKey | None:
    wrapping_key = slot.info.kdf.derive(password, slot.salt)
    try:
        raw = open_with_key(wrapping_key, slot.wrapped, _ad(slot.info.id))
    except IntegrityError:
        return None
    try:
        return MasterKey.from_bytes(raw)
    except (IntegrityError, UnsupportedFormat) as err:
        raise IntegrityError(f"key slot {PREFIX}{slot.info.id} holds a malformed master key: {err.message}") from None


def unlock(backend: Backend, password: str) -> tuple[MasterKey, str]:
    """The master key and the id of the slot ``password`` opens.

    Damaged slots are skipped (and logged); the error names them when no slot opens.
    """
    slots, bad = _read_slots(backend)
    if not slots and not bad:
        raise RepositoryNotFound(f"no repository at {backend.url} (it has no key slots)")
    for slot in slots:
        master = _open_slot(slot, password)
        if master is not None:
            for slot_id, problem in bad.items():
                log.warning("%s (slot %s skipped)", problem.message, slot_id)
            return master, slot.info.id
    damaged = "; ".join(err.message for err in bad.values())
    if not slots and all(isinstance(err, UnsupportedFormat) for err in bad.values()):
        raise UnsupportedFormat(f"no key slot of {backend.url} has a format this cargohold reads: {damaged}")
    if not slots:
        raise IntegrityError(
            f"no key slot of {backend.url} is readable: {damaged}",
            hint="restore the keys/ files from a copy of the repository",
        )
    suffix = f" (besides, {damaged})" if bad else ""
    raise WrongPassword(f"wrong password: none of the {len(slots)} key slots of {backend.url} opens with it{suffix}")


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


def change_password(backend: Backend, master: MasterKey, current: str, new_password: str) -> str:
    """Replace slot ``current`` by a new slot for ``new_password``; return the new id.

    The new slot is written before the old one is removed, so a crash in between
    leaves both passwords working, never none.
    """
    label = ""
    with contextlib.suppress(ObjectNotFound, IntegrityError, UnsupportedFormat):
        label = _decode(current, backend.load(PREFIX + current)).info.label
    new_id = create_key(backend, new_password, master, label=label)
    with contextlib.suppress(ObjectNotFound):
        backend.delete(PREFIX + current)
    return new_id
