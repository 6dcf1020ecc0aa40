"""What to back up on an engine: volumes and bind mounts, with the containers that use them.

:func:`resolve` turns the user's selection — volume names, ``--container``, ``--project``,
``--all`` — into :class:`StateSource` values, each one volume or one bind-mounted host path
with every container that mounts it. Everything is checked before anything is touched, so
an unknown name fails the run before any container is stopped.
"""

from __future__ import annotations

import os
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from enum import StrEnum
from typing import Any

from cargohold.docker.port import DockerPort
from cargohold.errors import UsageError
from cargohold.model.engine import ContainerInfo, EngineInfo, MountType, VolumeInfo
from cargohold.model.inventory import COMPOSE_CONFIG_FILES, COMPOSE_PROJECT, COMPOSE_SERVICE, COMPOSE_WORKDIR
from cargohold.services.inventory import inspect_containers

#: Bind sources that are plumbing, not state: never backed up through --container/--project.
_PLUMBING = ("/var/run/docker.sock", "/run/docker.sock", "/etc/localtime", "/etc/timezone", "/etc/hosts")
_PLUMBING_PREFIXES = ("/proc/", "/sys/", "/dev/")


class SourceKind(StrEnum):
    VOLUME = "volume"
    BIND = "bind"


class Via(StrEnum):
    AUTO = "auto"
    DIRECT = "direct"
    API = "api"


@dataclass(frozen=True, slots=True)
class User:
    container: ContainerInfo
    mount_path: str
    read_only: bool


@dataclass(frozen=True, slots=True)
class StateSource:
    kind: SourceKind
    #: Volume name, or the bind mount's host path.
    name: str
    volume: VolumeInfo | None
    users: tuple[User, ...] = field(default_factory=tuple)

    @property
    def label(self) -> str:
        return f"{self.kind.value} {self.name}"


def is_plumbing(path: str) -> bool:
    return path in _PLUMBING or path.startswith(_PLUMBING_PREFIXES)


def _users_of(kind: SourceKind, name: str, containers: Iterable[ContainerInfo]) -> tuple[User, ...]:
    mount_type = MountType.VOLUME if kind is SourceKind.VOLUME else MountType.BIND
    out = []
    for c in containers:
        for m in c.mounts:
            if m.type is mount_type and (m.name if kind is SourceKind.VOLUME else m.source) == name:
                out.append(User(c, m.destination, m.read_only))
    return tuple(sorted(out, key=lambda u: (u.container.name, u.mount_path)))


#: States in which a container is using its volumes.
ACTIVE_STATES = ("running", "paused", "restarting")


def volume_users(docker: DockerPort, name: str) -> tuple[User, ...]:
    """The containers that mount the volume ``name``; only those are inspected in full
    (the container list already shows every container's mounts)."""
    mounting = [
        c
        for c in docker.list_containers(all=True)
        if any(m.type is MountType.VOLUME and m.name == name for m in c.mounts)
    ]
    return _users_of(SourceKind.VOLUME, name, inspect_containers(docker, mounting))


def running_names(users: Iterable[User]) -> list[str]:
    """The names of the active containers among ``users``."""
    return sorted({u.container.name for u in users if u.container.state in ACTIVE_STATES})


def resolve(
    docker: DockerPort,
    *,
    volumes: Sequence[str] = (),
    containers: Sequence[str] = (),
    project: str | None = None,
    all_volumes: bool = False,
    binds: bool = False,
) -> list[StateSource]:
    """The sources a backup run covers, each once, in a stable order."""
    if not (volumes or containers or project or all_volumes):
        raise UsageError("say what to back up: VOLUME names, --container, --project or --all")
    everything = inspect_containers(docker)
    by_name = {c.name: c for c in everything} | {c.id: c for c in everything}
    wanted: dict[tuple[SourceKind, str], VolumeInfo | None] = {}

    for name in volumes:
        wanted[(SourceKind.VOLUME, name)] = docker.inspect_volume(name)
    chosen: list[ContainerInfo] = []
    for ref in containers:
        found = by_name.get(ref) or next((c for c in everything if c.id.startswith(ref)), None)
        chosen.append(found if found is not None else docker.inspect_container(ref))
    listed: list[VolumeInfo] | None = None  # the engine's volumes, listed once when needed
    if project is not None:
        members = [c for c in everything if c.labels.get(COMPOSE_PROJECT) == project]
        listed = docker.list_volumes()
        project_volumes = [v for v in listed if v.labels.get(COMPOSE_PROJECT) == project]
        if not members and not project_volumes:
            raise UsageError(
                f"no container or volume of compose project {project!r} on this engine",
                hint="list projects with `cargohold volumes`",
            )
        chosen += members
        for v in project_volumes:
            wanted[(SourceKind.VOLUME, v.name)] = v
    for c in chosen:
        for m in c.mounts:
            if m.type is MountType.VOLUME and m.name:
                wanted.setdefault((SourceKind.VOLUME, m.name), None)
            elif m.type is MountType.BIND and m.source and not is_plumbing(m.source):
                wanted.setdefault((SourceKind.BIND, m.source), None)
    if all_volumes:
        used = {m.name for c in everything for m in c.mounts if m.type is MountType.VOLUME}
        listed = listed if listed is not None else docker.list_volumes()
        # sizes (`docker system df`, slow on big hosts) only matter for volumes nothing uses
        sizes = docker.volume_sizes() if any(v.name not in used for v in listed) else {}
        for v in listed:
            # volumes in use, and dangling ones that hold data (what `volume prune` would destroy)
            if v.name in used or sizes.get(v.name, 1) > 0:
                wanted.setdefault((SourceKind.VOLUME, v.name), v)
        if binds:
            for c in everything:
                for m in c.mounts:
                    if m.type is MountType.BIND and m.source and not is_plumbing(m.source):
                        wanted.setdefault((SourceKind.BIND, m.source), None)

    out = []
    for (kind, name), info in sorted(wanted.items()):
        if kind is SourceKind.VOLUME and info is None:
            info = docker.inspect_volume(name)
        out.append(StateSource(kind, name, info, _users_of(kind, name, everything)))
    return out


def direct_path(engine: EngineInfo, source: StateSource) -> tuple[str | None, str]:
    """The local path to read ``source`` from directly, or None and why not."""
    if not engine.local:
        return None, f"the engine is remote ({engine.host})"
    if source.kind is SourceKind.BIND:
        path = source.name
    else:
        assert source.volume is not None
        if source.volume.driver != "local":
            return None, f"volume driver {source.volume.driver!r} has no local mountpoint"
        if {"type", "device"} & set(source.volume.options):
            return None, "the volume is mounted from a device or network share only while a container uses it"
        path = source.volume.mountpoint
    if not path or not os.path.isdir(path):
        return None, f"{path or 'the mountpoint'} is not a directory here"
    if not os.access(path, os.R_OK | os.X_OK):
        return None, f"{path} is not readable by this user"
    return path, "local and readable"


def choose_via(engine: EngineInfo, source: StateSource, requested: Via) -> tuple[Via, str | None, str]:
    """The read path for ``source``: (via, local path for direct, reason)."""
    path, why = direct_path(engine, source)
    if requested is Via.API:
        return Via.API, None, "asked for --via api"
    if requested is Via.DIRECT:
        if path is None:
            raise UsageError(f"--via direct is not possible for {source.label}: {why}", hint="use --via api")
        return Via.DIRECT, path, "asked for --via direct"
    if path is not None:
        return Via.DIRECT, path, why
    return Via.API, None, why


def container_meta(user: User, image_digests: Sequence[str]) -> dict[str, Any]:
    c = user.container
    return {
        "name": c.name,
        "id": c.id,
        "image": c.image,
        "image_id": c.image_id,
        "image_digests": list(image_digests),
        "mount_path": user.mount_path,
        "read_only": user.read_only,
        "state": c.state,
        # what a fresh container of the image needs to load a dump (passwords, users, ports);
        # the snapshot's metadata is encrypted in the repository like its data
        "env": list(c.env),
        "compose": {
            "project": c.labels.get(COMPOSE_PROJECT),
            "service": c.labels.get(COMPOSE_SERVICE),
            "working_dir": c.labels.get(COMPOSE_WORKDIR),
            "config_files": [f for f in c.labels.get(COMPOSE_CONFIG_FILES, "").split(",") if f],
        }
        if COMPOSE_PROJECT in c.labels
        else None,
    }
