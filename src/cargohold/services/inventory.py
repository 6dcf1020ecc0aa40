"""Inventory use cases: gather from the Docker port, conclude with the pure model."""

from __future__ import annotations

import os
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass

from cargohold.docker.port import DockerPort
from cargohold.errors import DockerNotFound, VolumeNotFound
from cargohold.model.engine import ContainerInfo, EngineInfo, ImageInfo
from cargohold.model.inventory import (
    COMPOSE_PROJECT,
    ContainerEntry,
    VolumeEntry,
    VolumeKind,
    build_mount_inventory,
    build_volume_inventory,
    volume_kind,
)

#: Parallel inspect calls: the engine answers each in a few ms; a small pool hides latency.
_INSPECT_WORKERS = 8


@dataclass(frozen=True, slots=True)
class VolumeReport:
    engine: EngineInfo
    volumes: list[VolumeEntry]


@dataclass(frozen=True, slots=True)
class MountReport:
    engine: EngineInfo
    containers: list[ContainerEntry]


def _in_project(entry: VolumeEntry, project: str) -> bool:
    return entry.compose_project == project or any(u.compose_project == project for u in entry.users)


def volume_report(docker: DockerPort, *, sizes: bool = True, project: str | None = None) -> VolumeReport:
    """Every volume of the engine with its users, size and flags.

    ``project`` keeps the volumes of one compose project: labelled with it, or used by
    one of its containers (anonymous volumes carry no labels).
    """
    engine = docker.engine_info()
    volumes = docker.list_volumes()
    containers = docker.list_containers(all=True)
    measured = docker.volume_sizes() if sizes else {}
    entries = build_volume_inventory(volumes, containers, measured)
    if project is not None:
        entries = [e for e in entries if _in_project(e, project)]
    return VolumeReport(engine, entries)


def inspect_volume(docker: DockerPort, name: str) -> VolumeEntry:
    """One volume in full; raises VolumeNotFound."""
    volume = docker.inspect_volume(name)
    containers = docker.list_containers(all=True)
    sizes = docker.volume_sizes()
    entries = build_volume_inventory([volume], containers, sizes)
    if not entries:  # pragma: no cover - build_volume_inventory returns one entry per input
        raise VolumeNotFound(f"volume {name!r} not found")
    return entries[0]


def _local_path_exists(engine: EngineInfo) -> Callable[[str], bool | None]:
    if not engine.local:
        return lambda _path: None
    return lambda path: os.path.lexists(path) if path else None


def inspect_containers(docker: DockerPort, containers: list[ContainerInfo] | None = None) -> list[ContainerInfo]:
    """Full detail of ``containers`` (default: all), inspected in parallel; ones removed meanwhile are left out."""
    if containers is None:
        containers = docker.list_containers(all=True)

    def one(c: ContainerInfo) -> ContainerInfo | None:
        try:
            return docker.inspect_container(c.id)
        except DockerNotFound:  # removed while we looked
            return None

    with ThreadPoolExecutor(max_workers=_INSPECT_WORKERS) as pool:
        return [c for c in pool.map(one, containers) if c is not None]


def _images(docker: DockerPort, image_ids: set[str]) -> dict[str, ImageInfo]:
    def one(image_id: str) -> tuple[str, ImageInfo | None]:
        try:
            return image_id, docker.inspect_image(image_id)
        except DockerNotFound:
            return image_id, None

    with ThreadPoolExecutor(max_workers=_INSPECT_WORKERS) as pool:
        return {k: v for k, v in pool.map(one, sorted(image_ids)) if v is not None}


def mount_report(docker: DockerPort, *, project: str | None = None) -> MountReport:
    """Every container's mounts (tmpfs included) and image VOLUME coverage.

    ``project`` keeps the containers of one compose project.
    """
    engine = docker.engine_info()
    containers = docker.list_containers(all=True)
    if project is not None:
        containers = [c for c in containers if c.labels.get(COMPOSE_PROJECT) == project]
    detailed = inspect_containers(docker, containers)
    images = _images(docker, {c.image_id for c in detailed if c.image_id})
    kinds: dict[str, VolumeKind] = {v.name: volume_kind(v) for v in docker.list_volumes()}
    entries = build_mount_inventory(detailed, images, kinds, _local_path_exists(engine))
    return MountReport(engine, entries)
