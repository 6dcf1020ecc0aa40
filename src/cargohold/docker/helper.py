"""Helper containers: how cargohold reaches a volume's files through the Engine API.

A helper is a container created from ``cargohold/helper:empty`` — an image with an empty
file system that cargohold imports on any engine that lacks it (no registry needed) —
with the volume mounted, and **never started**: the archive API reads and writes the
mounts of a created container, so no process runs, nothing listens, and the helper needs no
shell, network or image of the user's. It is always removed afterwards.
"""

from __future__ import annotations

import io
import tarfile
import uuid
from collections.abc import Iterator, Mapping, Sequence
from contextlib import contextmanager, suppress
from dataclasses import dataclass

from cargohold.docker.port import DockerPort
from cargohold.errors import DockerConflict, DockerNotFound
from cargohold.procinfo import owner_gone, owner_token

HELPER_REPOSITORY = "cargohold/helper"
HELPER_TAG = "empty-1"
HELPER_IMAGE = f"{HELPER_REPOSITORY}:{HELPER_TAG}"
HELPER_LABEL = "cargohold.helper"
#: Which process made a helper container or scratch volume (procinfo.owner_token()): what a
#: killed cargohold leaves behind is removed by the next run on that engine.
OWNER_LABEL = "cargohold.owner"


def _empty_tar() -> bytes:
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w"):
        pass
    return buf.getvalue()


def ensure_helper_image(docker: DockerPort) -> str:
    """The helper image's reference on this engine, imported when missing."""
    if not docker.image_exists(HELPER_IMAGE):
        docker.import_image(_empty_tar(), HELPER_REPOSITORY, HELPER_TAG)
    return HELPER_IMAGE


@contextmanager
def helper_container(docker: DockerPort, mounts: Sequence[Mapping[str, object]], *, purpose: str) -> Iterator[str]:
    """A created, never started container with ``mounts``; removed on exit."""
    image = ensure_helper_image(docker)
    cid = docker.create_container(
        image,
        name=f"cargohold-helper-{uuid.uuid4().hex[:12]}",
        command=["/cargohold-helper-never-runs"],
        mounts=mounts,
        labels=helper_labels(purpose),
        network_mode="none",
    )
    try:
        yield cid
    finally:
        with suppress(DockerNotFound):
            docker.remove_container(cid, force=True)


def helper_labels(purpose: str) -> dict[str, str]:
    """Labels of every container cargohold creates for its own use."""
    return {HELPER_LABEL: purpose, OWNER_LABEL: owner_token()}


@dataclass
class Swept:
    containers: list[str]
    volumes: list[str]


def sweep_leftovers(docker: DockerPort) -> Swept:
    """Remove helper containers and scratch volumes whose cargohold process has ended (killed)."""
    swept = Swept([], [])
    for c in docker.list_containers(all=True):
        owner = c.labels.get(OWNER_LABEL)
        if HELPER_LABEL in c.labels and owner and owner_gone(owner):
            with suppress(DockerNotFound):
                docker.remove_container(c.id, force=True, volumes=True)
                swept.containers.append(c.name)
    for v in docker.list_volumes():
        owner = v.labels.get(OWNER_LABEL)
        if owner and owner_gone(owner):
            try:
                docker.remove_volume(v.name, force=True)
            except (DockerNotFound, DockerConflict):  # gone, or in use again: leave it
                continue
            swept.volumes.append(v.name)
    return swept


def volume_mount(volume: str, target: str = "/volume", *, read_only: bool = False) -> dict[str, object]:
    return {"Type": "volume", "Source": volume, "Target": target, "ReadOnly": read_only}
