"""What the rules look at: workloads (compose services or live containers) and volumes.

Both collectors (:mod:`cargohold.audit.collect_files`, :mod:`cargohold.audit.collect_live`)
produce an :class:`AuditInput`; the rules (:mod:`cargohold.audit.rules`) are pure
functions of it, so every rule is tested without an engine.
"""

from __future__ import annotations

import posixpath
from collections.abc import Mapping
from dataclasses import dataclass, field
from enum import StrEnum

from cargohold.model.backups import BackupIndex, BackupPolicy
from cargohold.model.engine import MountInfo, MountType
from cargohold.model.inventory import VolumeKind, declared_coverage


class StoreKind(StrEnum):
    """What holds a path inside a container."""

    NAMED_VOLUME = "named-volume"
    ANONYMOUS_VOLUME = "anonymous-volume"
    BIND = "bind"
    TMPFS = "tmpfs"
    OTHER = "other"


@dataclass(frozen=True, slots=True)
class Mount:
    kind: StoreKind
    target: str
    #: Engine volume name (volumes), host path (binds), "" otherwise.
    source: str = ""
    read_only: bool = False
    #: Binds: whether the host path exists (None: cannot know).
    source_exists: bool | None = None
    #: Compose top-level volume key (files), when a named volume.
    compose_key: str | None = None
    external: bool = False
    file: str | None = None
    line: int | None = None


@dataclass(frozen=True, slots=True)
class WritableLayer:
    """Files a container wrote into its writable layer, outside every mount."""

    #: Added or modified paths (files and directories), mounts and noise left out.
    paths: tuple[str, ...]
    #: Size of each measured file among them.
    sizes: Mapping[str, int] = field(default_factory=dict)
    #: True when only part of the files could be measured (sizes are a lower bound).
    partial: bool = False

    @property
    def size(self) -> int:
        return sum(self.sizes.values())


@dataclass(frozen=True, slots=True)
class Workload:
    """A compose service (files) or a container (live)."""

    name: str
    image: str | None
    mounts: tuple[Mount, ...]
    #: "service" (from files) or "container" (live engine).
    kind: str = "container"
    project: str | None = None
    service: str | None = None
    labels: Mapping[str, str] = field(default_factory=dict)
    restart: str | None = None
    volumes_from: tuple[str, ...] = ()
    #: Paths the image declares with VOLUME, as the engine reports them (live only).
    image_volumes: tuple[str, ...] = ()
    writable: WritableLayer | None = None
    state: str = ""
    #: Compose working directory (label) and whether it still exists (live only).
    working_dir: str | None = None
    working_dir_exists: bool | None = None
    file: str | None = None
    line: int | None = None
    #: Compose file that defines the service, for fixes.
    volumes_line: int | None = None

    @property
    def container(self) -> str | None:
        return self.name if self.kind == "container" else None

    def store_of(self, path: str) -> tuple[Mount | None, bool]:
        """The mount that holds ``path`` (exact, else the deepest parent) and whether it is a parent.

        The rule is the inventory's (:func:`cargohold.model.inventory.declared_coverage`),
        applied to these mounts.
        """
        infos: list[MountInfo] = []
        kinds: dict[str, VolumeKind] = {}
        for i, m in enumerate(self.mounts):
            if m.kind in (StoreKind.NAMED_VOLUME, StoreKind.ANONYMOUS_VOLUME):
                name = m.source or f"<anonymous {i}>"
                anonymous = m.kind is StoreKind.ANONYMOUS_VOLUME
                kinds[name] = VolumeKind.ANONYMOUS if anonymous else VolumeKind.NAMED
                infos.append(MountInfo(MountType.VOLUME, m.target, name=name))
            else:
                infos.append(MountInfo(_MOUNT_TYPES[m.kind], m.target, source=m.source))
        [cov] = declared_coverage([path], infos, kinds)
        holder = cov.via_parent or cov.path
        mount = next((m for m in self.mounts if posixpath.normpath(m.target) == holder), None)
        return mount, mount is not None and cov.via_parent is not None


_MOUNT_TYPES = {
    StoreKind.BIND: MountType.BIND,
    StoreKind.TMPFS: MountType.TMPFS,
    StoreKind.OTHER: MountType.OTHER,
}


@dataclass(frozen=True, slots=True)
class VolumeFact:
    """A volume as the audit sees it: engine volumes (live) or top-level volumes (files)."""

    name: str
    anonymous: bool
    size: int | None = None
    #: Names of containers (live) or services (files) that mount it.
    users: tuple[str, ...] = ()
    #: Users that are databases of the knowledge base (for the consistency rule).
    database_users: tuple[str, ...] = ()
    compose_key: str | None = None
    external: bool = False
    file: str | None = None
    line: int | None = None
    #: The inventory's flag: used by no container and holding bytes (live only).
    dangling_with_data: bool = False


@dataclass(frozen=True, slots=True)
class AuditInput:
    #: "live" or "files".
    source: str
    workloads: tuple[Workload, ...]
    volumes: tuple[VolumeFact, ...] = ()
    project: str | None = None
    #: Compose files only: where an obsolete ``version:`` is written.
    version_locs: tuple[tuple[str, int], ...] = ()
    #: Names of the engine's volumes when known (live, or files with --live).
    engine_volumes: frozenset[str] | None = None
    #: Engine API version (dangling-volume severity depends on what prune removes).
    engine_api: str | None = None
    #: None: no repository configured, backup state unknown.
    backups: BackupIndex | None = None
    policy: BackupPolicy = field(default_factory=BackupPolicy)
