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


def volume_report(docker: DockerPort, *, sizes: bool = True) -> VolumeReport:
    """Every volume of the engine with its users, size and flags."""
    engine = docker.engine_info()
    volumes = docker.list_volumes()
    containers = docker.list_containers(all=True)
    measured = docker.volume_sizes() if sizes else {}
    return VolumeReport(engine, build_volume_inventory(volumes, containers, measured))


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


def _inspect_all(docker: DockerPort, containers: list[ContainerInfo]) -> list[ContainerInfo]:
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


def mount_report(docker: DockerPort) -> MountReport:
    """Every container's mounts (tmpfs included) and image VOLUME coverage."""
    engine = docker.engine_info()
    detailed = _inspect_all(docker, docker.list_containers(all=True))
    images = _images(docker, {c.image_id for c in detailed if c.image_id})
    kinds: dict[str, VolumeKind] = {v.name: volume_kind(v) for v in docker.list_volumes()}
    entries = build_mount_inventory(detailed, images, kinds, _local_path_exists(engine))
    return MountReport(engine, entries)
