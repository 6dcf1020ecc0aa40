"""The inventory: where a Docker engine keeps state, and what is at risk. Pure logic.

Input is what the Docker port reports (:mod:`cargohold.model.engine`); output is a list
of entries with the conclusions cargohold draws: volume kinds, who uses what, flags,
and which image-declared VOLUME paths are covered by what. No I/O here; the service
layer (:mod:`cargohold.services.inventory`) gathers the inputs.
"""

from __future__ import annotations

import posixpath
import re
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field, replace
from datetime import UTC, datetime
from enum import StrEnum
from typing import Any

from cargohold.model.backups import BackupIndex, BackupRecord
from cargohold.model.engine import ContainerInfo, ImageInfo, MountInfo, MountType, VolumeInfo

#: JSON schema versions of the inventory documents (bump on incompatible change).
SCHEMA_VERSION = 1

COMPOSE_PROJECT = "com.docker.compose.project"
COMPOSE_SERVICE = "com.docker.compose.service"
COMPOSE_VOLUME = "com.docker.compose.volume"
COMPOSE_WORKDIR = "com.docker.compose.project.working_dir"
COMPOSE_CONFIG_FILES = "com.docker.compose.project.config_files"
#: Set by Docker Engine 23+ on volumes created without a name.
ANONYMOUS_LABEL = "com.docker.volume.anonymous"

_ANONYMOUS_NAME = re.compile(r"^[0-9a-f]{64}$")


class VolumeKind(StrEnum):
    NAMED = "named"
    ANONYMOUS = "anonymous"


class Flag(StrEnum):
    ANONYMOUS_IN_USE = "anonymous-in-use"
    DANGLING = "dangling"
    DANGLING_WITH_DATA = "dangling-with-data"


class Coverage(StrEnum):
    """What covers an image-declared VOLUME path in a container."""

    NAMED_VOLUME = "named-volume"
    ANONYMOUS_VOLUME = "anonymous-volume"
    BIND = "bind"
    TMPFS = "tmpfs"
    NOTHING = "nothing"


def volume_kind(volume: VolumeInfo | str, labels: Mapping[str, str] | None = None) -> VolumeKind:
    """Anonymous volumes are those the engine named itself.

    Engine 23+ labels them ``com.docker.volume.anonymous``; older engines give them a
    64-hex-digit name and no label, which is what we recognise there.
    """
    if isinstance(volume, VolumeInfo):
        name, labels = volume.name, volume.labels
    else:
        name = volume
    if labels and ANONYMOUS_LABEL in labels:
        return VolumeKind.ANONYMOUS
    return VolumeKind.ANONYMOUS if _ANONYMOUS_NAME.match(name) else VolumeKind.NAMED


@dataclass(frozen=True, slots=True)
class VolumeUser:
    """A container that mounts a volume."""

    name: str
    id: str
    state: str
    mount_path: str
    read_only: bool
    compose_project: str | None
    compose_service: str | None

    def to_json(self) -> dict[str, Any]:
        return {
            "name": self.name,
            "id": self.id,
            "state": self.state,
            "mount_path": self.mount_path,
            "read_only": self.read_only,
            "compose_project": self.compose_project,
            "compose_service": self.compose_service,
        }


@dataclass(frozen=True, slots=True)
class VolumeEntry:
    name: str
    driver: str
    kind: VolumeKind
    #: Bytes used, or None when the engine cannot measure it (non-local drivers).
    size: int | None
    mountpoint: str
    labels: Mapping[str, str]
    options: Mapping[str, str]
    scope: str
    created_at: str
    compose_project: str | None
    compose_volume: str | None
    users: tuple[VolumeUser, ...]
    flags: tuple[Flag, ...]
    #: The volume's newest backup and verification, when a repository was consulted.
    backup: BackupRecord | None = None

    def to_json(self, *, now: datetime | None = None) -> dict[str, Any]:
        return {
            "backup": backup_json(self.backup, now) if self.backup is not None else None,
            "name": self.name,
            "driver": self.driver,
            "kind": self.kind.value,
            "size_bytes": self.size,
            "mountpoint": self.mountpoint,
            "labels": dict(self.labels),
            "options": dict(self.options),
            "scope": self.scope,
            "created_at": self.created_at,
            "compose": (
                {"project": self.compose_project, "volume": self.compose_volume}
                if self.compose_project is not None
                else None
            ),
            "containers": [u.to_json() for u in self.users],
            "flags": [f.value for f in self.flags],
        }


def backup_json(rec: BackupRecord, now: datetime | None = None) -> dict[str, Any]:
    now = now or datetime.now(UTC)
    return {
        "last_backup": rec.last_backup.isoformat() if rec.last_backup else None,
        "age_seconds": int((now - rec.last_backup).total_seconds()) if rec.last_backup else None,
        "snapshot": rec.snapshot_id or None,
        "consistency": rec.consistency.value if rec.consistency else None,
        "last_verify": rec.last_verify.isoformat() if rec.last_verify else None,
        "last_verify_ok": rec.last_verify_ok,
    }


def with_backups(entries: Iterable[VolumeEntry], index: BackupIndex) -> list[VolumeEntry]:
    """The entries with each volume's backup record (None when never backed up)."""
    return [replace(e, backup=index.get(e.name)) for e in entries]


def _flags(kind: VolumeKind, users: tuple[VolumeUser, ...], size: int | None) -> tuple[Flag, ...]:
    flags: list[Flag] = []
    if kind is VolumeKind.ANONYMOUS and users:
        flags.append(Flag.ANONYMOUS_IN_USE)
    if not users:
        flags.append(Flag.DANGLING)
        if size is not None and size > 0:
            flags.append(Flag.DANGLING_WITH_DATA)
    return tuple(flags)


def build_volume_inventory(
    volumes: Iterable[VolumeInfo],
    containers: Iterable[ContainerInfo],
    sizes: Mapping[str, int],
) -> list[VolumeEntry]:
    """One entry per volume, sorted by name, with its users and flags.

    ``containers`` must include stopped ones: a volume used only by a stopped
    container is not dangling (``docker volume prune`` keeps it).
    """
    users: dict[str, list[VolumeUser]] = {}
    for c in containers:
        for m in c.mounts:
            if m.type is not MountType.VOLUME or not m.name:
                continue
            users.setdefault(m.name, []).append(
                VolumeUser(
                    name=c.name,
                    id=c.id,
                    state=c.state,
                    mount_path=m.destination,
                    read_only=m.read_only,
                    compose_project=c.labels.get(COMPOSE_PROJECT),
                    compose_service=c.labels.get(COMPOSE_SERVICE),
                )
            )
    entries = []
    for v in sorted(volumes, key=lambda v: v.name):
        kind = volume_kind(v)
        used_by = tuple(sorted(users.get(v.name, ()), key=lambda u: (u.name, u.mount_path)))
        size = sizes.get(v.name)
        entries.append(
            VolumeEntry(
                name=v.name,
                driver=v.driver,
                kind=kind,
                size=size,
                mountpoint=v.mountpoint,
                labels=v.labels,
                options=v.options,
                scope=v.scope,
                created_at=v.created_at,
                compose_project=v.labels.get(COMPOSE_PROJECT),
                compose_volume=v.labels.get(COMPOSE_VOLUME),
                users=used_by,
                flags=_flags(kind, used_by, size),
            )
        )
    return entries


# --- mounts ------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class MountEntry:
    type: MountType
    destination: str
    source: str
    volume: str | None
    volume_kind: VolumeKind | None
    driver: str | None
    read_only: bool
    #: For binds: whether the host path exists; None when unknown (remote engine).
    source_exists: bool | None
    #: tmpfs options.
    options: str
    #: The image declares this path as a VOLUME.
    declared: bool

    def to_json(self) -> dict[str, Any]:
        return {
            "type": self.type.value,
            "destination": self.destination,
            "source": self.source,
            "volume": self.volume,
            "volume_kind": self.volume_kind.value if self.volume_kind else None,
            "driver": self.driver,
            "read_only": self.read_only,
            "source_exists": self.source_exists,
            "options": self.options,
            "declared_by_image": self.declared,
        }


@dataclass(frozen=True, slots=True)
class DeclaredVolume:
    """An image VOLUME path and what covers it in one container."""

    path: str
    covered_by: Coverage
    #: Volume name, bind source, or "" for tmpfs/nothing.
    source: str
    #: Destination of the covering mount when it is a parent directory of ``path``.
    via_parent: str | None = None

    def to_json(self) -> dict[str, Any]:
        return {
            "path": self.path,
            "covered_by": self.covered_by.value,
            "source": self.source,
            "via_parent": self.via_parent,
        }


@dataclass(frozen=True, slots=True)
class ContainerEntry:
    name: str
    id: str
    image: str
    image_id: str
    state: str
    compose_project: str | None
    compose_service: str | None
    compose_working_dir: str | None
    compose_config_files: tuple[str, ...]
    mounts: tuple[MountEntry, ...]
    declared_volumes: tuple[DeclaredVolume, ...]
    #: The image could not be inspected (removed since): declared VOLUMEs unknown.
    image_missing: bool = False
    labels: Mapping[str, str] = field(default_factory=dict)

    def to_json(self) -> dict[str, Any]:
        return {
            "name": self.name,
            "id": self.id,
            "image": self.image,
            "image_id": self.image_id,
            "state": self.state,
            "compose": (
                {
                    "project": self.compose_project,
                    "service": self.compose_service,
                    "working_dir": self.compose_working_dir,
                    "config_files": list(self.compose_config_files),
                }
                if self.compose_project is not None
                else None
            ),
            "mounts": [m.to_json() for m in self.mounts],
            "declared_volumes": [d.to_json() for d in self.declared_volumes],
            "image_missing": self.image_missing,
        }


def _norm(path: str) -> str:
    return posixpath.normpath(path) if path else path


def _coverage(mount: MountInfo, kinds: Mapping[str, VolumeKind]) -> tuple[Coverage, str]:
    if mount.type is MountType.VOLUME:
        kind = kinds.get(mount.name) or volume_kind(mount.name)
        cov = Coverage.ANONYMOUS_VOLUME if kind is VolumeKind.ANONYMOUS else Coverage.NAMED_VOLUME
        return cov, mount.name
    if mount.type is MountType.BIND:
        return Coverage.BIND, mount.source
    if mount.type is MountType.TMPFS:
        return Coverage.TMPFS, ""
    return Coverage.NOTHING, mount.source


def declared_coverage(
    declared: Iterable[str], mounts: Iterable[MountInfo], kinds: Mapping[str, VolumeKind]
) -> tuple[DeclaredVolume, ...]:
    """For each image VOLUME path, the mount that holds it: exact, else the deepest parent."""
    by_dest = {_norm(m.destination): m for m in mounts}
    out = []
    for raw in sorted(declared):
        path = _norm(raw)
        mount = by_dest.get(path)
        parent: str | None = None
        if mount is None:
            probe = path
            while probe not in ("/", ""):
                probe = posixpath.dirname(probe)
                if probe in by_dest:
                    mount, parent = by_dest[probe], probe
                    break
        if mount is None:
            out.append(DeclaredVolume(path=path, covered_by=Coverage.NOTHING, source=""))
            continue
        cov, source = _coverage(mount, kinds)
        out.append(DeclaredVolume(path=path, covered_by=cov, source=source, via_parent=parent))
    return tuple(out)


def build_mount_inventory(
    containers: Iterable[ContainerInfo],
    images: Mapping[str, ImageInfo],
    volume_kinds: Mapping[str, VolumeKind],
    path_exists: Callable[[str], bool | None],
) -> list[ContainerEntry]:
    """Every container's mounts and image-declared VOLUME coverage, sorted by name.

    ``images`` maps image ids to their inspection (missing ids: image removed);
    ``path_exists`` answers for bind sources (None when it cannot know).
    """
    entries = []
    for c in sorted(containers, key=lambda c: c.name):
        image = images.get(c.image_id)
        declared_paths = {_norm(p) for p in image.volumes} if image else set()
        mounts = []
        for m in sorted(c.mounts, key=lambda m: m.destination):
            kind: VolumeKind | None = None
            if m.type is MountType.VOLUME:
                kind = volume_kinds.get(m.name) or volume_kind(m.name)
            mounts.append(
                MountEntry(
                    type=m.type,
                    destination=m.destination,
                    source=m.source,
                    volume=(m.name or None) if m.type is MountType.VOLUME else None,
                    volume_kind=kind,
                    driver=(m.driver or None) if m.type is MountType.VOLUME else None,
                    read_only=m.read_only,
                    source_exists=path_exists(m.source) if m.type is MountType.BIND else None,
                    options=m.options,
                    declared=_norm(m.destination) in declared_paths,
                )
            )
        labels = c.labels
        config_files = labels.get(COMPOSE_CONFIG_FILES, "")
        entries.append(
            ContainerEntry(
                name=c.name,
                id=c.id,
                image=c.image,
                image_id=c.image_id,
                state=c.state,
                compose_project=labels.get(COMPOSE_PROJECT),
                compose_service=labels.get(COMPOSE_SERVICE),
                compose_working_dir=labels.get(COMPOSE_WORKDIR),
                compose_config_files=tuple(f for f in config_files.split(",") if f),
                mounts=tuple(mounts),
                declared_volumes=declared_coverage(declared_paths, c.mounts, volume_kinds),
                image_missing=image is None,
                labels=labels,
            )
        )
    return entries
