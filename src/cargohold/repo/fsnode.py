"""Between the file system and tree nodes: read metadata for a node, apply it on restore."""

from __future__ import annotations

import errno
import os
import socket
import stat

from cargohold.repo.tree import BLOCKDEV, CHARDEV, DIR, FIFO, FILE, SOCKET, SYMLINK, Node


def node_type(mode: int) -> str | None:
    if stat.S_ISREG(mode):
        return FILE
    if stat.S_ISDIR(mode):
        return DIR
    if stat.S_ISLNK(mode):
        return SYMLINK
    if stat.S_ISFIFO(mode):
        return FIFO
    if stat.S_ISSOCK(mode):
        return SOCKET
    if stat.S_ISCHR(mode):
        return CHARDEV
    if stat.S_ISBLK(mode):
        return BLOCKDEV
    return None


def read_xattrs(path: bytes) -> list[tuple[bytes, bytes]]:
    try:
        names = os.listxattr(path, follow_symlinks=False)
    except OSError:
        return []
    out = []
    for name in sorted(names):
        try:
            value = os.getxattr(path, name, follow_symlinks=False)
        except OSError:
            continue
        out.append((os.fsencode(name), value))
    return out


def node_from_stat(path: bytes, name: bytes, st: os.stat_result, *, like: Node | None = None) -> Node | None:
    """A node with the metadata of ``st`` (content and subtree are filled in by the caller).

    ``like``: the same entry in the parent snapshot, known unchanged since (same ctime and
    inode): its xattrs and symlink target are reused instead of read again.
    """
    ntype = node_type(st.st_mode)
    if ntype is None:
        return None
    node = Node(
        name=name,
        type=ntype,
        mode=stat.S_IMODE(st.st_mode),
        uid=st.st_uid,
        gid=st.st_gid,
        mtime_ns=st.st_mtime_ns,
        atime_ns=st.st_atime_ns,
        ctime_ns=st.st_ctime_ns,
        inode=st.st_ino,
        device=st.st_dev,
        links=st.st_nlink,
        size=st.st_size if ntype == FILE else 0,
        xattrs=like.xattrs if like is not None and like.type == ntype else read_xattrs(path),
    )
    if ntype == SYMLINK:
        node.target = like.target if like is not None and like.type == SYMLINK else os.readlink(path)
    elif ntype in (CHARDEV, BLOCKDEV):
        node.rdev = st.st_rdev
    return node


def apply_metadata(path: bytes, node: Node, *, owners: bool) -> list[str]:
    """Owner, mode, xattrs and times of ``node`` onto ``path``; returns warnings."""
    warnings: list[str] = []
    is_link = node.type == SYMLINK
    if owners:
        try:
            os.chown(path, node.uid, node.gid, follow_symlinks=False)
        except OSError as err:
            warnings.append(f"{os.fsdecode(path)}: cannot set owner: {err.strerror}")
    if not is_link:
        try:
            os.chmod(path, node.mode)
        except OSError as err:
            warnings.append(f"{os.fsdecode(path)}: cannot set mode: {err.strerror}")
    for k, v in node.xattrs:
        try:
            os.setxattr(path, k, v, follow_symlinks=False)
        except OSError as err:
            if err.errno not in (errno.ENOTSUP, errno.EPERM) or not is_link:
                warnings.append(f"{os.fsdecode(path)}: cannot set xattr {os.fsdecode(k)}: {err.strerror}")
    try:
        os.utime(path, ns=(node.atime_ns, node.mtime_ns), follow_symlinks=False)
    except OSError as err:
        warnings.append(f"{os.fsdecode(path)}: cannot set times: {err.strerror}")
    return warnings


#: Longest path a unix socket can be bound at (``sun_path`` is 108 bytes with its NUL).
SUN_PATH_MAX = 107


def make_socket(path: bytes) -> None:
    """A unix socket file at ``path``, like one a server leaves: bound, then closed (nothing
    listens; the server that owns it rebinds it when it starts). Paths longer than
    ``sun_path`` holds are bound under a short name in the same directory, reached through
    ``/proc/self/fd`` (no ``chdir``: the restore has threads), then linked into place. An
    existing entry at ``path`` is never replaced (``OSError``, as for any other failure)."""
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    try:
        if len(path) <= SUN_PATH_MAX:
            sock.bind(path)
            return
        parent, _, name = path.rpartition(b"/")
        dirfd = os.open(parent or b"/", os.O_PATH | os.O_DIRECTORY | os.O_CLOEXEC)
        try:
            tmp = b".cargohold-socket-%d-%s" % (os.getpid(), os.urandom(6).hex().encode())
            sock.bind(b"/proc/self/fd/%d/%s" % (dirfd, tmp))
            try:
                os.link(tmp, name, src_dir_fd=dirfd, dst_dir_fd=dirfd)  # unlike rename, never replaces
            finally:
                os.unlink(tmp, dir_fd=dirfd)
        finally:
            os.close(dirfd)
    finally:
        sock.close()
