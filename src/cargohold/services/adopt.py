"""``cargohold adopt CONTAINER:PATH --as VOLUME``: move data into a named volume, safely.

The data at PATH (an anonymous volume, or the container's writable layer) is copied
with the archive API into a new named volume, owners, modes and links included:

1. check what holds PATH (refuse named volumes, binds and tmpfs) and that VOLUME is new;
2. stop the container if it runs (it is started again in any case, see below); one
   started with ``--rm`` is paused instead, since stopping would delete it;
3. read a manifest of PATH (every entry: type, size, mode, owner, link, SHA-256);
4. create VOLUME and a never-started helper container (same image) that mounts it at
   ``/cargohold-adopt/<name of PATH>``, and stream ``get_archive`` → ``put_archive``;
5. read the manifest back from the volume and compare — on any difference the new
   volume is removed and :class:`~cargohold.errors.ConsistencyError` is raised;
6. then either print the compose change, or (``recreate=True``, containers not managed
   by compose) rename the old container, create one with the same configuration plus
   the new mount (other anonymous volumes reattached) and start it.

Nothing is deleted: the old anonymous volume and, after ``--recreate``, the old (renamed,
stopped) container stay until the user removes them. The container is never left
stopped: a ``finally`` starts it again (or the old one, when recreating failed).
"""

from __future__ import annotations

import contextlib
import hashlib
import posixpath
import tarfile
import time
from dataclasses import dataclass
from typing import Any

from cargohold.docker.port import DockerPort
from cargohold.errors import (
    CargoholdError,
    ConsistencyError,
    DockerConflict,
    DockerError,
    DockerNotFound,
    UsageError,
    VolumeNotFound,
)
from cargohold.model.engine import ContainerInfo, MountInfo, MountType
from cargohold.model.inventory import COMPOSE_PROJECT, COMPOSE_SERVICE, COMPOSE_VOLUME, VolumeKind, volume_kind
from cargohold.streams import open_stream

HELPER_ROOT = "/cargohold-adopt"
ADOPTED_LABEL = "cargohold.adopted-from"
HELPER_LABEL = "cargohold.adopt-helper"


@dataclass(frozen=True, slots=True)
class Entry:
    """One file system entry as the archive API reports it."""

    type: str
    size: int
    mode: int
    uid: int
    gid: int
    link: str
    sha256: str


Manifest = dict[str, Entry]


@dataclass(frozen=True, slots=True)
class AdoptResult:
    container: str
    path: str
    volume: str
    #: "anonymous-volume" or "writable-layer".
    source: str
    #: The anonymous volume the data came from (kept), if any.
    old_volume: str | None
    files: int
    bytes: int
    #: What to change in the compose file (compose containers) or how to run it.
    instructions: str
    recreated: bool = False
    #: After --recreate: the old container, renamed and stopped (kept).
    old_container: str | None = None

    def to_json(self) -> dict[str, Any]:
        return {
            "container": self.container,
            "path": self.path,
            "volume": self.volume,
            "source": self.source,
            "old_volume": self.old_volume,
            "files": self.files,
            "bytes": self.bytes,
            "instructions": self.instructions,
            "recreated": self.recreated,
            "old_container": self.old_container,
        }


def _type(m: tarfile.TarInfo) -> str:
    if m.isdir():
        return "dir"
    if m.issym():
        return "symlink"
    if m.islnk():
        return "hardlink"
    if m.isfile():
        return "file"
    return "other"


def manifest(docker: DockerPort, container: str, path: str) -> Manifest:
    """Every entry under ``path`` in ``container``, names relative to its parent."""
    out: Manifest = {}
    with open_stream(docker.get_archive(container, path)) as reader, tarfile.open(fileobj=reader, mode="r|") as tar:
        for m in tar:
            digest = ""
            if m.isfile():
                h = hashlib.sha256()
                fh = tar.extractfile(m)
                while fh is not None and (block := fh.read(1 << 20)):
                    h.update(block)
                digest = h.hexdigest()
            out[m.name.rstrip("/")] = Entry(_type(m), m.size if m.isfile() else 0, m.mode, m.uid, m.gid,
                                            m.linkname, digest)  # fmt: skip
    return out


def compare(src: Manifest, dst: Manifest) -> list[str]:
    """Human-readable differences (empty when equal)."""
    problems = []
    for name in sorted(set(src) | set(dst)):
        a, b = src.get(name), dst.get(name)
        if a is None:
            problems.append(f"{name}: unexpected in the copy")
        elif b is None:
            problems.append(f"{name}: missing in the copy")
        elif a != b:
            fields = [f for f in Entry.__slots__ if getattr(a, f) != getattr(b, f)]
            problems.append(f"{name}: {', '.join(fields)} differ")
    return problems


def _holder(c: ContainerInfo, path: str, docker: DockerPort) -> tuple[str, MountInfo | None]:
    norm = posixpath.normpath(path)
    for m in c.mounts:
        dest = posixpath.normpath(m.destination)
        if dest == norm:
            if m.type is MountType.VOLUME:
                kinds = {v.name: volume_kind(v) for v in docker.list_volumes()}
                kind = kinds.get(m.name) or volume_kind(m.name)
                if kind is VolumeKind.ANONYMOUS:
                    return "anonymous-volume", m
                raise UsageError(f"{c.name}:{path} is already on the named volume {m.name}")
            if m.type is MountType.BIND:
                raise UsageError(f"{c.name}:{path} is a bind mount of {m.source}: it is on the host already")
            if m.type is MountType.TMPFS:
                raise UsageError(
                    f"{c.name}:{path} is a tmpfs: its data lives in memory and is gone when the container stops",
                    hint="copy it out while the container runs (docker cp), then mount a named volume there",
                )
            raise UsageError(f"{c.name}:{path} is a {m.type.value} mount: cannot adopt it")
        if norm.startswith(dest.rstrip("/") + "/"):
            raise UsageError(f"{c.name}:{path} is inside the mount at {m.destination}: adopt that path instead")
        if dest.startswith(norm.rstrip("/") + "/"):
            raise UsageError(
                f"{c.name}:{path} contains the mount at {m.destination}: adopt a path without mounts below it"
            )
    return "writable-layer", None


def _compose_instructions(c: ContainerInfo, path: str, volume: str) -> str:
    project = c.labels.get(COMPOSE_PROJECT)
    service = c.labels.get(COMPOSE_SERVICE)
    if project and service:
        key = volume[len(project) + 1 :] if volume.startswith(f"{project}_") else volume
        declare = f"  {key}: {{}}" if key != volume else f"  {key}:\n    external: true"
        return (
            f"change the compose file of project {project}, then run `docker compose up -d {service}`:\n"
            f"services:\n  {service}:\n    volumes:\n      - {key}:{path}\nvolumes:\n{declare}"
        )
    return (
        f"recreate {c.name} with the volume (or run `cargohold adopt {c.name}:{path} --as {volume} --recreate`):\n"
        f"  docker run --mount type=volume,source={volume},target={path} ... (same options as before)"
    )


def adopt(
    docker: DockerPort,
    container: str,
    path: str,
    volume: str,
    *,
    recreate: bool = False,
    stop_timeout: int = 30,
) -> AdoptResult:
    """Copy ``container:path`` into the new named volume ``volume``, verified; see the module doc."""
    if not path.startswith("/") or posixpath.normpath(path) == "/":
        raise UsageError(f"PATH must be an absolute path below / (got {path!r})")
    path = posixpath.normpath(path)
    c = docker.inspect_container(container)
    if recreate and c.labels.get(COMPOSE_PROJECT):
        raise UsageError(
            f"{c.name} belongs to compose project {c.labels[COMPOSE_PROJECT]}: --recreate is for plain containers",
            hint="adopt without --recreate, change the compose file as printed, then `docker compose up -d`",
        )
    source, mount = _holder(c, path, docker)
    try:
        docker.inspect_volume(volume)
    except VolumeNotFound:
        pass
    else:
        raise DockerConflict(f"volume {volume} exists already", hint="choose a new name with --as")

    was_running = c.state in ("running", "restarting", "paused")
    # A container started with --rm is deleted (anonymous volumes too) when it stops:
    # freeze it instead, which keeps its files just as still for the copy.
    freeze = was_running and _auto_remove(docker, c.id)
    if freeze and recreate:
        raise UsageError(
            f"{c.name} was started with --rm: stopping it would delete it, so it cannot be recreated here",
            hint="adopt without --recreate, then start a new container with the printed --mount",
        )
    replaced_by: str | None = None
    old_name: str | None = None
    if was_running:
        if freeze:
            if c.state != "paused":
                docker.pause(c.id)
        else:
            if c.state == "paused":
                docker.unpause(c.id)
            docker.stop(c.id, timeout=stop_timeout)
    try:
        before = manifest(docker, c.id, path)
        _copy(docker, c, path, volume, before)
        if recreate:
            old_name, replaced_by = _recreate(docker, c, path, volume, start=was_running)
    except BaseException as exc:
        if was_running and replaced_by is None:
            problem = _resume(docker, c, freeze)
            if problem:
                raise ConsistencyError(
                    f"{exc}; and {c.name} could not be started again: {problem}", hint=f"docker start {c.name}"
                ) from exc
        raise
    if was_running and replaced_by is None:
        problem = _resume(docker, c, freeze)
        if problem:
            raise ConsistencyError(
                f"the data was copied and verified into {volume}, but {c.name} could not be started again: {problem}",
                hint=f"docker start {c.name}",
            )
    files = sum(1 for e in before.values() if e.type == "file")
    size = sum(e.size for e in before.values())
    instructions = (
        f"{c.name} now runs with {volume} at {path}; the old container is kept stopped as {old_name}"
        + (f" and the old volume {mount.name}" if mount is not None else "")
        + f" — remove them when satisfied (docker rm {old_name})"
        if replaced_by
        else _compose_instructions(c, path, volume)
    )
    return AdoptResult(
        container=c.name,
        path=path,
        volume=volume,
        source=source,
        old_volume=mount.name if mount is not None else None,
        files=files,
        bytes=size,
        instructions=instructions,
        recreated=replaced_by is not None,
        old_container=old_name,
    )


def _resume(docker: DockerPort, c: ContainerInfo, frozen: bool) -> str | None:
    """Bring the container back (start, or unpause when frozen); the error text if that fails."""
    try:
        if frozen:
            if c.state != "paused":
                docker.unpause(c.id)
        else:
            docker.start(c.id)
    except CargoholdError as err:
        return str(err)
    return None


def _auto_remove(docker: DockerPort, cid: str) -> bool:
    """Whether the container was started with ``--rm`` (HostConfig.AutoRemove)."""
    try:
        spec = _RawEngine.of(docker).inspect(cid)
    except CargoholdError:
        return True  # unknown: assume it would vanish on stop, so it is paused, never stopped
    return bool((spec.get("HostConfig") or {}).get("AutoRemove"))


def _copy(docker: DockerPort, c: ContainerInfo, path: str, volume: str, before: Manifest) -> None:
    base = posixpath.basename(path)
    labels = {ADOPTED_LABEL: f"{c.name}:{path}"}
    project = c.labels.get(COMPOSE_PROJECT)
    if project and volume.startswith(f"{project}_"):
        # What compose puts on the volumes it creates: `up` then takes this one as its own.
        labels.update({COMPOSE_PROJECT: project, COMPOSE_VOLUME: volume[len(project) + 1 :]})
    docker.create_volume(volume, labels=labels)
    helper = None
    ok = False
    try:
        helper = docker.create_container(
            c.image_id or c.image,
            name=f"cargohold-adopt-{c.short_id}-{int(time.time())}",
            command=["cargohold-adopt-helper"],
            entrypoint=["cargohold-adopt-helper"],
            mounts=[{"Type": "volume", "Source": volume, "Target": f"{HELPER_ROOT}/{base}"}],
            labels={HELPER_LABEL: c.name},
            network_mode="none",
        )
        docker.put_archive(helper, HELPER_ROOT, docker.get_archive(c.id, path))
        after = manifest(docker, helper, f"{HELPER_ROOT}/{base}")
        problems = compare(before, after)
        if problems:
            raise ConsistencyError(
                f"the copy of {c.name}:{path} in {volume} differs: {'; '.join(problems[:5])}",
                hint="nothing was changed on the container; the new volume was removed",
            )
        ok = True
    finally:
        if helper is not None:
            with contextlib.suppress(CargoholdError):
                docker.remove_container(helper, force=True)
        if not ok:
            with contextlib.suppress(CargoholdError):
                docker.remove_volume(volume, force=True)


def _recreate(docker: DockerPort, c: ContainerInfo, path: str, volume: str, *, start: bool) -> tuple[str, str]:
    """Rename the old container, create its twin with the new mount; return (old name, new id)."""
    raw = _RawEngine.of(docker)
    old_name = f"{c.name}-before-adopt-{int(time.time())}"
    spec = raw.inspect(c.id)
    body = recreate_body(spec, path, volume, _anonymous_names(docker, c))
    raw.rename(c.id, old_name)
    new_id = None
    try:
        new_id = raw.create(c.name, body)
        if start:
            docker.start(new_id)
    except (DockerError, DockerNotFound):
        if new_id is not None:
            with contextlib.suppress(CargoholdError):
                docker.remove_container(new_id, force=True)
        with contextlib.suppress(CargoholdError):
            raw.rename(c.id, c.name)
        raise
    return old_name, new_id


def _anonymous_names(docker: DockerPort, c: ContainerInfo) -> dict[str, str]:
    kinds = {v.name: volume_kind(v) for v in docker.list_volumes()}
    return {
        m.destination: m.name
        for m in c.mounts
        if m.type is MountType.VOLUME and (kinds.get(m.name) or volume_kind(m.name)) is VolumeKind.ANONYMOUS
    }


# --- recreating with the same configuration -------------------------------------------------
#
# "Same configuration" means the engine's own create body: the port's create_container
# knows only the options cargohold's own helpers need, so this part speaks the Engine
# API through the docker-py client of SdkDocker, translating its errors like the port.
# (It belongs in the Docker port as ``recreate(container, mounts)`` once that grows one.)


def _bind_target(bind: str) -> str:
    parts = bind.split(":")
    return posixpath.normpath(parts[1] if len(parts) > 1 else parts[0])


def recreate_body(spec: dict[str, Any], path: str, volume: str, anonymous: dict[str, str]) -> dict[str, Any]:
    """The create body of a container like ``spec`` (an inspect result) with ``volume`` at ``path``.

    Other anonymous volumes (``anonymous``: destination → name) are mounted again by name,
    so recreating does not swap them for new empty ones.
    """
    config = dict(spec.get("Config") or {})
    host = dict(spec.get("HostConfig") or {})
    declared = dict(config.get("Volumes") or {})
    declared.pop(path, None)
    config["Volumes"] = declared or None
    binds = [b for b in host.get("Binds") or [] if _bind_target(b) != path]
    host["Binds"] = binds or None
    mounts = [dict(m) for m in host.get("Mounts") or [] if posixpath.normpath(str(m.get("Target", ""))) != path]
    taken = {posixpath.normpath(str(m.get("Target", ""))) for m in mounts} | {_bind_target(b) for b in binds}
    for dest, name in sorted(anonymous.items()):
        if posixpath.normpath(dest) != path and posixpath.normpath(dest) not in taken:
            mounts.append({"Type": "volume", "Source": name, "Target": dest})
    mounts.append({"Type": "volume", "Source": volume, "Target": path})
    host["Mounts"] = mounts
    body: dict[str, Any] = {**config, "HostConfig": host}
    if str(config.get("Hostname", "")) == str(spec.get("Id", ""))[:12]:
        body.pop("Hostname", None)  # the engine gives the new container its own
    mode = str(host.get("NetworkMode") or "")
    networks = (spec.get("NetworkSettings") or {}).get("Networks") or {}
    if networks and mode not in ("host", "none") and not mode.startswith("container:"):
        keep = ("Aliases", "IPAMConfig", "Links", "DriverOpts")
        body["NetworkingConfig"] = {
            "EndpointsConfig": {n: {k: v for k, v in (e or {}).items() if k in keep} for n, e in networks.items()}
        }
    return body


class _RawEngine:
    def __init__(self, api: Any) -> None:
        self.api = api

    @classmethod
    def of(cls, docker: DockerPort) -> _RawEngine:
        api = getattr(docker, "api", None)
        if api is None:
            raise UsageError("--recreate needs a direct connection to the Docker engine API")
        return cls(api)

    def _call(self, what: str, fn: Any, *args: Any, **kwargs: Any) -> Any:
        import docker.errors

        try:
            return fn(*args, **kwargs)
        except docker.errors.NotFound as exc:
            raise DockerNotFound(f"{what}: {exc.explanation or exc}") from exc
        except docker.errors.APIError as exc:
            if exc.status_code == 409:
                raise DockerConflict(f"{what}: {exc.explanation or exc}") from exc
            raise DockerError(f"{what}: {exc.explanation or exc}") from exc
        except docker.errors.DockerException as exc:
            raise DockerError(f"{what}: {exc}") from exc

    def inspect(self, container: str) -> dict[str, Any]:
        data: dict[str, Any] = self._call(f"inspect {container}", self.api.inspect_container, container)
        return data

    def rename(self, container: str, name: str) -> None:
        self._call(f"rename {container} to {name}", self.api.rename, container, name)

    def create(self, name: str, body: dict[str, Any]) -> str:
        def post() -> str:
            res = self.api._post_json(self.api._url("/containers/create"), data=body, params={"name": name})
            return str(self.api._result(res, True)["Id"])

        result: str = self._call(f"create {name}", post)
        return result
