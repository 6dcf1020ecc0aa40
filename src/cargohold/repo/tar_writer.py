"""A snapshot as a tar stream — for restores through the Docker Engine archive API.

``PUT /containers/{id}/archive`` extracts a tar into a container's mounts. :func:`snapshot_tar`
yields one, generated on the fly in bounded memory: POSIX (PAX) headers so names of any
length, nanosecond modification times, numeric owners and extended attributes
(``SCHILY.xattr.*``) survive; hard links as link entries; sparse files with their holes
written as zeros (the archive format Docker reads has no holes). File contents are fetched
and decoded a few blobs ahead by worker threads.
"""

from __future__ import annotations

import os
import tarfile
from collections import deque
from collections.abc import Iterator
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass, field

from cargohold.errors import IntegrityError, UsageError
from cargohold.repo.format import BlobType
from cargohold.repo.repository import Repository
from cargohold.repo.restorer import split_path
from cargohold.repo.snapshot import Snapshot
from cargohold.repo.tree import BLOCKDEV, CHARDEV, DIR, FIFO, FILE, SOCKET, SYMLINK, Node

BLOCK = tarfile.BLOCKSIZE
_TYPES = {
    DIR: tarfile.DIRTYPE,
    FILE: tarfile.REGTYPE,
    SYMLINK: tarfile.SYMTYPE,
    FIFO: tarfile.FIFOTYPE,
    CHARDEV: tarfile.CHRTYPE,
    BLOCKDEV: tarfile.BLKTYPE,
}
#: Blobs fetched ahead of the one being written.
LOOKAHEAD = 8


@dataclass
class TarStats:
    files: int = 0
    dirs: int = 0
    others: int = 0
    bytes: int = 0
    skipped: int = 0
    #: Entries the tar could not carry (unix sockets): (name in the tar, why).
    left_out: list[tuple[str, str]] = field(default_factory=list)

    def warnings(self, prefix: str) -> list[str]:
        """One warning per entry left out, named by its path in the snapshot."""
        return [f"{name.removeprefix(prefix).lstrip('/') or '/'}: {why}" for name, why in self.left_out]


def tar_header(node: Node, path: str) -> tarfile.TarInfo:
    info = tarfile.TarInfo(path)
    info.type = _TYPES[node.type]
    info.mode = node.mode
    info.uid, info.gid = node.uid, node.gid
    info.uname = info.gname = ""
    seconds, ns = divmod(node.mtime_ns, 1_000_000_000)
    info.mtime = seconds
    pax = {"mtime": f"{seconds}.{ns:09d}"}
    for key, value in node.xattrs:
        pax["SCHILY.xattr." + key.decode("utf-8", "surrogateescape")] = value.decode("utf-8", "surrogateescape")
    info.pax_headers = pax
    if node.type == FILE:
        info.size = node.size
    elif node.type == SYMLINK and node.target is not None:
        info.linkname = os.fsdecode(node.target)
    elif node.type in (CHARDEV, BLOCKDEV) and node.rdev is not None:
        info.devmajor, info.devminor = os.major(node.rdev), os.minor(node.rdev)
    return info


def encode_header(info: tarfile.TarInfo) -> bytes:
    return info.tobuf(tarfile.PAX_FORMAT, "utf-8", "surrogateescape")


class Content:
    """The decoded chunks of files, fetched ``LOOKAHEAD`` blobs ahead by a thread pool."""

    def __init__(self, repo: Repository, pool: ThreadPoolExecutor) -> None:
        self.repo = repo
        self.pool = pool

    def chunks(self, ids: list[bytes]) -> Iterator[bytes]:
        pending: deque[Future[bytes]] = deque()
        it = iter(ids)
        for bid in it:
            pending.append(self.pool.submit(self.repo.load_blob, BlobType.DATA, bid))
            if len(pending) >= LOOKAHEAD:
                break
        while pending:
            data = pending.popleft().result()
            nxt = next(it, None)
            if nxt is not None:
                pending.append(self.pool.submit(self.repo.load_blob, BlobType.DATA, nxt))
            yield data


def file_body(node: Node, content: Content) -> Iterator[bytes]:
    """The file's bytes in order: data regions from the chunks, zeros for holes."""
    if node.extents is None:
        yield from content.chunks(node.content)
        return
    pos = 0
    chunks = content.chunks(node.content)
    carry = b""
    for start, length in node.extents:
        if start > pos:
            gap = start - pos
            while gap:
                n = min(gap, 1 << 20)
                yield bytes(n)
                gap -= n
        need = length
        while need:
            if not carry:
                carry = next(chunks)
            piece, carry = carry[:need], carry[need:]
            need -= len(piece)
            yield piece
        pos = start + length
    if node.size > pos:
        rest = node.size - pos
        while rest:
            n = min(rest, 1 << 20)
            yield bytes(n)
            rest -= n


def snapshot_tar(
    repo: Repository,
    snapshot: Snapshot,
    *,
    prefix: str = ".",
    include: str | None = None,
    stats: TarStats | None = None,
    workers: int = 2,
) -> Iterator[bytes]:
    """The snapshot's tree as a tar stream; entries are named ``PREFIX/…`` (root = ``PREFIX``).

    ``include`` (a path in the snapshot) limits it to that file or directory; the
    directories leading to it are included, the root's own metadata is not.
    """
    stats = stats if stats is not None else TarStats()
    links: dict[tuple[int, int], str] = {}
    wanted = split_path(include) if include else ()
    if wanted:
        _check_include(repo, snapshot, wanted, include or "")
    with ThreadPoolExecutor(workers, thread_name_prefix="ch-tar") as pool:
        content = Content(repo, pool)
        if snapshot.root is not None and not wanted:
            root = Node(**{**snapshot.root.__dict__, "name": b""})
            yield encode_header(tar_header(root, prefix))
        yield from walk_tree(repo, snapshot.tree, prefix, content, links, stats, wanted)
    yield bytes(2 * BLOCK)


def _check_include(repo: Repository, snapshot: Snapshot, wanted: tuple[bytes, ...], include: str) -> None:
    if repo.node_at(snapshot.tree, wanted) is None:
        raise UsageError(f"--path {include}: no such path in snapshot {snapshot.short_id}")


def walk_tree(
    repo: Repository,
    tree_id: bytes,
    path: str,
    content: Content,
    links: dict[tuple[int, int], str],
    stats: TarStats,
    wanted: tuple[bytes, ...] = (),
) -> Iterator[bytes]:
    for node in repo.load_tree(tree_id).nodes:
        if wanted and node.name != wanted[0]:
            continue
        rest = wanted[1:]
        name = f"{path}/{os.fsdecode(node.name)}"
        if node.type not in _TYPES:  # a tar cannot hold a socket: said per file, never silently
            stats.skipped += 1
            kind = "a unix socket" if node.type == SOCKET else f"a {node.type}"
            stats.left_out.append(
                (name, f"{kind}, not restored: a tar cannot carry it (its server recreates it when it starts)")
            )
            continue
        if node.type == FILE and node.links > 1 and node.inode:
            key = (node.device, node.inode)
            first = links.get(key)
            if first is not None:
                info = tar_header(node, name)
                info.type, info.linkname, info.size = tarfile.LNKTYPE, first, 0
                yield encode_header(info)
                stats.files += 1
                continue
            links[key] = name
        yield encode_header(tar_header(node, name))
        if node.type == FILE:
            stats.files += 1
            written = 0
            for data in file_body(node, content):
                written += len(data)
                yield data
            if written != node.size:
                raise IntegrityError(f"{name}: snapshot content is {written} bytes, the tree says {node.size}")
            stats.bytes += written
            if written % BLOCK:
                yield bytes(BLOCK - written % BLOCK)
        elif node.type == DIR:
            stats.dirs += 1
            if node.subtree is not None:
                yield from walk_tree(repo, node.subtree, name, content, links, stats, rest)
        else:
            stats.others += 1


def directory_tar(root: str | os.PathLike[str], *, chunk: int = 1 << 20) -> Iterator[bytes]:
    """A local directory of plain files and folders (a dump spool) as a tar stream, in bounded memory."""
    base = os.fspath(root)
    for dirpath, dirnames, filenames in os.walk(base):
        dirnames.sort()
        rel_dir = os.path.relpath(dirpath, base)
        prefix = "." if rel_dir == "." else f"./{rel_dir}"
        for name in [None, *sorted(filenames)]:
            full = dirpath if name is None else os.path.join(dirpath, name)
            info = tarfile.TarInfo(prefix if name is None else f"{prefix}/{name}")
            st = os.lstat(full)
            info.mode, info.uid, info.gid, info.mtime = st.st_mode & 0o7777, st.st_uid, st.st_gid, int(st.st_mtime)
            if name is None:
                info.type = tarfile.DIRTYPE
                yield encode_header(info)
                continue
            info.size = st.st_size
            yield encode_header(info)
            written = 0
            with open(full, "rb") as f:
                while written < info.size and (piece := f.read(min(chunk, info.size - written))):
                    written += len(piece)
                    yield piece
            if written != info.size:
                raise UsageError(f"{full} changed size while it was archived")
            if written % BLOCK:
                yield bytes(BLOCK - written % BLOCK)
    yield bytes(2 * BLOCK)
