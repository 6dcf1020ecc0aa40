"""Backup of a tar stream — the Docker Engine archive API's — through the archiver's pipeline.

When cargohold cannot read a volume's files itself (a remote or rootless engine, a volume
driver without a local mountpoint), the engine streams them as a tar
(``GET /containers/{id}/archive``). :class:`TarArchiver` turns that stream into the same
trees and content blobs a directory backup makes: one pass, file contents chunked and hashed
as they arrive, new chunks compressed and encrypted by the blob workers, trees saved bottom-up
at the end. Snapshots of both read paths are alike and deduplicate against each other.

What the archive API gives is what the snapshot holds: modification times to the second,
no access/change times, no sparse regions (holes arrive as zeros and deduplicate to one
chunk). Extended attributes are kept when the tar carries them (``SCHILY.xattr.*``).
"""

from __future__ import annotations

import contextlib
import os
import posixpath
import tarfile
import threading
import time
from collections.abc import Iterable, Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from decimal import Decimal
from queue import Empty, Full, Queue
from types import GeneratorType
from typing import IO, cast

from cargohold.errors import UsageError
from cargohold.repo.archiver import Archiver, BackupResult, _comparable
from cargohold.repo.chunker import ChunkSource
from cargohold.repo.snapshot import Source
from cargohold.repo.tree import BLOCKDEV, CHARDEV, DIR, FIFO, FILE, SYMLINK, Node, Tree
from cargohold.streams import open_stream

_XATTR = "SCHILY.xattr."


_END = object()


def prefetch(chunks: Iterable[bytes], *, max_chunks: int = 16) -> Iterator[bytes]:
    """Pull ``chunks`` on a thread of its own, up to ``max_chunks`` ahead of the consumer.

    The engine writes its tar into a socket; if nobody reads while the archiver hashes and
    cuts, the socket buffer fills and the engine stalls. Reading ahead keeps both busy.
    An error of the source is raised in the consumer; closing the consumer stops the reader.
    """
    queue: Queue[object] = Queue(max_chunks)
    stop = threading.Event()
    source = iter(chunks)

    def pump() -> None:
        try:
            for chunk in source:
                while not stop.is_set():
                    try:
                        queue.put(chunk, timeout=0.2)
                        break
                    except Full:
                        continue
                if stop.is_set():
                    return
            queue.put(_END)
        except BaseException as err:  # handed to the consumer
            queue.put(err)

    thread = threading.Thread(target=pump, name="ch-prefetch", daemon=True)
    thread.start()
    try:
        while True:
            item = queue.get()
            if item is _END:
                return
            if isinstance(item, BaseException):
                raise item
            assert isinstance(item, bytes)
            yield item
    finally:
        stop.set()
        # A source that can be closed from another thread (the engine's archive stream) is
        # closed now, which wakes a reader blocked on the socket; a generator cannot be.
        close = getattr(source, "close", None)
        if callable(close) and not isinstance(source, GeneratorType):
            close()
        while thread.is_alive():  # unblock a reader waiting for room
            with contextlib.suppress(Empty):
                queue.get_nowait()
            thread.join(0.05)
        if callable(close) and isinstance(source, GeneratorType):
            close()


def _norm(name: str) -> str:
    """Tar member names ("./a/b", "a/b/", ".") as paths relative to the root ("" = root)."""
    path = posixpath.normpath(name.lstrip("/"))
    return "" if path in (".", "") else path.removeprefix("./")


@dataclass
class _Dir:
    node: Node
    children: dict[bytes, Node] = field(default_factory=dict)
    subdirs: list[str] = field(default_factory=list)


def _ns(pax_time: str) -> int:
    """A PAX time ("1704164645.123456789") in nanoseconds, without float rounding."""
    return int(Decimal(pax_time) * 1_000_000_000)


def member_type(member: tarfile.TarInfo) -> str | None:
    """The tree node type of a tar entry (a hard link entry is a FILE); None for other kinds."""
    if member.isdir():
        return DIR
    if member.isreg() or member.islnk():
        return FILE
    if member.issym():
        return SYMLINK
    if member.isfifo():
        return FIFO
    if member.ischr():
        return CHARDEV
    if member.isblk():
        return BLOCKDEV
    return None


def _node(member: tarfile.TarInfo, name: bytes) -> Node | None:
    ntype = member_type(member)
    if ntype is None:
        return None
    pax = member.pax_headers or {}
    node = Node(
        name=name,
        type=ntype,
        mode=member.mode & 0o7777,
        uid=member.uid,
        gid=member.gid,
        mtime_ns=_ns(pax["mtime"]) if "mtime" in pax else int(member.mtime) * 1_000_000_000,
        atime_ns=_ns(pax["atime"]) if "atime" in pax else 0,
        size=member.size if ntype == FILE else 0,
        xattrs=sorted(
            (k[len(_XATTR) :].encode("utf-8", "surrogateescape"), v.encode("utf-8", "surrogateescape"))
            for k, v in pax.items()
            if k.startswith(_XATTR)
        ),
    )
    if ntype == SYMLINK:
        node.target = os.fsencode(member.linkname)
    elif ntype in (CHARDEV, BLOCKDEV):
        node.rdev = os.makedev(member.devmajor, member.devminor)
    return node


class TarArchiver(Archiver):
    """Back up a tar stream; use :meth:`run_tar` instead of :meth:`Archiver.run`."""

    def run_tar(self, chunks: Iterable[bytes], *, name: str) -> BackupResult:
        """Store the tree the tar describes and commit a snapshot; ``name`` is for messages."""
        started = time.monotonic()
        source = self.opts.source or Source("tar", name)
        counters = (self.repo.added_bytes, self.repo.added_raw_bytes, self.repo.added_blobs)
        self.opts.progress.start("backup")
        root_node, tree_id = self._build_tar(chunks, name)
        return self._commit(root_node, tree_id, source, [name], started, counters)

    def build_tree(self, chunks: Iterable[bytes], *, name: str) -> bytes:
        """Store the tree the tar describes (and its contents) without a snapshot; return its id.

        For trees that go into another snapshot (:attr:`Snapshot.extra_trees`). Until a
        snapshot refers to it, it is garbage for ``prune``, like any unfinished backup.
        """
        _root, tree_id = self._build_tar(chunks, name)
        return tree_id

    def _build_tar(self, chunks: Iterable[bytes], name: str) -> tuple[Node, bytes]:
        parent = self.opts.parent
        self._blob_pool = ThreadPoolExecutor(self.opts.workers, thread_name_prefix="ch-blob")
        try:
            with open_stream(prefetch(chunks)) as stream:
                dirs = self._consume(stream, name)
        finally:
            self._blob_pool.shutdown(wait=True)
        if self._error is not None:
            raise self._error
        # The parent's trees only tell whether anything changed, which only skip_if_unchanged asks.
        compare = parent is not None and self.opts.skip_if_unchanged
        parent_tree = self.repo.load_tree(parent.tree) if compare and parent is not None else None
        tree_id = self._save(dirs, "", parent_tree)
        return dirs[""].node, tree_id

    # --- reading the stream -------------------------------------------------------------

    def _consume(self, stream: IO[bytes], name: str) -> dict[str, _Dir]:
        dirs: dict[str, _Dir] = {}
        files: dict[str, Node] = {}
        links: dict[int, list[Node]] = {}
        next_inode = 1
        try:
            tar = tarfile.open(fileobj=stream, mode="r|")  # noqa: SIM115 - closed by the `with` below
        except tarfile.TarError as err:
            raise UsageError(f"{name}: not a tar stream ({err})") from None
        with tar:
            for member in tar:
                if self._error is not None:
                    break
                path = _norm(member.name)
                if path == "":
                    root = _node(member, b"")
                    if root is not None and root.type == DIR:
                        if "" in dirs:
                            dirs[""].node = root
                        else:
                            dirs[""] = _Dir(root)
                    continue
                parent_path, base = posixpath.split(path)
                holder = self._ensure_dir(dirs, parent_path, member)
                bname = os.fsencode(base)
                if member.islnk():
                    target = files.get(_norm(member.linkname))
                    if target is None:
                        self._warn(f"{name}: {path}: hard link to {member.linkname} which is not in the archive")
                        continue
                    link = Node(**{**target.__dict__, "name": bname, "xattrs": list(target.xattrs)})
                    group = links.setdefault(target.inode, [target])
                    group.append(link)
                    for same in group:  # every name of the file carries the same link count
                        same.links = len(group)
                    holder.children[bname] = link
                    self.stats.files += 1
                    self.stats.bytes += link.size
                    continue
                node = _node(member, bname)
                if node is None:
                    self._warn(f"{name}: {path}: unsupported entry type {member.type!r}")
                    continue
                if node.type == DIR:
                    if path in dirs:  # created implicitly by a child that came first
                        dirs[path].node = node
                    else:
                        dirs[path] = _Dir(node)
                        holder.subdirs.append(path)
                    self.stats.dirs += 1
                elif node.type == FILE:
                    node.inode = next_inode
                    next_inode += 1
                    self._read_member(tar, member, node, path)
                    files[path] = node
                    self.stats.files += 1
                    self.stats.bytes += node.size
                    self.stats.files_new += 1
                else:
                    self.stats.others += 1
                holder.children[bname] = node
        if "" not in dirs:
            raise UsageError(f"{name}: the archive is empty")
        return dirs

    def _ensure_dir(self, dirs: dict[str, _Dir], path: str, member: tarfile.TarInfo) -> _Dir:
        found = dirs.get(path)
        if found is not None:
            return found
        # A parent the tar did not list (or lists later): give it the child's owner for now.
        if path:
            grand = self._ensure_dir(dirs, posixpath.dirname(path), member)
            grand.subdirs.append(path)
            name = os.fsencode(posixpath.basename(path))
        else:
            name = b""
        node = Node(name=name, type=DIR, mode=0o755, uid=member.uid, gid=member.gid, mtime_ns=0)
        created = _Dir(node)
        dirs[path] = created
        return created

    def _read_member(self, tar: tarfile.TarFile, member: tarfile.TarInfo, node: Node, path: str) -> None:
        data_file = tar.extractfile(member)
        if data_file is None:
            return
        method = self.repo.config.chunker.choose(member.size, None)
        stored = self._store_content(cast(ChunkSource, data_file), method, member.size)
        if stored is None:  # the backup is failing; the error is raised after the stream
            return
        content, total = stored
        if total != member.size:
            self._warn(f"{path}: archive entry ended early ({total} of {member.size} bytes)")
        node.size = total
        node.content = content
        node.chunking = method
        self.opts.progress.advance(0, 1)

    # --- trees ---------------------------------------------------------------------------

    def _save(self, dirs: dict[str, _Dir], path: str, parent: Tree | None) -> bytes:
        entry = dirs[path]
        previous = {n.name: n for n in parent.nodes} if parent is not None else {}
        for sub in entry.subdirs:
            node = dirs[sub].node
            prev = previous.get(node.name)
            sub_parent = None
            if not self._changed and prev is not None and prev.type == DIR and prev.subtree is not None:
                sub_parent = self.repo.load_tree(prev.subtree)
            node.subtree = self._save(dirs, sub, sub_parent)
            entry.children[node.name] = node
        nodes = [entry.children[k] for k in sorted(entry.children)]
        if not self._changed and (
            len(nodes) != len(previous)
            or any(n.name not in previous or _comparable(n) != _comparable(previous[n.name]) for n in nodes)
        ):
            self._changed = True
        return self.repo.save_tree(Tree(nodes))
