"""Make a Docker volume hold exactly one snapshot — writing only what changed since the last time.

:func:`sync_volume` is how cargohold moves data into a volume on any engine for ``copy`` and
``project move``. The first time it is a full restore
(:func:`~cargohold.services.docker_restore.restore_volume`). cargohold then remembers which
snapshot it put there (:class:`SyncState`: a JSON file in the state directory keyed by target
engine id and volume, with the volume's creation time so a recreated volume is not mistaken
for the old one). The next sync compares the two snapshots' trees (:func:`tree_delta`;
equal subtrees have equal ids and are skipped unread) and writes only the difference: new and
changed entries, deletions, metadata.

* direct (local, writable mountpoint): deletions with the file system; a file changed in
  place gets only its changed chunks (same chunk at the same offset = same bytes); other new
  or changed files go through the restorer limited to them; metadata with
  ``apply_metadata``. Before writing, a metadata walk checks that the target still holds the
  previous snapshot; if someone changed it, the sync refuses (or, with ``force``, replaces
  everything after a safety snapshot).
* api (remote engine): a tar of just the changed entries (whole files) through the archive
  API into a never-started helper. The archive API cannot delete: deletions run ``rm`` in a
  short-lived container of an image with a shell (of a container that uses the volume
  there, of one recorded in the snapshot, or of a few other containers of the engine); with
  none, a directory that lost entries is replaced — a file entry of its name, then the
  directory sent whole (:func:`deletions_by_replacement`); only deletions at the volume's top
  level then need a full restore.

At the end every entry of the target is compared with the snapshot (content by chunk ids,
owner, mode, times); a mismatch is reported and the record dropped, so the next sync is full.
"""

from __future__ import annotations

import contextlib
import fcntl
import json
import os
import shutil
import stat
import tarfile
import time
from collections import defaultdict
from collections.abc import Container, Iterator, Mapping, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import asdict, dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from cargohold.docker.connect import Endpoint
from cargohold.docker.helper import helper_container, helper_labels
from cargohold.docker.port import DockerPort
from cargohold.errors import (
    CargoholdError,
    ConsistencyError,
    DockerAPIError,
    DockerConflict,
    DockerNotFound,
    IntegrityError,
    SnapshotNotFound,
    UsageError,
    VolumeNotFound,
)
from cargohold.model.engine import EngineInfo, VolumeInfo
from cargohold.repo.fsnode import apply_metadata
from cargohold.repo.progress import NullProgress, Progress
from cargohold.repo.repository import Repository
from cargohold.repo.restorer import RestoreOptions, Restorer
from cargohold.repo.snapshot import Snapshot
from cargohold.repo.tar_writer import BLOCK, Content, TarStats, encode_header, file_body, tar_header, walk_tree
from cargohold.repo.tree import DIR, FILE, SOCKET, Node
from cargohold.services.docker_backup import HELPER_MOUNT
from cargohold.services.docker_restore import (
    VolumeRestoreReport,
    VolumeRestoreRequest,
    check_restorable,
    restore_volume,
    volume_is_empty,
)
from cargohold.services.docker_sources import (
    SourceKind,
    StateSource,
    User,
    Via,
    choose_via,
    running_names,
    volume_users,
)
from cargohold.services.intents import IntentJournal, state_dir
from cargohold.services.repository import locks_of
from cargohold.services.verify import Comparison, Hasher, compare, expected_nodes, observe_dir, observe_tar
from cargohold.streams import open_stream

#: Above this many changed paths a delta is written by whole directories (the restorer's
#: include matching is linear in the number of includes).
MAX_INCLUDES = 200


# --- what cargohold put where -----------------------------------------------------------


@dataclass
class SyncRecord:
    """Snapshot ``snapshot`` of repository ``repository`` is what volume ``volume`` of engine
    ``engine_id`` holds, as cargohold wrote it."""

    engine_id: str
    volume: str
    #: The target volume's CreatedAt: a volume removed and recreated is another volume.
    volume_created: str
    repository: str
    snapshot: str
    #: Every write into the volume kept nanosecond times (direct); the archive API keeps seconds.
    exact_times: bool
    time: str


class SyncState:
    """``synced-volumes.json`` in the state directory: the snapshot last written into each target."""

    def __init__(self, path: Path | None = None) -> None:
        self.path = path or state_dir() / "synced-volumes.json"

    @staticmethod
    def _key(engine_id: str, volume: str) -> str:
        return f"{engine_id}/{volume}"

    def _read(self) -> dict[str, dict[str, Any]]:
        try:
            data = json.loads(self.path.read_text())
        except (OSError, ValueError):
            return {}
        return data if isinstance(data, dict) else {}

    @contextlib.contextmanager
    def _locked(self) -> Iterator[dict[str, dict[str, Any]]]:
        self.path.parent.mkdir(parents=True, exist_ok=True)
        with open(self.path.with_suffix(".lock"), "a") as lock:
            fcntl.flock(lock, fcntl.LOCK_EX)
            data = self._read()
            yield data
            tmp = self.path.with_suffix(f".tmp-{os.getpid()}")
            tmp.write_text(json.dumps(data, indent=1, sort_keys=True))
            os.replace(tmp, self.path)

    def get(self, engine_id: str, volume: str) -> SyncRecord | None:
        raw = self._read().get(self._key(engine_id, volume))
        try:
            return SyncRecord(**raw) if isinstance(raw, dict) else None
        except TypeError:
            return None

    def put(self, record: SyncRecord) -> None:
        with self._locked() as data:
            data[self._key(record.engine_id, record.volume)] = asdict(record)

    def drop(self, engine_id: str, volume: str) -> None:
        with self._locked() as data:
            data.pop(self._key(engine_id, volume), None)


# --- the difference between two snapshots ---------------------------------------------


@dataclass
class Delta:
    """What turns a volume holding ``old`` into one holding ``new`` (paths relative to the root)."""

    #: New or changed entries, written whole (a directory with everything below it).
    write: dict[str, Node] = field(default_factory=dict)
    #: Entries whose content is unchanged but whose owner, mode, times or xattrs changed.
    meta: dict[str, Node] = field(default_factory=dict)
    delete: list[str] = field(default_factory=list)
    #: Directories whose own metadata must be set again (they changed, or something in them did).
    dirs: dict[str, Node] = field(default_factory=dict)
    root_changed: bool = False
    #: The old node of files in ``write`` that were files before too (a direct write may patch them).
    before: dict[str, Node] = field(default_factory=dict)
    #: Directories (in ``write``) to empty and send whole: how the archive API deletes.
    replace: set[str] = field(default_factory=set)

    @property
    def empty(self) -> bool:
        return not (self.write or self.meta or self.delete or self.dirs or self.root_changed)


def _same_meta(a: Node, b: Node) -> bool:
    return (a.mode, a.uid, a.gid, a.mtime_ns, a.xattrs) == (b.mode, b.uid, b.gid, b.mtime_ns, b.xattrs)


def _same_body(a: Node, b: Node) -> bool:
    if a.type != b.type:
        return False
    if a.type == FILE:
        return (a.size, a.content, a.extents, a.links > 1) == (b.size, b.content, b.extents, b.links > 1)
    return (a.target, a.rdev) == (b.target, b.rdev)


def _join(prefix: str, node: Node) -> str:
    return f"{prefix}{os.fsdecode(node.name)}"


def tree_delta(repo: Repository, old: Snapshot, new: Snapshot) -> Delta:
    """Compare two snapshots' trees; equal subtrees (same id) are skipped without reading them."""
    delta = Delta()

    def walk(old_id: bytes | None, new_id: bytes, prefix: str) -> bool:
        if old_id == new_id:
            return False
        before = {n.name: n for n in repo.load_tree(old_id).nodes} if old_id is not None else {}
        changed = False
        for node in repo.load_tree(new_id).nodes:
            path = _join(prefix, node)
            was = before.pop(node.name, None)
            if node.type == SOCKET:
                continue  # never restored: their servers make them
            if was is None or was.type != node.type:
                delta.write[path] = node
                changed = True
            elif node.type == DIR:
                inner = node.subtree is not None and walk(was.subtree, node.subtree, path + "/")
                if inner or not _same_meta(was, node):
                    delta.dirs[path] = node
                    changed = True
            elif not _same_body(was, node):
                delta.write[path] = node
                if was.type == FILE:
                    delta.before[path] = was
                changed = True
            elif not _same_meta(was, node):
                delta.meta[path] = node
                changed = True
        for gone in before.values():
            delta.delete.append(_join(prefix, gone))
            changed = True
        return changed

    walk(old.tree, new.tree, "")
    delta.root_changed = bool(delta.write or delta.meta or delta.delete or delta.dirs) or (
        old.root is not None and new.root is not None and not _same_meta(old.root, new.root)
    )
    _complete_hard_links(repo, new, delta)
    delta.delete.sort()
    return delta


def _all_files(repo: Repository, tree_id: bytes, prefix: str) -> Iterator[tuple[str, Node]]:
    for node in repo.load_tree(tree_id).nodes:
        path = _join(prefix, node)
        yield path, node
        if node.type == DIR and node.subtree is not None:
            yield from _all_files(repo, node.subtree, path + "/")


def _under(path: str, roots: Container[str]) -> bool:
    """Whether a proper ancestor of ``path`` is in ``roots``."""
    parts = path.split("/")
    return any("/".join(parts[:i]) in roots for i in range(1, len(parts)))


def _complete_hard_links(repo: Repository, new: Snapshot, delta: Delta) -> None:
    """A written file that is hard-linked takes every other name of it along (a write breaks the link)."""
    linked = {path for path, n in delta.write.items() if n.type == FILE and n.links > 1 and n.inode}
    linked |= {path for path, n in delta.meta.items() if n.type == FILE and n.links > 1 and n.inode}
    if not linked and not any(n.type == DIR for n in delta.write.values()):
        return
    groups: dict[tuple[int, int], list[tuple[str, Node]]] = defaultdict(list)
    for path, node in _all_files(repo, new.tree, ""):
        if node.type == FILE and node.links > 1 and node.inode:
            groups[(node.device, node.inode)].append((path, node))
    for members in groups.values():
        if any(p in delta.write or p in delta.meta or _under(p, delta.write) for p, _ in members):
            for p, n in members:
                delta.meta.pop(p, None)
                if not _under(p, delta.write):
                    delta.write[p] = n


def _collapse(paths: Sequence[str], limit: int = MAX_INCLUDES) -> list[str]:
    """At most ``limit`` include paths that cover ``paths`` (their parents when needed); [] = all."""
    current = sorted(set(paths))
    while len(current) > limit:
        current = sorted({p.rsplit("/", 1)[0] if "/" in p else "" for p in current})
        if "" in current:
            return []
    chosen = set(current)
    return [p for p in current if not _under(p, chosen)]


# --- writing a delta ------------------------------------------------------------------


def _entry(node: Node, name: str, content: Content, links: dict[tuple[int, int], str]) -> Iterator[bytes]:
    """One tar entry (a hard link to a name sent before, when it is one)."""
    info = tar_header(node, name)
    if node.type == FILE and node.links > 1 and node.inode:
        first = links.get((node.device, node.inode))
        if first is not None:
            info.type, info.linkname, info.size = tarfile.LNKTYPE, first, 0
            yield encode_header(info)
            return
        links[(node.device, node.inode)] = name
    yield encode_header(info)
    if node.type == FILE:
        written = 0
        for piece in file_body(node, content):
            written += len(piece)
            yield piece
        if written % BLOCK:
            yield bytes(BLOCK - written % BLOCK)


def delta_tar(repo: Repository, snapshot: Snapshot, delta: Delta, *, prefix: str, stats: TarStats) -> Iterator[bytes]:
    """The entries of ``delta`` as a tar named ``PREFIX/…``; files with changed metadata are sent whole
    (a tar entry cannot carry metadata alone)."""
    links: dict[tuple[int, int], str] = {}
    entries = {**delta.dirs, **delta.meta, **delta.write}
    with ThreadPoolExecutor(2, thread_name_prefix="ch-delta") as pool:
        content = Content(repo, pool)
        if snapshot.root is not None and delta.root_changed:
            yield encode_header(tar_header(Node(**{**snapshot.root.__dict__, "name": b""}), prefix))
        for path in sorted(entries, key=lambda p: p.split("/")):
            node = entries[path]
            name = f"{prefix}/{path}"
            if path in delta.replace:
                # The engine replaces a directory by a file of the same name, and that file by the
                # directory that follows: the directory comes back empty, then gets its entries.
                placeholder = tarfile.TarInfo(name)
                placeholder.mode = 0o600
                yield encode_header(placeholder)
            linked = node.type == FILE and node.links > 1 and node.inode and (node.device, node.inode) in links
            yield from _entry(node, name, content, links)
            if node.type == FILE:
                stats.files += 1
                stats.bytes += 0 if linked else node.size
            elif node.type == DIR:
                stats.dirs += 1
                if path in delta.write and node.subtree is not None:
                    yield from walk_tree(repo, node.subtree, name, content, links, stats)
            else:
                stats.others += 1
    yield bytes(2 * BLOCK)


def _delete_direct(root: str, paths: Sequence[str]) -> None:
    for rel in paths:
        full = os.path.join(root, rel)
        try:
            st = os.lstat(full)
        except FileNotFoundError:
            continue
        if stat.S_ISDIR(st.st_mode):
            shutil.rmtree(full)
        else:
            os.unlink(full)


def _patchable(old: Node | None, new: Node, full: str) -> bool:
    if old is None or old.type != FILE or new.type != FILE or old.extents is not None or new.extents is not None:
        return False
    if old.links > 1 or new.links > 1:
        return False
    try:
        st = os.lstat(full)
    except FileNotFoundError:
        return False
    return stat.S_ISREG(st.st_mode) and st.st_size == old.size and st.st_nlink == 1


def _patch_file(repo: Repository, content: Content, full: str, old: Node, new: Node) -> int | None:
    """Rewrite only the chunks of ``full`` (holding ``old``) that differ from ``new``: bytes written,
    or None when a chunk is not in the index (the restorer then deals with it)."""
    sizes: dict[bytes, int] = {}
    for bid in {*old.content, *new.content}:
        loc = repo.locate(bid)
        if loc is None:
            return None
        sizes[bid] = loc.raw_length
    have: set[tuple[int, bytes]] = set()
    pos = 0
    for bid in old.content:
        have.add((pos, bid))
        pos += sizes[bid]
    todo: list[tuple[int, bytes]] = []
    pos = 0
    for bid in new.content:
        if (pos, bid) not in have:
            todo.append((pos, bid))
        pos += sizes[bid]
    written = 0
    fd = os.open(full, os.O_WRONLY | os.O_CLOEXEC)
    try:
        for (offset, _bid), data in zip(todo, content.chunks([b for _, b in todo]), strict=True):
            os.pwrite(fd, data, offset)
            written += len(data)
        os.ftruncate(fd, new.size)
    finally:
        os.close(fd)
    return written


def _apply_direct(
    repo: Repository, snapshot: Snapshot, delta: Delta, root: str, progress: Progress
) -> tuple[int, int, list[str]]:
    """Write ``delta`` into the local directory ``root``: (files, bytes written, warnings).

    A file that was a plain file before and still is gets only its changed chunks (same chunk
    at the same offset = same bytes there); everything else new or changed goes through the
    restorer, limited to those paths."""
    owners = os.geteuid() == 0
    _delete_direct(root, delta.delete)
    files = nbytes = 0
    warnings: list[str] = []
    rest: list[str] = []
    with ThreadPoolExecutor(2, thread_name_prefix="ch-patch") as pool:
        content = Content(repo, pool)
        for rel, node in delta.write.items():
            full = os.path.join(root, rel)
            old = delta.before.get(rel)
            done = _patch_file(repo, content, full, old, node) if old and _patchable(old, node, full) else None
            if done is None:
                rest.append(rel)
                continue
            files, nbytes = files + 1, nbytes + done
            progress.advance(done, 1)
            warnings += apply_metadata(os.fsencode(full), node, owners=owners)
    if rest:
        result = Restorer(repo, RestoreOptions(include=_collapse(rest), progress=progress)).run(snapshot, root)
        files, nbytes = files + result.files, nbytes + result.bytes
        warnings += result.warnings
        if result.damaged:
            raise IntegrityError(
                f"{len(result.damaged)} file(s) of snapshot {snapshot.short_id} are damaged in the repository: "
                + ", ".join(sorted(result.damaged)[:3]),
                hint="run `cargohold check --read-data`",
            )
    for rel, node in delta.meta.items():
        warnings += apply_metadata(os.fsencode(os.path.join(root, rel)), node, owners=owners)
    for rel in sorted(delta.dirs, key=lambda p: p.count("/"), reverse=True):
        warnings += apply_metadata(os.fsencode(os.path.join(root, rel)), delta.dirs[rel], owners=owners)
    if snapshot.root is not None:
        warnings += apply_metadata(os.fsencode(root), snapshot.root, owners=owners)
    return files, nbytes, warnings


def _shell_images(docker: DockerPort, users: Sequence[User], meta: Mapping[str, Any]) -> list[str]:
    """Images on this engine that likely have ``sh``: of the volume's users, of the containers recorded
    in the snapshot, then of a few other containers of the engine."""
    refs = [u.container.image_id for u in users]
    for c in meta.get("containers") or ():
        refs += [str(c.get("image_id") or ""), str(c.get("image") or "")]
    refs = [r for r in dict.fromkeys(refs) if r and docker.image_exists(r)]
    others = [c.image_id for c in docker.list_containers(all=True) if c.image_id and c.image_id not in refs]
    return refs + list(dict.fromkeys(others))[:5]


def deletions_by_replacement(repo: Repository, snapshot: Snapshot, delta: Delta) -> bool:
    """Turn the deletions into replacements of their directories (sent whole); False when an entry
    of the volume's root itself is deleted (the mount point cannot be replaced)."""
    parents = {p.rsplit("/", 1)[0] if "/" in p else "" for p in delta.delete}
    if "" in parents:
        return False
    parents = {p for p in parents if not _under(p, parents)}
    for p in parents:
        node = repo.node_at(snapshot.tree, p)
        if node is None or node.type != DIR:
            return False
        delta.write[p] = node
        delta.replace.add(p)
    for table in (delta.write, delta.meta, delta.dirs):
        for path in [q for q in table if _under(q, parents)]:
            del table[path]
    for p in parents:
        delta.dirs.pop(p, None)
    delta.delete = []
    return True


#: Paths handed to one ``rm`` (the command line of a process is limited).
RM_BATCH = 1000


def _run_rm(docker: DockerPort, image: str, volume: str, paths: Sequence[str]) -> int | None:
    """Exit code of ``rm -rf -- PATHS`` run in the volume from ``image``; None if it has no shell."""
    cid = docker.create_container(
        image,
        entrypoint=["sh", "-c", f'cd {HELPER_MOUNT} && rm -rf -- "$@"', "sh", *paths],
        command=[],
        mounts=[{"Type": "volume", "Source": volume, "Target": HELPER_MOUNT}],
        labels=helper_labels("delete"),
        network_mode="none",
        user="0",
    )
    try:
        try:
            docker.start(cid)
        except DockerAPIError:
            return None  # no sh in this image
        code = docker.wait(cid, timeout=600)
        if code not in (0, 126, 127):
            raise ConsistencyError(
                f"deleting {len(paths)} entries in volume {volume!r} failed (exit {code}): "
                f"{docker.logs(cid, tail=3).strip()}"
            )
        return None if code else 0
    finally:
        with contextlib.suppress(DockerNotFound):
            docker.remove_container(cid, force=True)


def _delete_api(docker: DockerPort, volume: str, paths: Sequence[str], images: Sequence[str]) -> bool:
    """Delete ``paths`` in the volume with ``rm`` from one of ``images``; False if none has a shell.

    The archive API can write but not delete, so this runs short-lived containers (no network)."""
    batches = [paths[i : i + RM_BATCH] for i in range(0, len(paths), RM_BATCH)]
    for image in images:
        if _run_rm(docker, image, volume, batches[0]) is None:
            continue
        for batch in batches[1:]:
            if _run_rm(docker, image, volume, batch) is None:
                raise ConsistencyError(f"deleting entries in volume {volume!r} with image {image} stopped working")
        return True
    return False


# --- checking a volume against a snapshot ----------------------------------------------


def _target_changed(root: str, expected: Mapping[str, Node], *, seconds: bool) -> str | None:
    """Metadata-only check that a directory still holds ``expected``: the first difference, or None."""
    seen = 0
    for dirpath, dirnames, filenames in os.walk(root):
        rel_dir = os.path.relpath(dirpath, root)
        base = "" if rel_dir == "." else rel_dir + "/"
        for name in [*dirnames, *filenames]:
            rel = base + name
            node = expected.get(rel)
            if node is None:
                return f"{rel} was added"
            st = os.lstat(os.path.join(dirpath, name))
            seen += 1
            mtime = st.st_mtime_ns // 1_000_000_000 * 1_000_000_000 if seconds else st.st_mtime_ns
            want = node.mtime_ns // 1_000_000_000 * 1_000_000_000 if seconds else node.mtime_ns
            if stat.S_ISREG(st.st_mode) and (node.type != FILE or node.size != st.st_size or mtime != want):
                return f"{rel} was modified"
            if stat.S_ISDIR(st.st_mode) != (node.type == DIR):
                return f"{rel} changed type"
    missing = sum(1 for p, n in expected.items() if p and n.type != SOCKET) - seen
    return f"{missing} entries were removed" if missing > 0 else None


def check_volume(
    repo: Repository, docker: DockerPort, volume: VolumeInfo, snapshot: Snapshot, *, direct: str | None, exact: bool
) -> Comparison:
    """Compare every entry of a volume with ``snapshot`` (content by chunk ids, metadata)."""
    expected = expected_nodes(repo, snapshot)
    hasher = Hasher(repo)
    if direct is not None and exact:
        return compare(
            repo, expected, observe_dir(Path(direct), expected, hasher), seconds_only=False, owners=True, hasher=hasher
        )
    mount = {"Type": "volume", "Source": volume.name, "Target": HELPER_MOUNT, "ReadOnly": True}
    with (
        helper_container(docker, [mount], purpose="check copy") as cid,
        open_stream(docker.get_archive(cid, f"{HELPER_MOUNT}/.")) as stream,
        ThreadPoolExecutor(2) as pool,
    ):
        observed = observe_tar(stream, expected, hasher)
        return compare(
            repo, expected, observed, seconds_only=True, owners=True, hasher=hasher, content=Content(repo, pool)
        )


# --- sync a snapshot into a volume ----------------------------------------------------


@dataclass
class SyncRequest:
    target: str
    #: Labels of a volume that has to be created (default: the snapshot's).
    labels: Mapping[str, str] | None = None
    force: bool = False
    via: Via = Via.AUTO
    #: Write only the difference when the target holds a snapshot cargohold put there.
    incremental: bool = True
    verify: bool = True
    progress: Progress = field(default_factory=NullProgress)
    journal: IntentJournal = field(default_factory=IntentJournal)
    state: SyncState = field(default_factory=SyncState)


@dataclass
class SyncResult:
    volume: str
    engine: str
    snapshot: Snapshot
    #: "full" (restore), "delta" (only the difference), "unchanged"
    method: str
    via: Via
    created: bool = False
    files: int = 0
    bytes: int = 0
    deleted: int = 0
    verified: bool | None = None
    problems: list[str] = field(default_factory=list)
    warnings: list[str] = field(default_factory=list)
    safety_snapshot: str | None = None
    seconds: float = 0.0


def _valid_record(
    repo: Repository, state: SyncState, engine: EngineInfo, volume: VolumeInfo
) -> tuple[SyncRecord, Snapshot] | None:
    record = state.get(engine.id, volume.name)
    if record is None or record.volume_created != volume.created_at or record.repository != repo.config.id:
        return None
    try:
        return record, repo.load_snapshot(record.snapshot)
    except SnapshotNotFound:
        return None  # pruned: the next sync is a full one


def preflight(
    repo: Repository, docker: DockerPort, engine: EngineInfo, target: str, req: SyncRequest
) -> VolumeInfo | None:
    """Refuse early (before any backup) what :func:`sync_volume` would refuse; the target, if it exists."""
    return _preflight(repo, docker, engine, target, req)[0]


def _preflight(
    repo: Repository, docker: DockerPort, engine: EngineInfo, target: str, req: SyncRequest
) -> tuple[VolumeInfo | None, tuple[SyncRecord, Snapshot] | None]:
    """:func:`preflight`, and what cargohold copied into the target last (if still valid)."""
    if req.via is Via.DIRECT and not engine.local:
        raise UsageError(f"--via direct: the target engine is remote ({engine.host})", hint="use --via api or auto")
    try:
        volume = docker.inspect_volume(target)
    except VolumeNotFound:
        return None, None
    running = running_names(volume_users(docker, target))
    if running:
        raise DockerConflict(
            f"volume {target!r} on {engine.host} is used by running container(s) {', '.join(running)}",
            hint="stop them first: cargohold does not write under a running application",
        )
    known = _valid_record(repo, req.state, engine, volume) if req.incremental else None
    if known is None and not req.force:
        source = StateSource(SourceKind.VOLUME, volume.name, volume)
        _via, direct, _why = choose_via(engine, source, Via.AUTO)
        if not volume_is_empty(docker, volume, direct):
            record = req.state.get(engine.id, volume.name)
            if record is not None and record.volume_created == volume.created_at:
                why = (
                    f"holds snapshot {record.snapshot[:8]}, which cargohold copied there "
                    "and is no longer in the repository"
                )
            else:
                why = "exists, is not empty, and was not written by cargohold"
            raise DockerConflict(
                f"volume {target!r} on {engine.host} {why}",
                hint="choose another name with --as, or pass --force to replace its contents "
                "(a safety snapshot of them is taken first)",
            )
    return volume, known


def create_like(docker: DockerPort, name: str, meta: Mapping[str, Any], labels: Mapping[str, str] | None) -> VolumeInfo:
    vol = meta.get("volume") or {}
    return docker.create_volume(
        name,
        driver=str(vol.get("driver") or "local"),
        options={str(k): str(v) for k, v in (vol.get("options") or {}).items()},
        labels={str(k): str(v) for k, v in (labels if labels is not None else vol.get("labels") or {}).items()},
    )


def _compare_identity(volume: VolumeInfo, meta: Mapping[str, Any], labels: Mapping[str, str] | None) -> list[str]:
    vol = meta.get("volume") or {}
    want_labels = dict(labels if labels is not None else vol.get("labels") or {})
    out = []
    if volume.driver != (vol.get("driver") or "local"):
        out.append(f"driver is {volume.driver!r}, the source's is {vol.get('driver')!r}")
    if dict(volume.options) != dict(vol.get("options") or {}):
        out.append("driver options differ from the source's")
    if dict(volume.labels) != want_labels:
        out.append("labels differ from the source's (Docker cannot relabel a volume: remove it and copy again)")
    return [f"volume {volume.name}: {w}" for w in out]


def sync_volume(
    repo: Repository, docker: DockerPort, endpoint: Endpoint, snapshot: Snapshot, req: SyncRequest
) -> SyncResult:
    """Make volume ``req.target`` of this engine hold exactly ``snapshot``."""
    started = time.monotonic()
    meta = check_restorable(snapshot)
    engine = docker.engine_info()
    volume, known = _preflight(repo, docker, engine, req.target, req)
    created = False
    if volume is None:
        volume = create_like(docker, req.target, meta, req.labels)
        created = True
    try:
        via, direct, _why = choose_via(engine, StateSource(SourceKind.VOLUME, volume.name, volume), req.via)
        if direct is not None and not os.access(direct, os.W_OK):
            if req.via is Via.DIRECT:
                raise UsageError(f"--via direct: {direct} is not writable by this user", hint="use --via api")
            via, direct = Via.API, None
        result = SyncResult(volume.name, engine.host, snapshot, "full", via, created)
        exact = via is Via.DIRECT
        done = False
        if known is not None:
            record, previous = known
            exact = exact and record.exact_times
            done = _sync_delta(repo, docker, snapshot, previous, volume, direct, exact, req, result)
        if not done:
            # Replacing what cargohold itself wrote there before needs no --force.
            report = _full(repo, docker, endpoint, snapshot, volume, via, req, force=req.force or known is not None)
            result.method, exact = "full", via is Via.DIRECT
            result.files, result.bytes = report.files, report.bytes
            result.safety_snapshot = report.safety_snapshot
            result.warnings += report.warnings
            if report.damaged:
                raise IntegrityError(
                    f"{len(report.damaged)} file(s) of snapshot {snapshot.short_id} are damaged in the repository",
                    hint="run `cargohold check --read-data`",
                )
    except BaseException as err:
        if not isinstance(err, (DockerConflict, UsageError)):  # refused before writing: the record stays true
            req.state.drop(engine.id, volume.name)
        if created:
            with contextlib.suppress(CargoholdError):
                docker.remove_volume(volume.name, force=True)
        raise
    volume = docker.inspect_volume(volume.name)
    result.warnings += _compare_identity(volume, meta, req.labels)
    if req.verify:
        with locks_of(repo).shared(f"check copy {volume.name}"):
            cmp = check_volume(repo, docker, volume, snapshot, direct=direct, exact=exact)
        result.verified = cmp.total_problems == 0
        result.problems = cmp.problems
    if result.verified is False:
        req.state.drop(engine.id, volume.name)
    elif req.incremental:
        req.state.put(
            SyncRecord(
                engine.id,
                volume.name,
                volume.created_at,
                repo.config.id,
                snapshot.id,
                exact,
                datetime.now(UTC).isoformat(),
            )
        )
    result.seconds = time.monotonic() - started
    return result


def _full(
    repo: Repository,
    docker: DockerPort,
    endpoint: Endpoint,
    snapshot: Snapshot,
    volume: VolumeInfo,
    via: Via,
    req: SyncRequest,
    *,
    force: bool,
) -> VolumeRestoreReport:
    return restore_volume(
        repo,
        docker,
        endpoint,
        snapshot,
        VolumeRestoreRequest(to=volume.name, force=force, via=via, progress=req.progress, journal=req.journal),
    )


def _sync_delta(
    repo: Repository,
    docker: DockerPort,
    snapshot: Snapshot,
    previous: Snapshot,
    volume: VolumeInfo,
    direct: str | None,
    exact: bool,
    req: SyncRequest,
    result: SyncResult,
) -> bool:
    """Write only what changed since ``previous``; False when a full restore is needed instead."""
    with locks_of(repo).shared(f"copy into volume {volume.name}"):
        repo.load_index()
        if direct is not None:
            changed = _target_changed(direct, expected_nodes(repo, previous), seconds=not exact)
            if changed is not None:
                if not req.force:
                    raise DockerConflict(
                        f"volume {volume.name!r} changed since cargohold copied snapshot {previous.short_id} "
                        f"into it ({changed})",
                        hint="pass --force to replace its contents (a safety snapshot of them is taken first)",
                    )
                return False
        delta = tree_delta(repo, previous, snapshot)
        result.method = "unchanged" if delta.empty else "delta"
        result.deleted = len(delta.delete)
        if delta.empty:
            return True
        if direct is not None:
            result.files, result.bytes, warnings = _apply_direct(repo, snapshot, delta, direct, req.progress)
            result.warnings += warnings
            return True
        if delta.delete:
            images = _shell_images(docker, volume_users(docker, volume.name), snapshot.source.meta)
            if not _delete_api(docker, volume.name, delta.delete, images) and not deletions_by_replacement(
                repo, snapshot, delta
            ):
                result.warnings.append(
                    f"no image with a shell on {result.engine} to delete {len(delta.delete)} entries at the top "
                    "of the volume through the Engine API: copied the whole volume"
                )
                return False
        stats = TarStats()
        mount = {"Type": "volume", "Source": volume.name, "Target": HELPER_MOUNT, "ReadOnly": False}
        with helper_container(docker, [mount], purpose=f"copy into {volume.name}") as cid:
            docker.put_archive(cid, "/", delta_tar(repo, snapshot, delta, prefix=HELPER_MOUNT.lstrip("/"), stats=stats))
        result.files, result.bytes = stats.files, stats.bytes
        return True
