"""A loaded compose project: what the audit needs of it, already merged and interpolated."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from enum import StrEnum
from pathlib import Path

from cargohold.compose.yamldoc import Loc


class VolumeType(StrEnum):
    VOLUME = "volume"
    BIND = "bind"
    TMPFS = "tmpfs"
    NPIPE = "npipe"
    CLUSTER = "cluster"
    IMAGE = "image"


@dataclass(frozen=True, slots=True)
class ServiceVolume:
    """One entry of a service's ``volumes:`` (or ``tmpfs:``), in either syntax."""

    type: VolumeType
    #: Path inside the container.
    target: str
    #: Top-level volume key (type volume), absolute host path (bind), "" (anonymous, tmpfs).
    source: str
    read_only: bool
    loc: Loc
    #: Written in the short ``SRC:DST:MODE`` form (True) or as a mapping (False).
    short: bool = True
    #: Came from the service's ``tmpfs:`` key rather than ``volumes:``.
    from_tmpfs_key: bool = False
    #: Long syntax ``bind.create_host_path`` (short syntax always creates).
    create_host_path: bool = True

    @property
    def anonymous(self) -> bool:
        return self.type is VolumeType.VOLUME and not self.source


@dataclass(frozen=True, slots=True)
class Service:
    name: str
    #: The image reference, or None for a build-only service.
    image: str | None
    volumes: tuple[ServiceVolume, ...]
    restart: str | None
    labels: Mapping[str, str]
    volumes_from: tuple[str, ...]
    container_name: str | None
    loc: Loc
    #: Where the ``volumes:`` key of the service is (for fixes), if written.
    volumes_loc: Loc | None = None
    has_build: bool = False


@dataclass(frozen=True, slots=True)
class TopVolume:
    """An entry of the top-level ``volumes:``."""

    key: str
    #: The engine's name for it: ``name:``, the key when external, else ``PROJECT_key``.
    name: str
    external: bool
    driver: str
    labels: Mapping[str, str]
    loc: Loc


@dataclass(frozen=True, slots=True)
class ComposeProject:
    name: str
    directory: Path
    files: tuple[Path, ...]
    services: Mapping[str, Service]
    volumes: Mapping[str, TopVolume]
    #: Where an obsolete top-level ``version:`` was written (one per file that has it).
    version_locs: tuple[Loc, ...] = ()
    #: Variables referenced but unset (compose warns and uses "").
    missing_variables: tuple[str, ...] = ()
    #: What the loader read but does not follow (``include:``), as sentences for the user.
    notes: tuple[str, ...] = ()
    environment: Mapping[str, str] = field(default_factory=dict)

    def volume_name(self, key: str) -> str:
        """The engine name of a top-level volume key."""
        top = self.volumes.get(key)
        return top.name if top is not None else f"{self.name}_{key}"
