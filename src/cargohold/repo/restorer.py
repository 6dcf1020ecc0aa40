"""Restore a snapshot (or parts of it) into a directory, byte-exactly.

1. Walk the snapshot's trees: create directories, symlinks, FIFOs, devices, unix
   sockets (bound and closed, as their servers leave them), hard links and empty files
   of the right size (holes of sparse files stay holes: only data regions are written).
2. Plan by pack: every needed blob is read once per pack (one ranged read covering the
   blobs when they are dense, else one read per blob), decrypted, decompressed and
   written with ``pwrite`` to every place that needs it (:mod:`.restoredata`) — by
   worker processes from a local repository once there is enough to write, else threads.
3. Apply metadata: owners (when root), modes, xattrs and times of files, then of
   directories from the deepest up, so writing children does not change a parent's mtime.

A blob that cannot be read damages only the files that need it: the rest is restored
and the result lists the damaged files and why.
"""

from __future__ import annotations

import os
from collections import defaultdict
from dataclasses import dataclass, field

from cargohold.errors import BackendError, IntegrityError, UsageError
from cargohold.repo.child import WorkerFailed
from cargohold.repo.fsnode import apply_metadata, make_socket
from cargohold.repo.index import Location
from cargohold.repo.memory import gc_paused, tune_allocator
from cargohold.repo.progress import NullProgress, Progress
from cargohold.repo.repository import Repository
from cargohold.repo.restoredata import BlobJob, DataWriter, ProcessWriters, Target, split_jobs, write_in_threads
from cargohold.repo.snapshot import Snapshot
from cargohold.repo.storage import readers_per_process
from cargohold.repo.tree import BLOCKDEV, CHARDEV, DIR, FIFO, FILE, SOCKET, SYMLINK, Node


@dataclass
class RestoreOptions:
    include: list[str] = field(default_factory=list)
    owners: bool | None = None  # default: when running as root
    workers: int = 2
    #: From this many bytes to write on, a local repository is read by worker processes
    #: (:mod:`.restoreworker`) instead of threads; None: never.
    processes_after: int | None = 8 * 1024 * 1024
    progress: Progress = field(default_factory=NullProgress)


@dataclass
class RestoreResult:
    files: int = 0
    dirs: int = 0
    others: int = 0
    bytes: int = 0
    warnings: list[str] = field(default_factory=list)
    #: Restored path (relative to the target) -> why its content is damaged.
    damaged: dict[str, str] = field(default_factory=dict)


def split_path(path: str) -> tuple[bytes, ...]:
    parts = tuple(p for p in os.fsencode(path).split(b"/") if p not in (b"", b"."))
    if b".." in parts:
        raise UsageError(f"invalid path {path!r} in the snapshot (no '..' allowed)")
    return parts


def _place(extents: list[tuple[int, int]] | None, pos: int, length: int) -> list[tuple[int, int, int]]:
    """(file offset, offset in chunk, n) pieces of the content range [pos, pos+length)."""
    if extents is None:
        return [(pos, 0, length)]
    out = []
    stream = 0
    done = 0
    for start, n in extents:
        if length - done <= 0:
            break
        lo = max(pos + done, stream)
        hi = min(pos + length, stream + n)
        if lo < hi:
            out.append((start + (lo - stream), lo - pos, hi - lo))
            done = hi - pos
        stream += n
    return out


def _create(path: bytes, size: int) -> None:
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_CLOEXEC, 0o600)
    try:
        os.ftruncate(fd, size)
    finally:
        os.close(fd)


class Restorer:
    def __init__(self, repo: Repository, options: RestoreOptions | None = None) -> None:
        self.repo = repo
        self.opts = options or RestoreOptions()
        self.result = RestoreResult()
        self._owners = self.opts.owners if self.opts.owners is not None else os.geteuid() == 0
        self._includes = [split_path(p) for p in self.opts.include]
        #: Blob id -> (where it is, where it goes).
        self._need: dict[bytes, tuple[Location, list[Target]]] = {}
        self._files: list[tuple[bytes, Node]] = []
        self._dirs: list[tuple[bytes, Node]] = []
        self._links: dict[tuple[int, int], bytes] = {}
        #: Files the data phase writes.
        self._data_files: set[bytes] = set()
        #: Files the data phase created (the others are created empty afterwards).
        self._created: set[bytes] = set()
        #: Directories that were empty when we came (or that we made): nothing to clear in them.
        self._fresh: set[bytes] = set()
        self._hardlinks: list[tuple[bytes, bytes, str]] = []

    def run(self, snapshot: Snapshot, target: str | os.PathLike[str]) -> RestoreResult:
        tune_allocator()
        with gc_paused():
            return self._run(snapshot, target)

    def _run(self, snapshot: Snapshot, target: str | os.PathLike[str]) -> RestoreResult:
        root = os.fsencode(os.path.abspath(target))
        try:
            os.makedirs(root, exist_ok=True)
            with os.scandir(root) as entries:
                if next(entries, None) is None:
                    self._fresh.add(root)
        except OSError as err:
            raise UsageError(f"cannot restore into {os.fsdecode(root)}: {err.strerror}") from None
        self.opts.progress.start("restore", snapshot.stats.bytes or None)
        try:
            tree = self.repo.load_tree(snapshot.tree)
        except (IntegrityError, BackendError) as err:
            raise IntegrityError(f"snapshot {snapshot.short_id}: root tree unreadable: {err}") from None
        if self._includes and not any(self._matches_any(tree.nodes, inc) for inc in self._includes):
            wanted = ", ".join(self.opts.include)
            raise UsageError(f"--include {wanted}: no such path in snapshot {snapshot.short_id}")
        # A whole snapshot's size is known: worker processes start now, while the walk runs.
        writers = None if self._includes else self._writers(snapshot.stats.bytes)
        try:
            self._walk(tree.nodes, root, ())
            self._write_data(writers)
        finally:
            if writers is not None:
                writers.abort()  # stops them if the walk failed or left them nothing to do
        for path, node in self._files:  # files whose data could not be written at all
            if node.type == FILE and path in self._data_files and path not in self._created:
                _create(path, node.size)
        for first, path, relname in self._hardlinks:
            try:
                os.link(first, path)
            except OSError as err:
                self.result.warnings.append(f"{relname}: cannot link: {err.strerror}")
        for path, node in self._files:
            self.result.warnings.extend(apply_metadata(path, node, owners=self._owners))
        for path, node in reversed(self._dirs):
            self.result.warnings.extend(apply_metadata(path, node, owners=self._owners))
        if not self._includes and snapshot.root is not None:
            self.result.warnings.extend(apply_metadata(root, snapshot.root, owners=self._owners))
        self.opts.progress.finish()
        return self.result

    # --- walk -----------------------------------------------------------------------

    def _matches_any(self, nodes: list[Node], inc: tuple[bytes, ...]) -> bool:
        level = nodes
        for i, part in enumerate(inc):
            node = next((n for n in level if n.name == part), None)
            if node is None:
                return False
            if i == len(inc) - 1:
                return True
            if node.type != DIR or node.subtree is None:
                return False
            level = self.repo.load_tree(node.subtree).nodes
        return True

    def _selected(self, rel: tuple[bytes, ...]) -> tuple[bool, bool]:
        """(restore this node, restore everything below it)."""
        if not self._includes:
            return True, True
        for inc in self._includes:
            if rel[: len(inc)] == inc:
                return True, True
        return any(inc[: len(rel)] == rel for inc in self._includes), False

    def _walk(self, nodes: list[Node], dirpath: bytes, rel: tuple[bytes, ...]) -> None:
        for node in nodes:
            if b"/" in node.name or node.name in (b"", b".", b".."):
                self.result.warnings.append(f"skipped an entry with an invalid name {node.name!r}")
                continue
            here = (*rel, node.name)
            want, _ = self._selected(here)
            if not want:
                continue
            path = dirpath + b"/" + node.name
            relname = os.fsdecode(b"/".join(here))
            try:
                self._restore_node(node, path, relname, here)
            except OSError as err:
                self.result.warnings.append(f"{relname}: {err.strerror}")

    def _clear(self, path: bytes, keep_dir: bool) -> None:
        try:
            st = os.lstat(path)
        except FileNotFoundError:
            return
        import stat as st_mod

        if st_mod.S_ISDIR(st.st_mode):
            if keep_dir:
                return
            import shutil

            shutil.rmtree(path)
        else:
            os.unlink(path)

    def _restore_node(self, node: Node, path: bytes, relname: str, here: tuple[bytes, ...]) -> None:
        fresh = path.rpartition(b"/")[0] in self._fresh  # nothing there to replace
        if not fresh:
            self._clear(path, keep_dir=node.type == DIR)
        if node.type == DIR:
            if fresh:
                os.mkdir(path)
                self._fresh.add(path)
            else:
                os.makedirs(path, exist_ok=True)
            self.result.dirs += 1
            self._dirs.append((path, node))
            if node.subtree is not None:
                try:
                    sub = self.repo.load_tree(node.subtree)
                except (IntegrityError, BackendError) as err:
                    self.result.damaged[relname + "/"] = f"directory listing unreadable: {err}"
                    return
                self._walk(sub.nodes, path, here)
            return
        if node.type == FILE:
            key = (node.device, node.inode)
            if node.links > 1 and node.inode:
                first = self._links.get(key)
                if first is not None:
                    self._hardlinks.append((first, path, relname))  # made once the data is there
                    self.result.files += 1
                    return
                self._links[key] = path
            if not node.content:  # empty, or only holes: nothing will write it
                _create(path, node.size)
            else:  # created by the first write (in parallel, off the walk)
                self._data_files.add(path)
            self._plan_file(node, path, relname)
            self._files.append((path, node))
            self.result.files += 1
            self.result.bytes += node.size
            return
        if node.type == SYMLINK:
            os.symlink(node.target or b"", path)
        elif node.type == FIFO:
            os.mkfifo(path, 0o600)
        elif node.type in (CHARDEV, BLOCKDEV):
            kind = 0o020000 if node.type == CHARDEV else 0o060000
            try:
                os.mknod(path, kind | 0o600, node.rdev or 0)
            except PermissionError:
                self.result.warnings.append(f"{relname}: device nodes need root, skipped")
                return
        elif node.type == SOCKET:
            try:
                make_socket(path)
            except OSError as err:
                self.result.warnings.append(f"{relname}: socket not recreated: {err.strerror or err}")
                return
        self.result.others += 1
        self._files.append((path, node))

    def _plan_file(self, node: Node, path: bytes, relname: str) -> None:
        pos = 0
        sparse_size = node.size if node.extents is not None else None
        need = self._need
        for bid in node.content:
            entry = need.get(bid)
            if entry is None:
                loc = self.repo.locate(bid)
                if loc is None:
                    self.result.damaged[relname] = f"data blob {bid.hex()} is not in the index"
                    return
                entry = need[bid] = (loc, [])
            raw = entry[0].raw_length
            entry[1].append((path, relname, sparse_size, _place(node.extents, pos, raw)))
            pos += raw

    # --- data -----------------------------------------------------------------------

    def _writers(self, nbytes: int) -> ProcessWriters | None:
        """Worker processes when there are ``nbytes`` or more to write and the repository
        can be opened by another process; else None (threads will do)."""
        after = self.opts.processes_after
        setup = self.repo.worker_setup() if after is not None and nbytes >= after else None
        if setup is None:
            return None
        repo = self.repo
        reads = readers_per_process(repo.connections, self.opts.workers, remote=repo.remote)
        try:
            return ProcessWriters({**setup, "reads": reads}, self.opts.workers, repo.requests)
        except (OSError, WorkerFailed):  # no process to be had (limits, no interpreter): threads
            return None

    def _write_data(self, writers: ProcessWriters | None) -> None:
        by_pack: dict[bytes, list[BlobJob]] = defaultdict(list)
        total = 0
        for bid, (loc, targets) in self._need.items():
            by_pack[loc.pack].append((bid, loc.offset, loc.length, loc.raw_length, targets))
            total += loc.raw_length * len(targets)
        if not by_pack:
            return
        jobs = split_jobs(by_pack)
        repo = self.repo
        progress = self.opts.progress

        def writer() -> DataWriter:
            return DataWriter(repo.backend.load, repo.cipher, repo.blob_id, progress.advance)

        if writers is None:
            writers = self._writers(total)
        if writers is not None:
            report = writers.run(jobs, writer, progress.advance)
        else:
            reads = readers_per_process(repo.connections, remote=repo.remote)
            # remote: one thread decodes while the others fetch; local: a writer per worker
            threads = 1 if reads > 1 else self.opts.workers
            report = write_in_threads(jobs, writer, threads, reads)
        self._created = report.created
        for rel, why in report.damaged.items():
            self.result.damaged.setdefault(rel, why)
