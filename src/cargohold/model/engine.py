"""Values the Docker port returns: plain, immutable, typed.

They mirror what the Engine API says and nothing more; what cargohold concludes from
them (kinds, flags, coverage) lives in :mod:`cargohold.model.inventory`.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from enum import StrEnum


class MountType(StrEnum):
    VOLUME = "volume"
    BIND = "bind"
    TMPFS = "tmpfs"
    NPIPE = "npipe"
    CLUSTER = "cluster"
    OTHER = "other"

    @classmethod
    def parse(cls, value: str) -> MountType:
        try:
            return cls(value)
        except ValueError:
            return cls.OTHER


@dataclass(frozen=True, slots=True)
class EngineInfo:
    id: str
    name: str
    server_version: str
    api_version: str
    os: str
    arch: str
    docker_root_dir: str
    rootless: bool
    #: Where we talk to it: "unix:///var/run/docker.sock", "ssh://...", "tcp://...".
    host: str
    #: True when the engine runs on this machine, so its paths (volume mountpoints,
    #: bind sources) are paths of this file system.
    local: bool


@dataclass(frozen=True, slots=True)
class VolumeInfo:
    name: str
    driver: str
    mountpoint: str
    labels: Mapping[str, str] = field(default_factory=dict)
    options: Mapping[str, str] = field(default_factory=dict)
    scope: str = "local"
    created_at: str = ""


@dataclass(frozen=True, slots=True)
class MountInfo:
    type: MountType
    #: Path inside the container.
    destination: str
    #: Host path (bind), volume mountpoint (volume), "" (tmpfs).
    source: str = ""
    #: Volume name, for volume mounts.
    name: str = ""
    driver: str = ""
    read_only: bool = False
    mode: str = ""
    propagation: str = ""
    #: tmpfs options (size=..., mode=...), for tmpfs mounts.
    options: str = ""


@dataclass(frozen=True, slots=True)
class ContainerInfo:
    id: str
    name: str
    image: str
    image_id: str
    #: created, running, paused, restarting, removing, exited, dead
    state: str
    labels: Mapping[str, str] = field(default_factory=dict)
    mounts: tuple[MountInfo, ...] = ()
    created: str = ""
    #: Only filled by inspect_container (not by list_containers).
    working_dir: str = ""
    restart_policy: str = ""
    network_mode: str = ""
    #: ISO time the container last started ("" if never; inspect only).
    started_at: str = ""
    #: Config.Env as "KEY=value" items (inspect only).
    env: tuple[str, ...] = ()

    @property
    def short_id(self) -> str:
        return self.id[:12]


@dataclass(frozen=True, slots=True)
class ImageInfo:
    id: str
    tags: tuple[str, ...]
    #: Paths declared with VOLUME in the image config.
    volumes: tuple[str, ...]
    digests: tuple[str, ...] = ()
    entrypoint: tuple[str, ...] = ()
    cmd: tuple[str, ...] = ()
    env: tuple[str, ...] = ()
    labels: Mapping[str, str] = field(default_factory=dict)


@dataclass(frozen=True, slots=True)
class ExecResult:
    exit_code: int
    stdout: bytes
    stderr: bytes


@dataclass(frozen=True, slots=True)
class PathStat:
    """What the archive API says of a path inside a container."""

    name: str
    size: int
    mode: int
    mtime: str
    link_target: str


@dataclass(frozen=True, slots=True)
class FileChange:
    """One entry of a container's writable-layer changes (``docker diff``)."""

    path: str
    #: 0 modified, 1 added, 2 deleted (the Engine API's Kind).
    kind: int
