"""Live engine → audit input, through the Docker port only.

Calls: engine info, container list + one inspect each, volume list, ``docker system df``
for sizes, one image inspect per distinct image (declared VOLUMEs), one ``changes`` per
container (writable layer) and a few ``stat`` calls to size what was written. Inspections
run on a small thread pool; a container that disappears meanwhile is skipped.
"""

from __future__ import annotations

import os
import posixpath
import stat as pystat
import tarfile
from collections.abc import Callable, Iterable, Mapping
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass

from cargohold.audit.knowledge import lookup
from cargohold.audit.model import AuditInput, Mount, StoreKind, VolumeFact, Workload, WritableLayer
from cargohold.docker.port import DockerPort
from cargohold.errors import DockerError, DockerNotFound
from cargohold.model.backups import BackupIndex, BackupPolicy
from cargohold.model.engine import ContainerInfo, EngineInfo, FileChange, ImageInfo, MountType
from cargohold.model.inventory import (
    COMPOSE_PROJECT,
    COMPOSE_SERVICE,
    COMPOSE_WORKDIR,
    Flag,
    VolumeKind,
    build_volume_inventory,
    volume_kind,
)
from cargohold.streams import open_stream

WORKERS = 8
#: stat calls per container to size its writable layer; beyond it the size is a lower bound.
MAX_STATS = 64
#: Bytes read through the archive API per container when stat is unavailable.
MAX_ARCHIVE_BYTES = 256 << 20
#: Paths whose writes are expected and not worth keeping.
NOISE = (
    "/tmp",
    "/var/tmp",
    "/run",
    "/var/run",
    "/var/cache",
    "/var/log",
    "/proc",
    "/sys",
    "/dev",
    "/root/.ash_history",
    "/root/.bash_history",
    "/root/.cache",
    "/etc/hostname",
    "/etc/hosts",
    "/etc/resolv.conf",
    "/etc/mtab",
    "/.dockerenv",
)
_GO_MODE_DIR = 1 << 31
_GO_MODE_SYMLINK = 1 << 27


@dataclass(frozen=True, slots=True)
class LiveState:
    """Everything read from the engine for one audit."""

    engine: EngineInfo
    workloads: tuple[Workload, ...]
    volumes: tuple[VolumeFact, ...]


def _under(path: str, root: str) -> bool:
    return path == root or path.startswith(root.rstrip("/") + "/")


def relevant_changes(changes: Iterable[FileChange], mount_targets: Iterable[str]) -> list[str]:
    """Added/modified paths outside mounts, mount points and noise (pure)."""
    targets = [posixpath.normpath(t) for t in mount_targets]
    out = []
    for ch in changes:
        if ch.kind == 2:
            continue
        p = posixpath.normpath(ch.path)
        if any(_under(p, n) for n in NOISE):
            continue
        if any(_under(p, t) or _under(t, p) for t in targets):
            continue  # inside a mount, or a directory created to hold a mount point
        out.append(p)
    return sorted(out)


def _leaves(paths: list[str]) -> list[str]:
    s = set(paths)
    return [p for p in paths if not any(q != p and q.startswith(p.rstrip("/") + "/") for q in s)]


def writable_sizes(docker: DockerPort) -> dict[str, int] | None:
    """Bytes in each container's writable layer (``SizeRw``), from one engine call; None if unknown.

    One ``GET /containers/json?size=true`` costs what two ``docker diff`` calls cost, and
    lets the scan skip every container that wrote nothing. The Docker port has no method
    for it yet: a port that offers ``container_sizes()`` is used, else the docker-py client
    of :class:`~cargohold.docker.sdk.SdkDocker`; anything else (or any error) means "scan all".
    """
    method = getattr(docker, "container_sizes", None)
    try:
        if callable(method):
            return {str(k): int(v) for k, v in method().items()}
        api = getattr(docker, "api", None)
        if api is None:
            return None
        return {str(c["Id"]): int(c.get("SizeRw") or 0) for c in api.containers(all=True, size=True) or ()}
    except Exception:  # only an optimisation: the full scan follows
        return None


def _writable(docker: DockerPort, c: ContainerInfo, rw_sizes: Mapping[str, int] | None = None) -> WritableLayer | None:
    if c.state == "created":
        return None  # never started: nothing ran that could write (the engine only made mount points)
    if rw_sizes is not None and rw_sizes.get(c.id, 1) == 0:
        return None  # not one byte written (mount points and empty files only)
    try:
        changes = docker.container_changes(c.id)
    except DockerError:
        return None
    paths = relevant_changes(changes, [m.destination for m in c.mounts])
    if not paths:
        return None
    sizes: dict[str, int] = {}
    leaves = _leaves(paths)
    budget = [MAX_ARCHIVE_BYTES]
    partial = len(leaves) > MAX_STATS
    for p in leaves[:MAX_STATS]:
        size = _file_size(docker, c.id, p, budget)
        if size is None:
            partial = True
        elif size >= 0:
            sizes[p] = size
    return WritableLayer(paths=tuple(paths), sizes=sizes, partial=partial)


def _file_size(docker: DockerPort, cid: str, path: str, budget: list[int]) -> int | None:
    """Size of a regular file (-1 for directories and links), None when it cannot be measured.

    Asks the archive API for the path's stat; if the port cannot answer that, reads the
    tar headers of the path instead, within a byte budget per container.
    """
    try:
        st = docker.stat_path(cid, path)
    except DockerError:
        return None
    except Exception:  # a port whose stat does not work: measure from the archive instead
        return _archive_size(docker, cid, path, budget)
    if st.mode & (_GO_MODE_DIR | _GO_MODE_SYMLINK) or pystat.S_ISDIR(st.mode):
        return -1
    return st.size


def _archive_size(docker: DockerPort, cid: str, path: str, budget: list[int]) -> int | None:
    """Bytes of the regular files in the tar of ``path`` (-1 when ``path`` is not a file)."""
    if budget[0] <= 0:
        return None
    total = 0
    is_file = False
    try:
        stream = docker.get_archive(cid, path)
        with open_stream(stream) as reader, tarfile.open(fileobj=reader, mode="r|") as tar:
            for i, member in enumerate(tar):
                if i == 0:
                    is_file = member.isfile()
                if member.isfile():
                    total += member.size
                    budget[0] -= member.size
                    if budget[0] <= 0:
                        return None
    except (DockerError, tarfile.TarError):
        return None
    return total if is_file else -1


def _mounts(
    c: ContainerInfo, kinds: Mapping[str, VolumeKind], path_exists: Callable[[str], bool | None]
) -> tuple[Mount, ...]:
    out = []
    for m in c.mounts:
        if m.type is MountType.VOLUME:
            kind = kinds.get(m.name) or volume_kind(m.name)
            store = StoreKind.ANONYMOUS_VOLUME if kind is VolumeKind.ANONYMOUS else StoreKind.NAMED_VOLUME
            out.append(Mount(store, m.destination, source=m.name, read_only=m.read_only))
        elif m.type is MountType.BIND:
            out.append(
                Mount(
                    StoreKind.BIND,
                    m.destination,
                    source=m.source,
                    read_only=m.read_only,
                    source_exists=path_exists(m.source),
                )
            )
        elif m.type is MountType.TMPFS:
            out.append(Mount(StoreKind.TMPFS, m.destination))
        else:
            out.append(Mount(StoreKind.OTHER, m.destination, source=m.source, read_only=m.read_only))
    return tuple(out)


def _path_exists(engine: EngineInfo) -> Callable[[str], bool | None]:
    if not engine.local:
        return lambda _p: None
    return lambda p: os.path.lexists(p) if p else None


def collect(docker: DockerPort, *, writable_layer: bool = True) -> LiveState:
    """Read the engine once and build workloads and volume facts."""
    engine = docker.engine_info()
    summaries = docker.list_containers(all=True)

    def inspect(c: ContainerInfo) -> ContainerInfo | None:
        try:
            return docker.inspect_container(c.id)
        except DockerNotFound:
            return None

    def image(image_id: str) -> tuple[str, ImageInfo | None]:
        try:
            return image_id, docker.inspect_image(image_id)
        except DockerNotFound:
            return image_id, None

    # One pool, pipelined: volume list and sizes run beside the inspections, and each
    # container's writable-layer scan starts as soon as its inspection is back.
    with ThreadPoolExecutor(max_workers=WORKERS) as pool:
        volumes_f = pool.submit(docker.list_volumes)
        sizes_f = pool.submit(docker.volume_sizes)
        rw_sizes = writable_sizes(docker) if writable_layer else None
        inspections = [pool.submit(inspect, c) for c in summaries]
        detailed: list[ContainerInfo] = []
        layer_fs: dict[str, Future[WritableLayer | None]] = {}
        for fut in inspections:
            c = fut.result()
            if c is None:
                continue
            detailed.append(c)
            if writable_layer:
                layer_fs[c.id] = pool.submit(_writable, docker, c, rw_sizes)
        image_fs = [pool.submit(image, i) for i in sorted({c.image_id for c in detailed if c.image_id})]
        images = dict(f.result() for f in image_fs)
        volumes = volumes_f.result()
        sizes = sizes_f.result()
        layers = [layer_fs[c.id].result() if c.id in layer_fs else None for c in detailed]
    kinds = {v.name: volume_kind(v) for v in volumes}
    exists = _path_exists(engine)

    workloads = []
    image_of: dict[str, str] = {}
    for c, layer in zip(detailed, layers, strict=True):
        info = images.get(c.image_id)
        ref = (
            c.image
            if c.image and not c.image.startswith("sha256:")
            else (info.tags[0] if info and info.tags else c.image)
        )
        image_of[c.name] = ref
        workdir = c.labels.get(COMPOSE_WORKDIR)
        workloads.append(
            Workload(
                name=c.name,
                kind="container",
                image=ref,
                mounts=_mounts(c, kinds, exists),
                project=c.labels.get(COMPOSE_PROJECT),
                service=c.labels.get(COMPOSE_SERVICE),
                labels=c.labels,
                restart=c.restart_policy or None,
                image_volumes=info.volumes if info else (),
                writable=layer,
                state=c.state,
                working_dir=workdir,
                working_dir_exists=exists(workdir) if workdir else None,
            )
        )
    facts = []
    for v in build_volume_inventory(volumes, detailed, sizes):
        users = tuple(dict.fromkeys(u.name for u in v.users))
        db_users = tuple(u for u in users if (e := lookup(image_of.get(u))) is not None and e.database)
        facts.append(
            VolumeFact(
                name=v.name,
                anonymous=v.kind is VolumeKind.ANONYMOUS,
                size=v.size,
                users=users,
                database_users=db_users,
                compose_key=v.compose_volume,
                dangling_with_data=Flag.DANGLING_WITH_DATA in v.flags,
            )
        )
    workloads.sort(key=lambda w: w.name)
    return LiveState(engine=engine, workloads=tuple(workloads), volumes=tuple(facts))


def audit_input(
    state: LiveState, *, backups: BackupIndex | None = None, policy: BackupPolicy | None = None
) -> AuditInput:
    return AuditInput(
        source="live",
        workloads=state.workloads,
        volumes=state.volumes,
        engine_volumes=frozenset(v.name for v in state.volumes),
        engine_api=state.engine.api_version,
        backups=backups,
        policy=policy or BackupPolicy(),
    )
