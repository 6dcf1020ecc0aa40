"""Backup facts the audit judges: what was backed up and verified, when, and how.

The audit takes them as a plain mapping (:data:`BackupIndex`: volume name →
:class:`BackupRecord`), so any source can fill it: the repository's snapshots
(:func:`index_from_snapshots`), or a scheduler's own records.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass, replace
from datetime import datetime, timedelta
from typing import Any, Protocol

from cargohold.model.consistency import Mode


@dataclass(frozen=True, slots=True)
class BackupRecord:
    """The backup state of one volume."""

    #: Time of the newest backup (timezone-aware), None when never backed up.
    last_backup: datetime | None
    #: Time of the newest successful verification (restore test or read check), None when never.
    last_verified: datetime | None = None
    #: Consistency mode of the newest backup, None when unknown.
    consistency: Mode | None = None
    snapshot_id: str = ""
    #: Time and outcome of the newest verification of any of the volume's snapshots, passed or not.
    last_verify: datetime | None = None
    last_verify_ok: bool | None = None


#: Volume (engine name) → its backup state. Volumes absent from it were never backed up.
BackupIndex = Mapping[str, BackupRecord]


@dataclass(frozen=True, slots=True)
class BackupPolicy:
    #: A backup older than this is stale.
    max_age: timedelta = timedelta(days=1)
    #: A verification older than this (or none) is reported.
    verify_max_age: timedelta = timedelta(days=30)
    #: "Now" for the rules; None means the current time (tests pin it).
    now: datetime | None = None


class _SourceLike(Protocol):
    @property
    def kind(self) -> str: ...

    @property
    def name(self) -> str: ...

    @property
    def meta(self) -> dict[str, Any]: ...


class SnapshotLike(Protocol):
    """What :func:`index_from_snapshots` needs of a repository snapshot."""

    @property
    def time(self) -> datetime: ...

    @property
    def source(self) -> _SourceLike: ...

    @property
    def id(self) -> str: ...


def _mode(value: object) -> Mode | None:
    """The mode of a snapshot's ``consistency`` meta: ``"dump"`` or ``{"mode": "dump", ...}``."""
    if isinstance(value, dict):
        value = value.get("mode")
    try:
        return Mode(str(value)) if value is not None else None
    except ValueError:
        return None


def _when(value: object) -> datetime | None:
    if isinstance(value, datetime):
        return value
    if isinstance(value, str) and value:
        try:
            return datetime.fromisoformat(value)
        except ValueError:
            return None
    return None


class VerificationLike(Protocol):
    """What :func:`index_from_snapshots` needs of a verification record (``cargohold verify``)."""

    @property
    def source_kind(self) -> str: ...

    @property
    def source_name(self) -> str: ...

    @property
    def time(self) -> datetime: ...

    @property
    def ok(self) -> bool: ...


def index_from_snapshots(
    snapshots: Iterable[SnapshotLike], verifications: Iterable[VerificationLike] = ()
) -> dict[str, BackupRecord]:
    """Newest backup per volume from snapshots whose source kind is ``volume``.

    Read from a snapshot's ``source.meta`` when present: ``consistency`` (the mode used,
    a string or ``{"mode": ...}``) and ``verified_at`` (ISO time of a verification).
    ``verifications`` (successful ones count) give each volume its last verification time.
    """
    out = _index(snapshots)
    newest_ok: dict[str, datetime] = {}
    newest_any: dict[str, VerificationLike] = {}
    for v in verifications:
        if v.source_kind != "volume":
            continue
        if v.ok and (v.source_name not in newest_ok or v.time > newest_ok[v.source_name]):
            newest_ok[v.source_name] = v.time
        if v.source_name not in newest_any or v.time > newest_any[v.source_name].time:
            newest_any[v.source_name] = v
    for name, rec in list(out.items()):
        when = newest_ok.get(name)
        last = newest_any.get(name)
        out[name] = replace(
            rec,
            last_verified=when
            if when is not None and (rec.last_verified is None or when > rec.last_verified)
            else rec.last_verified,
            last_verify=last.time if last is not None else None,
            last_verify_ok=last.ok if last is not None else None,
        )
    return out


def _index(snapshots: Iterable[SnapshotLike]) -> dict[str, BackupRecord]:
    out: dict[str, BackupRecord] = {}
    for snap in snapshots:
        if snap.source.kind != "volume":
            continue
        meta = snap.source.meta or {}
        prev = out.get(snap.source.name)
        verified = _when(meta.get("verified_at"))
        if prev is not None and prev.last_verified is not None:
            verified = max(filter(None, (verified, prev.last_verified)))
        if prev is None or prev.last_backup is None or snap.time >= prev.last_backup:
            out[snap.source.name] = BackupRecord(
                last_backup=snap.time,
                last_verified=verified,
                consistency=_mode(meta.get("consistency")),
                snapshot_id=snap.id,
            )
        elif verified is not None:
            out[snap.source.name] = BackupRecord(prev.last_backup, verified, prev.consistency, prev.snapshot_id)
    return out
