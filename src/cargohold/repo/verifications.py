"""Verification records: the outcome of restoring a snapshot and checking it, kept in the repository.

``cargohold verify`` restores a snapshot into scratch space and compares it with the snapshot;
the result is stored as ``verifications/<sha256 of the stored object>`` — JSON, zstd, then AEAD
with associated data ``cargohold:verification`` (like a snapshot). Records are small and
never referenced by other objects; ``prune`` leaves them alone. The newest record of a snapshot
tells when it was last proven restorable (``cargohold volumes``, ``cargohold audit``).
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass, field
from datetime import datetime
from typing import Any

from cargohold.errors import BackendError, IntegrityError
from cargohold.repo.format import decode_object, encode_object, parse_hex_id, sha256_hex
from cargohold.repo.repository import Repository

AD_VERIFICATION = b"cargohold:verification"
PREFIX = "verifications/"
RECORD_VERSION = 1


@dataclass
class DumpCheck:
    kind: str
    container: str
    ok: bool
    detail: str


@dataclass
class VerificationRecord:
    snapshot_id: str
    source_kind: str
    source_name: str
    time: datetime
    ok: bool
    #: "volume" (restored into a scratch Docker volume) or "directory".
    method: str
    via: str
    files: int = 0
    bytes: int = 0
    #: What differed (first ones), or why it could not be checked.
    problems: list[str] = field(default_factory=list)
    dumps: list[DumpCheck] = field(default_factory=list)
    seconds: float = 0.0
    engine: str = ""
    id: str = ""

    def to_json(self) -> dict[str, Any]:
        d = asdict(self)
        d["time"] = self.time.isoformat()
        d.pop("id")
        d["version"] = RECORD_VERSION
        return d

    @classmethod
    def from_json(cls, d: dict[str, Any], rid: str) -> VerificationRecord:
        d = dict(d)
        d.pop("version", None)
        d["time"] = datetime.fromisoformat(d["time"])
        d["dumps"] = [DumpCheck(**x) for x in d.get("dumps", [])]
        return cls(**d, id=rid)


def save(repo: Repository, record: VerificationRecord) -> str:
    data = json.dumps(record.to_json(), sort_keys=True, separators=(",", ":")).encode()
    stored = encode_object(repo.cipher, data, AD_VERIFICATION)
    rid = sha256_hex(stored)
    repo.store_object(f"{PREFIX}{rid}", stored)
    record.id = rid
    return rid


def load_all(repo: Repository) -> list[VerificationRecord]:
    """Every readable record, oldest first (unreadable ones are skipped: they prove nothing)."""
    out = []
    for info in repo.backend.list(PREFIX):
        rid = info.name.rsplit("/", 1)[1]
        if parse_hex_id(rid) is None:
            continue
        try:
            stored = repo.backend.load(info.name)
            if sha256_hex(stored) != rid:
                continue
            raw = decode_object(repo.cipher, stored, AD_VERIFICATION, what=info.name)
            out.append(VerificationRecord.from_json(json.loads(raw), rid))
        except (IntegrityError, BackendError, ValueError, KeyError, TypeError):
            continue
    return sorted(out, key=lambda r: r.time)


def latest_by_snapshot(records: list[VerificationRecord]) -> dict[str, VerificationRecord]:
    out: dict[str, VerificationRecord] = {}
    for r in records:  # oldest first: later ones win
        out[r.snapshot_id] = r
    return out
