"""Backup of a directory tree: a bounded parallel pipeline.

The walk (main thread) stats every entry, compares it with the parent snapshot and
hands changed regular files to the *file* workers; they read, chunk and hash (keyed
BLAKE3) and pass every new chunk to the *blob* workers, which compress (zstd), encrypt
(AES-GCM) and put it into a pack (written by the thread that fills it). zstd, BLAKE3,
AES-GCM and file I/O release the GIL, so both cores work. At most ``max_inflight``
bytes of chunks wait between the stages, so memory stays bounded whatever the size of
the data: reader buffers + in-flight chunks + one open pack per blob type.

A file is not read again when the parent snapshot has it with the same size, mtime,
ctime and inode (``ignore_inode`` compares only size and mtime, for sources that do
not keep ctime/inode stable, like copies or network file systems) and all its chunks
are in the index.
"""

from __future__ import annotations

import os
import socket
import stat
import threading
import time
from collections import deque
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any, Protocol

from cargohold import __version__
from cargohold.errors import UsageError
from cargohold.procinfo import current_user
from cargohold.repo.chunker import Chunker, ChunkSource
from cargohold.repo.fileread import Compressibility, FileRead, open_noatime, read_file
from cargohold.repo.format import BlobType
from cargohold.repo.fsnode import node_from_stat
from cargohold.repo.memory import gc_paused, tune_allocator
from cargohold.repo.procpool import ProcessStore
from cargohold.repo.progress import NullProgress, Progress
from cargohold.repo.repository import Repository
from cargohold.repo.snapshot import Snapshot, SnapshotStats, Source
from cargohold.repo.tree import DIR, FILE, Node, Tree


@dataclass
class BackupOptions:
    source: Source | None = None
    tags: list[str] = field(default_factory=list)
    parent: Snapshot | None = None
    #: What the files cache compares with, when not the parent: an unsaved pre-pass of the
    #: same directory (see :meth:`Archiver.prepass`).
    reference: Snapshot | None = None
    #: Compare only size and mtime with the parent (sources without stable ctime/inode).
    ignore_inode: bool = False
    #: Do not write a snapshot when nothing changed since the parent (the result says so).
    skip_if_unchanged: bool = False
    workers: int = 2
    #: Store files in ``workers`` worker processes (each with its own interpreter lock) once
    #: more than this many bytes of changed files would go to the in-process threads (small
    #: backups never pay for starting processes); None: never.
    #: Only for repositories a child process can open (a local directory).
    processes_after: int | None = 4 * 1024 * 1024
    max_inflight: int = 8 * 1024 * 1024
    progress: Progress = field(default_factory=NullProgress)
    #: Extra trees stored with the snapshot (see :attr:`Snapshot.extra_trees`).
    extra_trees: dict[str, bytes] = field(default_factory=dict)


@dataclass
class BackupResult:
    snapshot: Snapshot | None
    tree: bytes
    stats: SnapshotStats
    parent: str | None
    skipped: bool = False
    warnings: list[str] = field(default_factory=list)
    #: Files that changed while they were read (each also has a warning), sorted.
    changed: list[str] = field(default_factory=list)
    #: Directories left out of the snapshot: the repository itself, when the backed-up
    #: directory contains it (each also has a warning).
    excluded: list[str] = field(default_factory=list)


#: Chunks are handed from the file readers to the blob workers in batches of about this size.
_BATCH = 1024 * 1024


class _Budget:
    """A byte counter that blocks producers while too much data is in flight."""

    def __init__(self, limit: int) -> None:
        self._limit = limit
        self._used = 0
        self._cond = threading.Condition()

    def acquire(self, n: int) -> None:
        with self._cond:
            while self._used > 0 and self._used + n > self._limit:
                self._cond.wait()
            self._used += n

    def release(self, n: int) -> None:
        with self._cond:
            self._used -= n
            self._cond.notify_all()

    def wait_empty(self) -> None:
        with self._cond:
            while self._used > 0:
                self._cond.wait()


class _Pending(Protocol):
    """A file handed to the readers: ``result()`` waits and says whether it was stored."""

    def result(self) -> bool: ...


#: How many files may be handed to the readers before started directories are finished.
_LOOKAHEAD = 2000


class _Dir:
    """A directory whose entries were started but whose tree is not stored yet."""

    __slots__ = ("nodes", "parent", "parent_id", "pending", "previous", "subdirs", "tree_id")

    def __init__(self, parent: Tree | None, parent_id: bytes | None) -> None:
        self.parent = parent
        self.parent_id = parent_id
        self.previous = {n.name: n for n in parent.nodes} if parent is not None else {}
        self.nodes: list[Node] = []
        self.pending: list[tuple[Node, _Pending]] = []
        self.subdirs: list[tuple[Node, _Dir]] = []
        self.tree_id: bytes | None = None


class Archiver:
    def __init__(self, repo: Repository, options: BackupOptions | None = None) -> None:
        self.repo = repo
        self.opts = options or BackupOptions()
        self.stats = SnapshotStats()
        self.warnings: list[str] = []
        self.changed: list[str] = []
        self.excluded: list[str] = []
        #: (device, inode) of the repository's directory, when it is a local one: never
        #: backed up into itself (it would grow with every run).
        self._repo_dir = _local_repository_dir(repo)
        self._budget = _Budget(self.opts.max_inflight)
        self._error: BaseException | None = None
        #: Whether anything but access times differs from the parent snapshot.
        self._changed = False
        self._local = threading.local()
        self._stats_lock = threading.Lock()
        self._file_pool: ThreadPoolExecutor | None = None
        #: Started subdirectories, oldest first, that may be finished early (bounded lookahead).
        self._ready: deque[_Dir] = deque()
        self._outstanding = 0
        self._blob_pool: ThreadPoolExecutor | None = None
        self._procs: ProcessStore | None = None
        #: Bytes of changed files handed to the in-process threads.
        self._threaded_bytes = 0
        #: Whether a worker process can open the repository (asked once).
        self._shareable: bool | None = None
        self._setup: dict[str, Any] | None = None

    # --- public ---------------------------------------------------------------------

    def run(self, path: str | os.PathLike[str], *, since: tuple[int, int, int] | None = None) -> BackupResult:
        """Back up the directory and commit a snapshot.

        ``since``: the repository's (added bytes, raw bytes, blobs) counters before a
        :meth:`prepass`, so the snapshot's statistics count what both passes stored.
        """
        started = time.monotonic()
        counters = since or (self.repo.added_bytes, self.repo.added_raw_bytes, self.repo.added_blobs)
        root, root_node, tree_id = self._build(path)
        source = self.opts.source or Source("path", os.fsdecode(root))
        return self._commit(root_node, tree_id, source, [os.fsdecode(root)], started, counters)

    def prepass(self, path: str | os.PathLike[str]) -> Snapshot:
        """Store the directory's new data and trees without committing a snapshot.

        The result (unsaved, no id) is the ``reference`` of a second pass over the same
        directory, which then reads only what changed in between: the way to back up a live
        volume with a short stop — read everything while it runs, stop, read the rest.
        """
        root, root_node, tree_id = self._build(path)
        self.repo.flush()
        self.opts.progress.finish()
        root_node.subtree = tree_id
        return Snapshot(
            tree=tree_id, time=datetime.now(UTC), source=Source("prepass", os.fsdecode(root)), root=root_node
        )

    def _build(self, path: str | os.PathLike[str]) -> tuple[bytes, Node, bytes]:
        """Walk and store the directory; return its path, root node and tree id."""
        root = os.fsencode(os.path.abspath(path))
        if os.path.islink(root):  # entries are opened without following a last symlink: not the root's
            root = os.path.realpath(root)
        try:
            st = os.stat(root)
        except OSError as err:
            raise UsageError(f"cannot back up {os.fsdecode(root)}: {err.strerror}") from None
        if not stat.S_ISDIR(st.st_mode):
            raise UsageError(f"{os.fsdecode(root)} is not a directory")
        ref = self.opts.reference or self.opts.parent
        ref_tree = self.repo.load_tree(ref.tree) if ref is not None else None
        tune_allocator()
        self.opts.progress.start("backup")
        self._file_pool = ThreadPoolExecutor(self.opts.workers, thread_name_prefix="ch-read")
        self._blob_pool = ThreadPoolExecutor(self.opts.workers, thread_name_prefix="ch-blob")
        failed = True
        try:
            with gc_paused():
                tree_id = self._walk(root, ref_tree, ref.tree if ref is not None else None)
            failed = False
        finally:
            self._close_processes(failed)  # first: a failing backup stops its workers at once
            self._file_pool.shutdown(wait=True, cancel_futures=True)
            self._blob_pool.shutdown(wait=True)
        if self._error is not None:
            raise self._error
        root_node = node_from_stat(root, b"", st)
        assert root_node is not None
        return root, root_node, tree_id

    def _commit(
        self,
        root_node: Node,
        tree_id: bytes,
        source: Source,
        paths: list[str],
        started: float,
        counters: tuple[int, int, int],
    ) -> BackupResult:
        """Flush the packs, then write the snapshot (the commit point) unless nothing changed."""
        parent = self.opts.parent
        root_node.subtree = tree_id
        self.repo.flush()
        self.opts.progress.finish()
        bytes0, raw0, blobs0 = counters
        stats = self.stats
        stats.added_bytes = self.repo.added_bytes - bytes0
        stats.added_raw_bytes = self.repo.added_raw_bytes - raw0
        stats.blobs_added = self.repo.added_blobs - blobs0
        stats.duration = round(time.monotonic() - started, 3)
        if (
            self.opts.skip_if_unchanged
            and parent is not None
            and self.opts.reference is None  # compared with a pre-pass, not with the parent
            and not self._changed
            and not self.opts.extra_trees
            and parent.root is not None
            and _comparable(parent.root) == _comparable(root_node)
        ):
            return BackupResult(
                None,
                tree_id,
                stats,
                parent.id,
                skipped=True,
                warnings=self.warnings,
                changed=sorted(self.changed),
                excluded=self.excluded,
            )
        snap = Snapshot(
            tree=tree_id,
            time=datetime.now(UTC),
            source=source,
            hostname=socket.gethostname(),
            username=current_user(),
            tags=sorted(set(self.opts.tags)),
            paths=paths,
            parent=parent.id if parent is not None else None,
            program_version=__version__,
            stats=stats,
            root=root_node,
            extra_trees=dict(self.opts.extra_trees),
        )
        self.repo.save_snapshot(snap)
        return BackupResult(
            snap,
            tree_id,
            stats,
            snap.parent,
            warnings=self.warnings,
            changed=sorted(self.changed),
            excluded=self.excluded,
        )

    # --- the walk -------------------------------------------------------------------

    def _warn(self, msg: str) -> None:
        with self._stats_lock:
            self.warnings.append(msg)

    def _walk(self, path: bytes, parent: Tree | None, parent_id: bytes | None = None) -> bytes:
        """Back up the directory ``path``; return its tree id. ``parent`` is the same
        directory in the parent snapshot (``parent_id`` its tree id)."""
        return self._finish(self._start(path, parent, parent_id))

    def _start(self, path: bytes, parent: Tree | None, parent_id: bytes | None) -> _Dir:
        """Stat a directory's entries, hand its changed files to the readers and start its
        subdirectories; the tree is encoded later by :meth:`_finish`. Directories are not
        waited for one by one (the readers would idle at every directory boundary, which
        dominates trees of many small files): up to ``_LOOKAHEAD`` files may be in the
        readers' hands before the oldest started directories are finished."""
        if self._error is not None:
            raise self._error
        d = _Dir(parent, parent_id)
        previous = d.previous
        try:
            names = _list_dir(path)
        except OSError as err:
            self._warn(f"{os.fsdecode(path)}: cannot list: {err.strerror}")
            names = []
        strict = not self.opts.ignore_inode
        for name in names:
            full = path + b"/" + name
            prev = previous.get(name)
            try:
                st = os.lstat(full)
                # xattrs and symlink targets cannot change without changing ctime: reuse them
                same = (
                    strict
                    and prev is not None
                    and prev.ctime_ns == st.st_ctime_ns
                    and prev.inode == st.st_ino
                    and prev.device == st.st_dev
                )
                node = node_from_stat(full, name, st, like=prev if same else None)
            except FileNotFoundError:
                continue
            except OSError as err:
                self._warn(f"{os.fsdecode(full)}: {err.strerror}")
                continue
            if node is None:
                continue
            if node.type == DIR:
                if self._repo_dir is not None and (node.device, node.inode) == self._repo_dir:
                    self.excluded.append(os.fsdecode(full))
                    self._warn(
                        f"{os.fsdecode(full)}: the repository itself, excluded from the snapshot "
                        "(keep the repository outside what you back up)"
                    )
                    continue
                sub = sub_id = None
                if prev is not None and prev.type == DIR and prev.subtree is not None:
                    sub_id = prev.subtree
                    sub = self.repo.load_tree(sub_id)
                child = self._start(full, sub, sub_id)
                d.subdirs.append((node, child))
                self._ready.append(child)
                self.stats.dirs += 1
            elif node.type == FILE:
                self.stats.files += 1
                self.stats.bytes += node.size
                if prev is not None and self._unchanged(prev, node):
                    node.content = prev.content
                    node.extents = prev.extents
                    node.chunking = prev.chunking
                    self.stats.files_unchanged += 1
                    self.opts.progress.advance(node.size, 1)
                else:
                    if prev is None:
                        self.stats.files_new += 1
                    else:
                        self.stats.files_changed += 1
                    d.pending.append((node, self._dispatch(full, node, prev)))
                    self._outstanding += 1
            else:
                self.stats.others += 1
            d.nodes.append(node)
            while self._outstanding > _LOOKAHEAD and self._ready:
                self._finish(self._ready.popleft())
        return d

    def _finish(self, d: _Dir) -> bytes:
        """Wait for a started directory's files and subdirectories; store its tree (once)."""
        if d.tree_id is not None:
            return d.tree_id
        for node, child in d.subdirs:
            node.subtree = self._finish(child)
        failed: set[int] = set()
        for node, fut in d.pending:
            if not fut.result():
                failed.add(id(node))
        self._outstanding -= len(d.pending)
        d.pending = []
        nodes = [n for n in d.nodes if id(n) not in failed] if failed else d.nodes
        if self._error is not None:
            raise self._error
        parent, previous = d.parent, d.previous
        if parent is not None and d.parent_id is not None and nodes == parent.nodes:
            d.tree_id = d.parent_id  # nothing changed here, not even an access time: no need to encode
        else:
            if (
                self.opts.skip_if_unchanged
                and not self._changed
                and (
                    len(nodes) != len(previous)
                    or any(n.name not in previous or _comparable(n) != _comparable(previous[n.name]) for n in nodes)
                )
            ):
                self._changed = True
            d.tree_id = self.repo.save_tree(Tree(nodes))
        d.nodes, d.subdirs = [], []
        return d.tree_id

    def _unchanged(self, prev: Node, node: Node) -> bool:
        if prev.type != FILE or prev.size != node.size or prev.mtime_ns != node.mtime_ns:
            return False
        if not self.opts.ignore_inode and (prev.ctime_ns != node.ctime_ns or prev.inode != node.inode):
            return False
        return all(self.repo.known(c) for c in prev.content)

    # --- file workers ---------------------------------------------------------------

    def _chunker(self) -> Chunker:
        ch: Chunker | None = getattr(self._local, "chunker", None)
        if ch is None:
            ch = Chunker(self.repo.config.chunker, self.repo.key.chunker_seed)
            self._local.chunker = ch
        return ch

    def _dispatch(self, path: bytes, node: Node, prev: Node | None) -> _Pending:
        """Hand a changed file to the worker processes or, for the first bytes of a backup
        (small backups never pay for starting processes), to the reader threads."""
        previous = prev.chunking if prev is not None else None
        after = self.opts.processes_after
        if self._procs is None and after is not None and self._threaded_bytes + node.size > after:
            if self._shareable is None:
                self._setup = self.repo.worker_setup()
                self._shareable = self._setup is not None
            if self._shareable:
                self._procs = ProcessStore(self.repo, self.opts.workers, self.opts.progress, self._fail, self._setup)
        if self._procs is not None:
            return self._procs.submit(path, node.size, previous, lambda r: self._apply(path, node, r))
        self._threaded_bytes += node.size
        assert self._file_pool is not None
        return self._file_pool.submit(self._read_file, path, node, previous)

    def _close_processes(self, failed: bool) -> None:
        procs, self._procs = self._procs, None
        if procs is None:
            return
        if failed or self._error is not None:
            procs.abort()
            return
        try:
            procs.close()
        except BaseException as err:  # a worker failed, or we were interrupted while waiting
            procs.abort()
            self._fail(err)

    def _fail(self, err: BaseException) -> None:
        """Stop the whole backup with ``err`` (the first error wins)."""
        with self._stats_lock:
            if self._error is None:
                self._error = err

    def _read_file(self, path: bytes, node: Node, previous_chunking: str | None) -> bool:
        """Read, chunk and hash one file; False when it could not be read (warned)."""
        if self._error is not None:
            return False
        try:
            result = read_file(path, previous_chunking, self.repo.config.chunker, self._store_content)
        except BaseException as err:  # a bug or a backend error: stop the whole backup
            self._fail(err)
            return False
        ok = self._apply(path, node, result)
        self.opts.progress.advance(0, 1)
        return ok

    def _apply(self, path: bytes, node: Node, result: FileRead) -> bool:
        """Put a file's stored content into its node; False when it is left out (warned)."""
        if result.warning is not None:
            self._warn(result.warning)
        if result.changed:
            with self._stats_lock:
                self.changed.append(os.fsdecode(path))
        if not result.ok:
            return False
        node.size = result.size
        node.content = result.content
        node.extents = result.extents
        node.chunking = result.method
        return True

    def _store_content(self, reader: ChunkSource, method: str, data_size: int) -> tuple[list[bytes], int] | None:
        """Cut ``reader`` into chunks, hash them and hand the new ones to the blob workers.

        Returns the chunk ids and the bytes read, or None when the backup is failing.
        """
        content: list[bytes] = []
        comp = Compressibility()
        total = 0
        repo = self.repo
        batch: list[tuple[bytes, bytes]] = []
        batch_bytes = 0
        for data in self._chunker().chunks(reader, method, data_size):
            if self._error is not None:
                self._release_batch(batch)
                return None
            bid = repo.blob_id(data)
            content.append(bid)
            total += len(data)
            if repo.reserve(bid):
                batch.append((bid, data))
                batch_bytes += len(data)
                if batch_bytes >= _BATCH:
                    self._submit(batch, batch_bytes, comp)
                    batch, batch_bytes = [], 0
            self.opts.progress.advance(len(data))
        if batch:
            self._submit(batch, batch_bytes, comp)
        return content, total

    def _submit(self, batch: list[tuple[bytes, bytes]], nbytes: int, comp: Compressibility) -> None:
        """Hand new chunks to a blob worker, in batches: one task, one budget and lock round
        per ~1 MiB instead of per chunk keeps the threads from fighting over the GIL."""
        self._budget.acquire(nbytes)
        assert self._blob_pool is not None
        try:
            self._blob_pool.submit(self._store, batch, nbytes, comp)
        except BaseException:
            self._budget.release(nbytes)
            self._release_batch(batch)
            raise

    def _release_batch(self, batch: list[tuple[bytes, bytes]]) -> None:
        for bid, _ in batch:
            self.repo.release(bid)

    def _store(self, batch: list[tuple[bytes, bytes]], nbytes: int, comp: Compressibility) -> None:
        done = 0
        try:
            encoded = []
            for bid, data in batch:
                if self._error is not None:
                    break
                stored = comp.encode(self.repo.cipher, bid, data, self.repo.config.compression_level)
                encoded.append((bid, stored, len(data)))
            self.repo.add_encoded_many(BlobType.DATA, encoded)
            done = len(encoded)
        except BaseException as err:
            self._fail(err)
        finally:
            if done < len(batch):
                self._release_batch(batch[done:])
            self._budget.release(nbytes)


def _comparable(node: Node) -> dict[str, object]:
    """A node without its access time (reading may update it) and, for a directory, its
    subtree id (which changes with its children's access times; children are compared
    on their own)."""
    d = node.to_json()
    d.pop("atime_ns", None)
    d.pop("subtree", None)
    return d


def _local_repository_dir(repo: Repository) -> tuple[int, int] | None:
    """(device, inode) of the directory of a repository on this file system, else None."""
    root = repo.local_dir()
    if root is None:
        return None
    try:
        st = os.stat(root)
    except OSError:
        return None
    return st.st_dev, st.st_ino


def _list_dir(path: bytes) -> list[bytes]:
    """Entry names sorted by bytes, read without touching the directory's atime."""
    fd = open_noatime(path, directory=True)
    try:
        with os.scandir(fd) as it:
            return sorted(os.fsencode(e.name) for e in it)
    finally:
        os.close(fd)
