"""Snapshots: the commit point of a backup (``snapshots/<sha256 of the stored object>``).

A snapshot is a JSON document (zstd, then AEAD with ``AD_SNAPSHOT``) naming the root
tree blob, when it was taken, what it was taken of (``source``: kind, name and free-form
metadata), tags and statistics.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

from cargohold.errors import IntegrityError, UnsupportedFormat
from cargohold.repo.tree import Node

SNAPSHOT_VERSION = 1


@dataclass(frozen=True)
class Source:
    """What a snapshot was taken of; later issues fill ``meta`` with Docker details."""

    kind: str  # "path" now; "volume", "container", "compose" later
    name: str
    meta: dict[str, Any] = field(default_factory=dict)

    def to_json(self) -> dict[str, Any]:
        return {"kind": self.kind, "name": self.name, "meta": self.meta}


@dataclass
class SnapshotStats:
    files: int = 0
    dirs: int = 0
    others: int = 0
    bytes: int = 0  # logical bytes of all files
    added_bytes: int = 0  # stored bytes of new blobs (after compression and encryption)
    added_raw_bytes: int = 0  # plaintext bytes of new blobs
    files_new: int = 0
    files_changed: int = 0
    files_unchanged: int = 0
    blobs_added: int = 0
    duration: float = 0.0

    def to_json(self) -> dict[str, Any]:
        return dict(self.__dict__)

    @classmethod
    def from_json(cls, d: dict[str, Any]) -> SnapshotStats:
        s = cls()
        for k, v in d.items():
            if hasattr(s, k):
                setattr(s, k, type(getattr(s, k))(v))
        return s


@dataclass
class Snapshot:
    tree: bytes
    time: datetime
    source: Source
    hostname: str = ""
    username: str = ""
    tags: list[str] = field(default_factory=list)
    paths: list[str] = field(default_factory=list)
    parent: str | None = None
    program_version: str = ""
    stats: SnapshotStats = field(default_factory=SnapshotStats)
    #: Metadata of the backed-up directory itself (its ``subtree`` is ``tree``).
    root: Node | None = None
    #: More trees that belong to the snapshot beside the backed-up files, by role — e.g.
    #: ``"dumps"``: application dumps taken with a volume (restore ignores them; check and
    #: prune treat them like ``tree``).
    extra_trees: dict[str, bytes] = field(default_factory=dict)
    id: str = ""  # set when loaded or saved: sha256 hex of the stored object

    def all_trees(self) -> list[bytes]:
        """The root tree and every extra tree: what the snapshot keeps alive."""
        return [self.tree, *self.extra_trees.values()]

    def to_json(self) -> dict[str, Any]:
        return {
            "version": SNAPSHOT_VERSION,
            "tree": self.tree.hex(),
            "time": self.time.isoformat(),
            "source": self.source.to_json(),
            "hostname": self.hostname,
            "username": self.username,
            "tags": list(self.tags),
            "paths": list(self.paths),
            "parent": self.parent,
            "program_version": self.program_version,
            "stats": self.stats.to_json(),
            "root": self.root.to_json() if self.root is not None else None,
            "extra_trees": {k: v.hex() for k, v in sorted(self.extra_trees.items())},
        }

    def encode(self) -> bytes:
        return json.dumps(self.to_json(), sort_keys=True, separators=(",", ":")).encode("utf-8")

    @classmethod
    def decode(cls, data: bytes, *, snap_id: str) -> Snapshot:
        what = f"snapshot {snap_id}"
        try:
            d = json.loads(data)
            if d.get("version") != SNAPSHOT_VERSION:
                raise UnsupportedFormat(
                    f"{what}: snapshot format version {d.get('version')!r} is newer than this cargohold"
                )
            src = d["source"]
            return cls(
                tree=bytes.fromhex(d["tree"]),
                time=datetime.fromisoformat(d["time"]),
                source=Source(str(src["kind"]), str(src["name"]), dict(src.get("meta", {}))),
                hostname=str(d.get("hostname", "")),
                username=str(d.get("username", "")),
                tags=[str(t) for t in d.get("tags", [])],
                paths=[str(p) for p in d.get("paths", [])],
                parent=d.get("parent"),
                program_version=str(d.get("program_version", "")),
                stats=SnapshotStats.from_json(d.get("stats", {})),
                root=Node.from_json(d["root"]) if d.get("root") else None,
                extra_trees={str(k): bytes.fromhex(v) for k, v in (d.get("extra_trees") or {}).items()},
                id=snap_id,
            )
        except (ValueError, KeyError, TypeError) as err:
            raise IntegrityError(f"{what}: malformed ({err})") from None

    @property
    def short_id(self) -> str:
        return self.id[:8]
