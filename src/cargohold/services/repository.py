"""Repository use cases: the library API that the CLI (and later the daemon) call.

Every function takes an open :class:`~cargohold.repo.repository.Repository` (see
:func:`open_repository`) and does its own locking: shared locks for backup, restore,
check, forget and prune (prune deletes in two phases so it never needs to stop
backups), none for read-only listings.
"""

from __future__ import annotations

import contextlib
import os
import socket
import stat
from collections import defaultdict
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Literal

from cargohold.backends import Backend, open_backend
from cargohold.backends.counting import CountingBackend
from cargohold.errors import (
    AmbiguousSnapshot,
    BackendError,
    IntegrityError,
    ObjectNotFound,
    RestoreConflict,
    SnapshotNotFound,
    UnsupportedFormat,
    UsageError,
)
from cargohold.model.backups import BackupRecord, index_from_snapshots
from cargohold.repo import keys as keyslots
from cargohold.repo import sharedparams, storage, verifications
from cargohold.repo.archiver import Archiver, BackupOptions, BackupResult
from cargohold.repo.checker import Checker, CheckReport
from cargohold.repo.format import pack_name
from cargohold.repo.locks import LockInfo, LockManager
from cargohold.repo.progress import NullProgress, Progress
from cargohold.repo.prune import Pruner, PruneReport
from cargohold.repo.repository import Repository
from cargohold.repo.restorer import RestoreOptions, Restorer, RestoreResult, split_path
from cargohold.repo.retention import Decision, Policy, apply_policy
from cargohold.repo.snapshot import Snapshot, Source
from cargohold.repo.tree import DIR, Node

REPO_ENV = "CARGOHOLD_REPO"
PASSWORD_ENV = "CARGOHOLD_PASSWORD"
LOCK_WAIT_ENV = "CARGOHOLD_LOCK_WAIT"
NO_CACHE_ENV = "CARGOHOLD_NO_CACHE"
RETRY_BUDGET_ENV = "CARGOHOLD_RETRY_BUDGET"

__all__ = [
    "DiffEntry",
    "ForgetGroup",
    "LsEntry",
    "RepoStats",
    "backup",
    "check",
    "default_cache_dir",
    "default_repo_url",
    "diff",
    "find_snapshot",
    "forget",
    "init_repository",
    "key_add",
    "key_list",
    "key_passwd",
    "key_remove",
    "list_locks",
    "lock_wait",
    "ls",
    "open_repository",
    "prune",
    "rebuild_index",
    "resolve_repo_url",
    "restore",
    "restore_overlap",
    "snapshots",
    "stats",
    "unlock",
]


# --- where and how ---------------------------------------------------------------------


def default_repo_url() -> str:
    """``$XDG_DATA_HOME/cargohold/repo``, else ``~/.local/share/cargohold/repo``."""
    base = os.environ.get("XDG_DATA_HOME") or os.path.join(os.path.expanduser("~"), ".local", "share")
    return os.path.join(base, "cargohold", "repo")


def resolve_repo_url(url: str | None) -> str:
    """``--repo`` wins, then ``CARGOHOLD_REPO``, then the default location."""
    return url or os.environ.get(REPO_ENV) or default_repo_url()


def lock_wait() -> float:
    """Seconds to wait for a repository lock (``CARGOHOLD_LOCK_WAIT``; 0: fail at once)."""
    try:
        return float(os.environ.get(LOCK_WAIT_ENV, "0") or 0)
    except ValueError:
        raise UsageError(f"{LOCK_WAIT_ENV} must be a number of seconds") from None


def _retry_budget() -> float:
    """Seconds a request to a remote store is retried for (``CARGOHOLD_RETRY_BUDGET``)."""
    try:
        budget = float(os.environ.get(RETRY_BUDGET_ENV, "") or storage.RETRY_BUDGET)
    except ValueError:
        budget = -1.0
    if not budget > 0:
        raise UsageError(f"{RETRY_BUDGET_ENV} must be a positive number of seconds")
    return budget


def _open_store(url: str) -> CountingBackend:
    """The store of ``url``: remote ones retried for ``CARGOHOLD_RETRY_BUDGET`` seconds."""
    return storage.open_storage(url, retry_budget=_retry_budget())


def locks_of(repo: Repository) -> LockManager:
    return LockManager(repo.backend, wait=lock_wait())


def init_repository(
    url: str, password: str, *, kdf: keyslots.KdfParams | None = None, like: Repository | None = None
) -> Repository:
    """Create a repository; with ``like``, one sharing its blob id key, chunker seed and
    chunker parameters (:mod:`cargohold.repo.sharedparams`), so snapshots copy between them."""
    if not password:
        raise UsageError("an empty password is not allowed")
    backend = _open_store(url)
    kdf = kdf or keyslots.KdfParams.from_env()
    cache_dir, spec = _cache_for(backend, "default"), storage.spec_of(url, backend)
    if like is not None:
        return sharedparams.init_like(backend, password, like, kdf=kdf, cache_dir=cache_dir, spec=spec)
    return Repository.init(backend, password, kdf=kdf, cache_dir=cache_dir, spec=spec)


def prepare_store(url: str, *, create: bool = True) -> str | None:
    """Make sure the store of ``url`` can hold a repository before ``init`` writes to it: a
    backend with a ``prepare(create)`` capability (S3: the bucket) creates what is missing
    when ``create``, or says how. Returns a line for the user when it did something."""
    backend = open_backend(url)
    try:
        prepare = getattr(backend, "prepare", None)
        return prepare(create=create) if callable(prepare) else None
    finally:
        backend.close()


def open_repository(url: str, password: str, *, cache_dir: Path | Literal["default"] | None = "default") -> Repository:
    """Open (without reading the index: the operations do that under their lock). Remote
    stores are retried; their index files, snapshots and trees are cached in ``cache_dir``
    (``"default"``: :func:`default_cache_dir`; None: no cache)."""
    backend = _open_store(url)
    return Repository.open(
        backend,
        password,
        load_index=False,
        cache_dir=_cache_for(backend, cache_dir),
        spec=storage.spec_of(url, backend),
    )


def default_cache_dir() -> Path | None:
    """Where metadata caches live: ``$XDG_CACHE_HOME/cargohold``, else ``~/.cache/cargohold``;
    None (no cache) when ``CARGOHOLD_NO_CACHE`` is set to anything but ``0``."""
    if os.environ.get(NO_CACHE_ENV, "") not in ("", "0"):
        return None
    base = os.environ.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache")
    return Path(base) / "cargohold"


def _cache_for(backend: Backend, cache_dir: Path | Literal["default"] | None) -> Path | None:
    """The metadata cache directory for a repository on ``backend``: only remote ones have one."""
    if not storage.is_remote(backend):
        return None
    return default_cache_dir() if cache_dir == "default" else cache_dir


# --- snapshots -------------------------------------------------------------------------


def snapshots(repo: Repository, *, source: str | None = None, tags: Sequence[str] = ()) -> list[Snapshot]:
    """Snapshots oldest first, optionally of one source name and having all ``tags``."""
    out = []
    for s in repo.snapshots():
        if source is not None and s.source.name != source:
            continue
        if tags and not set(tags) <= set(s.tags):
            continue
        out.append(s)
    return out


def find_snapshot(
    repo: Repository, ref: str, *, source: str | None = None, among: Sequence[Snapshot] | None = None
) -> Snapshot:
    """A snapshot by id, unique id prefix or ``latest`` (of ``source`` when given).
    ``among``: every snapshot of ``repo`` (oldest first, all readable), when the caller has
    read them already — then nothing is read again."""
    ref = ref.strip().lower()
    if not ref:
        raise UsageError("empty snapshot reference")
    if ref == "latest":
        if among is None:
            found = snapshots(repo, source=source)
        else:
            found = [s for s in among if source is None or s.source.name == source]
        if not found:
            where = f" of source {source!r}" if source else ""
            raise SnapshotNotFound(f"no snapshot{where} in {repo.backend.url}")
        return found[-1]
    if among is None:
        ids = [i for i in repo.list_snapshot_ids() if i.startswith(ref)]
    else:
        ids = [s.id for s in among if s.id.startswith(ref)]
    if not ids:
        raise SnapshotNotFound(f"no snapshot {ref!r} in {repo.backend.url}")
    if len(ids) > 1:
        raise AmbiguousSnapshot(f"{ref!r} matches {len(ids)} snapshots")
    snap = repo.load_snapshot(ids[0]) if among is None else next(s for s in among if s.id == ids[0])
    if source is not None and snap.source.name != source:
        raise SnapshotNotFound(f"snapshot {ref!r} is of {snap.source.name!r}, not {source!r}")
    return snap


def newest_by_source(repo: Repository) -> dict[tuple[str, str], Snapshot]:
    """The newest readable snapshot of each (source kind, name): the parents of the next backups.

    An unreadable snapshot is skipped, not fatal: parents only feed the files cache, and one
    damaged snapshot must not stop every backup (``check`` reports it).
    """
    newest: dict[tuple[str, str], Snapshot] = {}
    for snap in repo.snapshots(errors={}):  # oldest first: later ones replace earlier ones
        newest[(snap.source.kind, snap.source.name)] = snap
    return newest


def parents_then_index(repo: Repository) -> dict[tuple[str, str], Snapshot]:
    """:func:`newest_by_source`, then the index: a snapshot is written after its index file,
    so the index read second has the parents' trees (read the other way round, a backup
    committed in between would be a parent whose trees are not in the index). Call it with
    the repository lock held: prune relies on the index being read after the lock."""
    parents = newest_by_source(repo)
    repo.load_index()
    return parents


def backup(
    repo: Repository,
    path: str | os.PathLike[str],
    *,
    tags: Sequence[str] = (),
    source: Source | None = None,
    ignore_inode: bool = False,
    skip_if_unchanged: bool = False,
    progress: Progress | None = None,
) -> BackupResult:
    """Back up a directory; the parent is the newest snapshot of the same source.

    A repository inside the directory is left out of the snapshot (with a warning; see
    :attr:`BackupResult.excluded`); a directory inside the repository is refused.
    """
    src = source or Source("path", os.path.abspath(os.fspath(path)))
    root = repo.local_dir()
    if root is not None and _within(os.path.realpath(os.fspath(path)), os.path.realpath(root)):
        raise UsageError(
            f"{os.fspath(path)} is inside the repository {root}: a repository is not backed up into itself"
        )
    with locks_of(repo).shared(f"backup {src.name}"):
        parent = parents_then_index(repo).get((src.kind, src.name))
        opts = BackupOptions(
            source=src,
            tags=list(tags),
            parent=parent,
            ignore_inode=ignore_inode,
            skip_if_unchanged=skip_if_unchanged,
            progress=progress or NullProgress(),
        )
        return Archiver(repo, opts).run(path)


def restore(
    repo: Repository,
    ref: str,
    target: str | os.PathLike[str],
    *,
    include: Sequence[str] = (),
    source: str | None = None,
    force: bool = False,
    progress: Progress | None = None,
) -> tuple[Snapshot, RestoreResult]:
    """Restore a snapshot into ``target``; damaged files are listed in the result.

    Refuses (:class:`RestoreConflict`, before anything is written) a target that would put
    the snapshot over, into or around its own live source on this host (see
    :func:`restore_overlap`), unless ``force``.
    """
    with locks_of(repo).shared("restore"):
        snap = find_snapshot(repo, ref, source=source)
        repo.load_index()  # a pack no index file lists is found by Repository.locate
        if not force:
            overlap = restore_overlap(repo, snap, target, include=include)
            if overlap is not None and overlap.refused:
                raise RestoreConflict(overlap.message(snap))
        opts = RestoreOptions(include=list(include), progress=progress or NullProgress())
        return snap, Restorer(repo, opts).run(snap, target)


# --- restoring over the live source ----------------------------------------------------

SAME, INSIDE, CONTAINS = "same", "inside", "contains"


@dataclass(frozen=True)
class Overlap:
    """How a restore target relates to the live source of the snapshot restored into it."""

    kind: str  # SAME: the source itself; INSIDE: a directory in it; CONTAINS: a directory around it
    source: str  # the source directory, resolved
    target: str  # the target, resolved
    #: Existing files (entries of any type but a directory the snapshot also has as one)
    #: the restore would replace, those inside a directory it would replace included.
    replaced: int

    @property
    def refused(self) -> bool:
        """Restoring onto the source replaces nothing when it is gone or holds none of the
        snapshot's files (the recovery the snapshot is for); writing into the live tree, or
        around it, always mixes the snapshot into it."""
        return self.kind != SAME or self.replaced > 0

    def message(self, snap: Snapshot) -> str:
        what = f"snapshot {snap.short_id} of {_ago(snap.time)}"
        n = f"{self.replaced} file{'' if self.replaced == 1 else 's'}"
        if self.kind == SAME:
            return f"{n} of {self.source} would be overwritten by {what}"
        where = "inside" if self.kind == INSIDE else "around"
        return (
            f"--target {self.target} is {where} {self.source}, the live source of {what}: the restore "
            f"would write into the live tree ({n} of it overwritten)"
        )


def _ago(when: datetime) -> str:
    secs = max(0, int((datetime.now(UTC) - when).total_seconds()))
    for size, unit in ((86400, "day"), (3600, "hour"), (60, "minute")):
        if secs >= size:
            n = secs // size
            return f"{n} {unit}{'' if n == 1 else 's'} ago"
    return "just now"


def live_source(snap: Snapshot) -> str | None:
    """The directory on this host the snapshot was read from, if it was read from one here."""
    if snap.hostname and snap.hostname != socket.gethostname():
        return None
    if snap.source.meta.get("via") == "api":  # read through an engine, not from this file system
        return None
    for p in snap.paths:
        if os.path.isabs(p):
            return p
    return None


def _ids(path: str) -> list[tuple[int, int]]:
    """(device, inode) of ``path`` and of each of its existing ancestors, nearest first."""
    out = []
    while True:
        try:
            st = os.stat(path)
        except OSError:
            pass
        else:
            out.append((st.st_dev, st.st_ino))
        parent = os.path.dirname(path)
        if parent == path:
            return out
        path = parent


def _within(inner: str, outer: str) -> bool:
    return inner == outer or inner.startswith(outer.rstrip("/") + "/")


def restore_overlap(
    repo: Repository, snap: Snapshot, target: str | os.PathLike[str], *, include: Sequence[str] = ()
) -> Overlap | None:
    """Whether restoring ``snap`` into ``target`` would write over, into or around the live
    directory it was taken of (on this host). Paths are compared resolved (symlinks, ``..``)
    and by device and inode, so a bind mount or a symlink to the source is the source."""
    src = live_source(snap)
    if src is None:
        return None
    src_real = os.path.realpath(src)
    tgt_real = os.path.realpath(os.fspath(target))
    src_ids, tgt_ids = _ids(src_real), _ids(tgt_real)
    src_exists = bool(src_ids) and os.path.isdir(src_real)
    if tgt_real == src_real or (src_exists and os.path.exists(tgt_real) and os.path.samefile(tgt_real, src_real)):
        kind = SAME
    elif _within(tgt_real, src_real) or (src_exists and src_ids[0] in tgt_ids):
        kind = INSIDE
    elif _within(src_real, tgt_real) or (os.path.exists(tgt_real) and tgt_ids[0] in src_ids):
        kind = CONTAINS
    else:
        return None
    replaced = _count_replaced(repo, snap.tree, os.fsencode(tgt_real), (), [split_path(p) for p in include])
    return Overlap(kind, src_real, tgt_real, replaced)


def _count_replaced(
    repo: Repository, tree_id: bytes, dirpath: bytes, rel: tuple[bytes, ...], includes: list[tuple[bytes, ...]]
) -> int:
    """Existing entries under ``dirpath`` that restoring the tree there would replace."""
    n = 0
    for node in repo.load_tree(tree_id).nodes:
        here = (*rel, node.name)
        if includes and not any(here[: len(i)] == i or i[: len(here)] == here for i in includes):
            continue
        path = dirpath + b"/" + node.name
        try:
            st = os.lstat(path)
        except OSError:
            continue  # nothing there: nothing below it either
        if stat.S_ISDIR(st.st_mode):
            if node.type == DIR:
                if node.subtree is not None:
                    n += _count_replaced(repo, node.subtree, path, here, includes)
                continue
            n += 1 + sum(len(dirs) + len(files) for _, dirs, files in os.walk(path))
        else:
            n += 1
    return n


@dataclass(frozen=True)
class LsEntry:
    path: str
    node: Node


def _subtree(repo: Repository, snap: Snapshot, path: str) -> tuple[str, list[Node]]:
    parts = split_path(path)
    nodes = repo.load_tree(snap.tree).nodes
    prefix = ""
    for i, part in enumerate(parts):
        node = next((n for n in nodes if n.name == part), None)
        if node is None:
            raise UsageError(f"{path!r} is not in snapshot {snap.short_id}")
        prefix = f"{prefix}/{node.display_name}"
        if node.type != DIR or node.subtree is None:
            if i == len(parts) - 1:
                return prefix.rsplit("/", 1)[0], [node]
            raise UsageError(f"{prefix!r} is not a directory in snapshot {snap.short_id}")
        nodes = repo.load_tree(node.subtree).nodes
    return prefix, nodes


def walk(repo: Repository, prefix: str, nodes: list[Node], *, recursive: bool = True) -> Iterator[LsEntry]:
    for n in sorted(nodes, key=lambda n: n.name):
        path = f"{prefix}/{n.display_name}"
        yield LsEntry(path, n)
        if recursive and n.type == DIR and n.subtree is not None:
            yield from walk(repo, path, repo.load_tree(n.subtree).nodes)


def ls(repo: Repository, ref: str, path: str = "", *, recursive: bool = True) -> tuple[Snapshot, list[LsEntry]]:
    snap = find_snapshot(repo, ref)  # before the index (see backup)
    repo.load_index()
    prefix, nodes = _subtree(repo, snap, path)
    return snap, list(walk(repo, prefix, nodes, recursive=recursive))


@dataclass(frozen=True)
class DiffEntry:
    change: str  # "+" added, "-" removed, "M" content changed, "U" metadata changed, "T" type changed
    path: str


def _meta(n: Node) -> tuple[object, ...]:
    return (n.mode, n.uid, n.gid, n.mtime_ns, n.xattrs, n.target, n.rdev)


def _diff(repo: Repository, a: bytes | None, b: bytes | None, prefix: str) -> Iterator[DiffEntry]:
    if a == b:
        return
    na = {n.name: n for n in repo.load_tree(a).nodes} if a else {}
    nb = {n.name: n for n in repo.load_tree(b).nodes} if b else {}
    for name in sorted(set(na) | set(nb)):
        x, y = na.get(name), nb.get(name)
        path = f"{prefix}/{(x or y).display_name}"  # type: ignore[union-attr]
        if x is None or y is None:
            node = x or y
            assert node is not None
            yield DiffEntry("+" if x is None else "-", path + ("/" if node.type == DIR else ""))
            if node.type == DIR:
                yield from _diff(repo, None if x is None else x.subtree, y.subtree if y else None, path)
            continue
        if x.type != y.type:
            yield DiffEntry("T", path)
            continue
        if x.type == DIR:
            if _meta(x) != _meta(y):
                yield DiffEntry("U", path + "/")
            yield from _diff(repo, x.subtree, y.subtree, path)
        elif x.content != y.content or x.size != y.size:
            yield DiffEntry("M", path)
        elif _meta(x) != _meta(y):
            yield DiffEntry("U", path)


def diff(repo: Repository, ref1: str, ref2: str) -> tuple[Snapshot, Snapshot, list[DiffEntry]]:
    s1, s2 = find_snapshot(repo, ref1), find_snapshot(repo, ref2)  # before the index (see backup)
    repo.load_index()
    return s1, s2, list(_diff(repo, s1.tree, s2.tree, ""))


# --- maintenance -----------------------------------------------------------------------


def check(
    repo: Repository, *, read_data: bool = False, subset: float | None = None, progress: Progress | None = None
) -> CheckReport:
    if subset is not None and not 0 < subset <= 100:
        raise UsageError("--read-data-subset must be a percentage in (0, 100]")
    locks = locks_of(repo)
    with locks.shared("check"), repo.uncached():  # check the repository, not a local copy of it
        return Checker(repo, progress=progress, locks=locks).run(read_data=read_data, subset=subset)


@dataclass
class ForgetGroup:
    source: str
    decision: Decision[Snapshot]


@dataclass
class ForgetResult:
    groups: list[ForgetGroup] = field(default_factory=list)
    removed: list[str] = field(default_factory=list)
    dry_run: bool = False
    prune: PruneReport | None = None


def forget(
    repo: Repository,
    policy: Policy,
    *,
    source: str | None = None,
    dry_run: bool = False,
    prune_after: bool = False,
    progress: Progress | None = None,
) -> ForgetResult:
    """Apply ``policy`` to every source's snapshots (or one source's)."""
    if policy.empty():
        raise UsageError("give at least one --keep-* option", hint="see `cargohold forget --help`")
    result = ForgetResult(dry_run=dry_run)
    with locks_of(repo).shared("forget"):
        groups: dict[tuple[str, str], list[Snapshot]] = defaultdict(list)
        for s in snapshots(repo, source=source):
            groups[(s.source.kind, s.source.name)].append(s)
        for (kind, name), snaps in sorted(groups.items()):
            decision = apply_policy(snaps, policy)
            result.groups.append(ForgetGroup(f"{kind}:{name}", decision))
            if not dry_run:
                for s in decision.remove:
                    repo.delete_snapshot(s.id)
                    result.removed.append(s.id)
    if prune_after and not dry_run:
        result.prune = prune(repo, progress=progress)
    return result


@dataclass
class RebuildReport:
    packs: int = 0
    blobs: int = 0
    index_files_replaced: int = 0
    damaged_packs: dict[str, str] = field(default_factory=dict)
    new_index: str = ""


def rebuild_index(repo: Repository) -> RebuildReport:
    """Write one index from the headers of all packs, superseding every index file (also
    damaged ones). Runs beside backups: index files written meanwhile are kept."""
    rep = RebuildReport()
    with locks_of(repo).shared("rebuild-index"):
        old = repo.list_index_files()
        records = []
        for pid, size in repo.list_packs():
            try:
                records.append(repo.read_pack_header(pid, size))
            except (IntegrityError, BackendError, UnsupportedFormat) as err:
                rep.damaged_packs[pack_name(pid)] = str(err)
        rep.packs = len(records)
        rep.blobs = sum(len(r.blobs) for r in records)
        rep.new_index = repo.write_index(records, tuple(old))
        for name in old:
            if name != rep.new_index:
                with contextlib.suppress(ObjectNotFound):
                    repo.backend.delete(f"index/{name}")
                rep.index_files_replaced += 1
    return rep


def prune(repo: Repository, *, dry_run: bool = False, progress: Progress | None = None) -> PruneReport:
    return Pruner(repo, locks_of(repo), dry_run=dry_run, progress=progress).run()


@dataclass
class RepoStats:
    snapshots: int = 0
    files: int = 0  # summed over snapshots
    logical_bytes: int = 0  # summed over snapshots: what a restore of each would write
    unique_bytes: int = 0  # plaintext bytes of the distinct blobs
    stored_bytes: int = 0  # bytes of all packs
    blobs: int = 0
    packs: int = 0

    @property
    def dedup_ratio(self) -> float:
        return self.logical_bytes / self.unique_bytes if self.unique_bytes else 0.0

    @property
    def compression_ratio(self) -> float:
        return self.unique_bytes / self.stored_bytes if self.stored_bytes else 0.0


def stats(repo: Repository) -> RepoStats:
    repo.load_index()
    st = RepoStats()
    for s in repo.snapshots():
        st.snapshots += 1
        st.files += s.stats.files
        st.logical_bytes += s.stats.bytes
    for _bid, loc in repo.index.blobs():
        st.blobs += 1
        st.unique_bytes += loc.raw_length
    for _pid, size in repo.list_packs():
        st.packs += 1
        st.stored_bytes += size
    return st


# --- keys and locks --------------------------------------------------------------------


def key_add(repo: Repository, new_password: str, *, label: str = "") -> str:
    with locks_of(repo).exclusive("key add"):
        return keyslots.create_key(repo.backend, new_password, repo.key, label=label, config=repo.config)


def key_list(repo: Repository) -> tuple[list[keyslots.KeySlot], dict[str, str]]:
    return keyslots.list_keys(repo.backend), keyslots.damaged_keys(repo.backend)


def key_remove(repo: Repository, slot_id: str) -> None:
    # exclusive: two removals at once could each see the other's slot and leave none
    with locks_of(repo).exclusive("key remove"):
        matches = [k.id for k in keyslots.list_keys(repo.backend) if k.id.startswith(slot_id)]
        if len(matches) > 1:
            raise UsageError(f"key {slot_id!r} is ambiguous")
        keyslots.remove_key(repo.backend, matches[0] if matches else slot_id, current=repo.key_id)


def key_passwd(repo: Repository, new_password: str) -> str:
    with locks_of(repo).exclusive("key passwd"):
        new_id = keyslots.change_password(repo.backend, repo.key, repo.key_id, new_password, config=repo.config)
    repo.key_id = new_id
    return new_id


def list_locks(url: str) -> list[LockInfo]:
    return LockManager(_open_store(url)).list()


def unlock(url: str, *, remove_all: bool = False) -> int:
    """Remove stale locks (or every lock with ``remove_all``); returns how many."""
    mgr = LockManager(_open_store(url))
    return mgr.break_all() if remove_all else mgr.remove_stale()


def backup_index(repo: Repository) -> dict[str, BackupRecord]:
    """Newest snapshot per volume (source kind ``volume``) with its newest verification."""
    return index_from_snapshots(repo.snapshots(), verifications.load_all(repo))
