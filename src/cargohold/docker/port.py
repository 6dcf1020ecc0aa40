"""The one narrow interface cargohold uses to talk to a Docker engine.

Everything above this layer depends on :class:`DockerPort` only. The real
implementation is :class:`cargohold.docker.sdk.SdkDocker` (docker-py); unit tests of
pure logic use a fake. Implementations raise only :mod:`cargohold.errors` types.
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator, Mapping, Sequence
from typing import Protocol

from cargohold.model.engine import (
    ContainerInfo,
    EngineInfo,
    ExecResult,
    FileChange,
    ImageInfo,
    PathStat,
    VolumeInfo,
)


class DockerPort(Protocol):
    # --- engine -----------------------------------------------------------------
    def engine_info(self) -> EngineInfo: ...

    # --- volumes ----------------------------------------------------------------
    def list_volumes(self) -> list[VolumeInfo]: ...

    def inspect_volume(self, name: str) -> VolumeInfo: ...

    def volume_sizes(self) -> dict[str, int]:
        """Bytes used by each volume, as ``docker system df -v`` computes them.

        Volumes the engine cannot measure (non-local drivers) are absent.
        """
        ...

    def create_volume(
        self,
        name: str | None = None,
        *,
        driver: str = "local",
        options: Mapping[str, str] | None = None,
        labels: Mapping[str, str] | None = None,
    ) -> VolumeInfo: ...

    def remove_volume(self, name: str, *, force: bool = False) -> None: ...

    # --- containers -------------------------------------------------------------
    def list_containers(self, *, all: bool = True) -> list[ContainerInfo]:
        """Summaries (one API call): mounts as the list endpoint reports them."""
        ...

    def inspect_container(self, name_or_id: str) -> ContainerInfo:
        """Full detail, including tmpfs mounts given with ``--tmpfs``."""
        ...

    def create_container(
        self,
        image: str,
        *,
        name: str | None = None,
        command: Sequence[str] | None = None,
        entrypoint: Sequence[str] | None = None,
        mounts: Sequence[Mapping[str, object]] = (),
        labels: Mapping[str, str] | None = None,
        environment: Mapping[str, str] | None = None,
        network_mode: str = "none",
        user: str | None = None,
        working_dir: str | None = None,
    ) -> str:
        """Create (never start) a container; return its id.

        ``mounts`` items are Engine API Mount objects: ``{"Type": "volume",
        "Source": name, "Target": path, "ReadOnly": bool}``.
        """
        ...

    def remove_container(self, name_or_id: str, *, force: bool = False, volumes: bool = False) -> None: ...

    def start(self, name_or_id: str) -> None: ...

    def stop(self, name_or_id: str, *, timeout: int = 10) -> None: ...

    def pause(self, name_or_id: str) -> None: ...

    def unpause(self, name_or_id: str) -> None: ...

    def wait(self, name_or_id: str, *, timeout: float | None = None) -> int:
        """Wait until the container exits; return its exit code."""
        ...

    def exec(
        self,
        name_or_id: str,
        command: Sequence[str],
        *,
        user: str | None = None,
        environment: Mapping[str, str] | None = None,
        workdir: str | None = None,
    ) -> ExecResult: ...

    def exec_stream(
        self,
        name_or_id: str,
        command: Sequence[str],
        *,
        user: str | None = None,
        environment: Mapping[str, str] | None = None,
    ) -> Iterator[bytes]:
        """Run a command and stream its stdout (for dumps); raises on non-zero exit."""
        ...

    def container_changes(self, name_or_id: str) -> list[FileChange]: ...

    def logs(self, name_or_id: str, *, tail: int = 50) -> str: ...

    # --- archive API ------------------------------------------------------------
    def get_archive(self, name_or_id: str, path: str, *, chunk_size: int = 2 << 20) -> Iterator[bytes]:
        """Stream a tar of ``path`` inside the container (started or not)."""
        ...

    def put_archive(self, name_or_id: str, path: str, data: bytes | Iterable[bytes]) -> None:
        """Extract a tar stream into ``path`` inside the container."""
        ...

    def stat_path(self, name_or_id: str, path: str) -> PathStat: ...

    # --- images -----------------------------------------------------------------
    def inspect_image(self, ref: str) -> ImageInfo: ...

    def image_exists(self, ref: str) -> bool: ...

    def import_image(self, data: bytes, repository: str, tag: str) -> str:
        """Create an image from a root file system tar (``docker import``); return its id."""
        ...

    def close(self) -> None: ...
