"""Compose project → audit input: each service a workload, each top-level volume a fact."""

from __future__ import annotations

import os
from collections.abc import Callable, Mapping

from cargohold.audit.knowledge import lookup
from cargohold.audit.model import AuditInput, Mount, StoreKind, VolumeFact, Workload
from cargohold.compose.model import ComposeProject, Service, ServiceVolume, VolumeType
from cargohold.model.backups import BackupIndex, BackupPolicy


def _mount(project: ComposeProject, v: ServiceVolume, path_exists: Callable[[str], bool | None]) -> Mount:
    file, line = v.loc.file, v.loc.line
    if v.type is VolumeType.VOLUME:
        if not v.source:
            return Mount(StoreKind.ANONYMOUS_VOLUME, v.target, read_only=v.read_only, file=file, line=line)
        top = project.volumes.get(v.source)
        return Mount(
            StoreKind.NAMED_VOLUME,
            v.target,
            source=project.volume_name(v.source),
            read_only=v.read_only,
            compose_key=v.source,
            external=bool(top and top.external),
            file=file,
            line=line,
        )
    if v.type is VolumeType.BIND:
        return Mount(
            StoreKind.BIND,
            v.target,
            source=v.source,
            read_only=v.read_only,
            source_exists=path_exists(v.source),
            file=file,
            line=line,
        )
    if v.type is VolumeType.TMPFS:
        return Mount(StoreKind.TMPFS, v.target, file=file, line=line)
    return Mount(StoreKind.OTHER, v.target, source=v.source, read_only=v.read_only, file=file, line=line)


def workload_of(
    project: ComposeProject,
    s: Service,
    path_exists: Callable[[str], bool | None] = os.path.lexists,
    image_volumes: Mapping[str, tuple[str, ...]] | None = None,
) -> Workload:
    return Workload(
        image_volumes=(image_volumes or {}).get(s.image or "", ()),
        name=s.name,
        kind="service",
        image=s.image,
        mounts=tuple(_mount(project, v, path_exists) for v in s.volumes),
        project=project.name,
        service=s.name,
        labels=s.labels,
        restart=s.restart,
        volumes_from=s.volumes_from,
        file=s.loc.file,
        line=s.loc.line,
    )


def audit_input(
    project: ComposeProject,
    *,
    engine_volumes: frozenset[str] | None = None,
    backups: BackupIndex | None = None,
    policy: BackupPolicy | None = None,
    path_exists: Callable[[str], bool | None] = os.path.lexists,
    image_volumes: Mapping[str, tuple[str, ...]] | None = None,
) -> AuditInput:
    """The audit input of a loaded compose project.

    ``image_volumes`` (image reference → its VOLUME paths, when the engine has the image)
    lets the rules see the anonymous volumes compose will create for unknown images too.
    """
    workloads = tuple(workload_of(project, s, path_exists, image_volumes) for s in project.services.values())
    users: dict[str, list[str]] = {}
    db_users: dict[str, list[str]] = {}
    for s in project.services.values():
        entry = lookup(s.image)
        for v in s.volumes:
            if v.type is VolumeType.VOLUME and v.source:
                users.setdefault(v.source, []).append(s.name)
                if entry is not None and entry.database:
                    db_users.setdefault(v.source, []).append(s.name)
    facts = tuple(
        VolumeFact(
            name=top.name,
            anonymous=False,
            users=tuple(dict.fromkeys(users.get(key, []))),
            database_users=tuple(dict.fromkeys(db_users.get(key, []))),
            compose_key=key,
            external=top.external,
            file=top.loc.file,
            line=top.loc.line,
        )
        for key, top in project.volumes.items()
    )
    return AuditInput(
        source="files",
        workloads=workloads,
        volumes=facts,
        project=project.name,
        version_locs=tuple((loc.file, loc.line) for loc in project.version_locs),
        engine_volumes=engine_volumes,
        backups=backups,
        policy=policy or BackupPolicy(),
    )
