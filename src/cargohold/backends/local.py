"""A backend on a local directory (also any mounted file system).

Durability: an object is written to a temporary file in its final directory, fsync'd,
renamed over the final name and then the directory is fsync'd, so after ``store``
returns the object survives a power loss and a reader never sees a partial object.
Temporary names contain ``~``, which no valid object name may contain, so ``list``
never shows them. Each names its writer (pid, process start time, digests of the host
name and PID namespace: :func:`cargohold.backends.leftovers.writer_tag`), so that the
leftovers of a killed writer can be told from the files of a running one:
:meth:`LocalBackend.leftovers` lists them, :meth:`LocalBackend.remove_leftover`
removes one (``cargohold prune`` does, for writers that are surely gone).
"""

from __future__ import annotations

import contextlib
import errno
import os
from collections.abc import Iterator
from pathlib import Path
from stat import S_ISREG

from cargohold.backends.base import Leftover, ObjectInfo, check_name
from cargohold.backends.leftovers import TMP_MARK, temp_leftover, temp_name, temp_path_parts
from cargohold.errors import BackendError, BackendIOError, ObjectExists, ObjectNotFound, UsageError

_TRANSIENT = {errno.EAGAIN, errno.EINTR, errno.EBUSY, errno.ETIMEDOUT}
_NOT_FOUND = {errno.ENOENT, errno.ENOTDIR, errno.EISDIR}
#: A directory's entries (an alias: ``list`` is a method of the backend).
_Entries = list[os.DirEntry[str]]


def translate_oserror(err: OSError, what: str) -> BackendError:
    """Map an OSError of a file operation on ``what`` to the backend error tree."""
    code = err.errno
    reason = err.strerror or str(err)
    if code in _NOT_FOUND:
        return ObjectNotFound(f"{what} does not exist")
    if code in (errno.EACCES, errno.EPERM):
        return BackendIOError(
            f"permission denied on {what}",
            hint="check the owner and mode of the repository directory, or run as its owner",
        )
    if code == errno.EROFS:
        return BackendIOError(f"cannot write {what}: read-only file system")
    if code in (errno.ENOSPC, errno.EDQUOT):
        return BackendIOError(f"no space left writing {what}", hint="free space or use another repository")
    if code == errno.EIO:
        return BackendIOError(f"I/O error on {what}", hint="the disk may be failing; check the kernel log (dmesg)")
    return BackendIOError(f"{what}: {reason}", transient=code in _TRANSIENT)


def _write_error(err: OSError, name: str, url: str) -> BackendError:
    """Like :func:`translate_oserror`, for writes: a missing or clashing path is no "not found"."""
    if err.errno in (errno.EISDIR, errno.ENOTDIR, errno.EEXIST):
        return BackendIOError(
            f"cannot write object {name!r} in {url}: the name or one of its folders clashes with an existing "
            "object or folder"
        )
    if err.errno == errno.ENOENT:  # a folder vanished under us
        return BackendIOError(f"cannot write object {name!r} in {url}: its folder vanished", transient=True)
    return translate_oserror(err, f"object {name!r} in {url}")


def _fsync_dir(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY | os.O_DIRECTORY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def _write_all(fd: int, data: bytes | bytearray | memoryview) -> None:
    view = memoryview(data)
    while view:
        written = os.write(fd, view)
        view = view[written:]


class LocalBackend:
    """Objects are files under ``root``; ``a/b/c`` is the file ``root/a/b/c``."""

    def __init__(self, root: Path) -> None:
        self.root = Path(root).expanduser().absolute()
        self.url = self.root.as_uri()

    def __repr__(self) -> str:
        return f"LocalBackend({str(self.root)!r})"

    # --- helpers ---------------------------------------------------------------

    def _path(self, name: str) -> Path:
        return self.root / check_name(name)

    def _ensure_dir(self, directory: Path) -> None:
        """Create ``directory`` and missing parents, fsyncing each new entry's parent."""
        if directory.is_dir():
            return
        missing: list[Path] = []
        cur = directory
        while not cur.is_dir():
            missing.append(cur)
            if cur.parent == cur:
                break
            cur = cur.parent
        for d in reversed(missing):
            try:
                os.mkdir(d)
            except FileExistsError:
                continue
            _fsync_dir(d.parent)

    def _write_temp(self, path: Path, data: bytes | bytearray | memoryview) -> Path:
        """Write ``data`` to a new fsync'd temporary file next to ``path``."""
        self._ensure_dir(path.parent)
        tmp = path.parent / temp_name(path.name)
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_CLOEXEC, 0o600)
        try:
            _write_all(fd, data)
            os.fsync(fd)
        except BaseException:
            os.close(fd)
            with contextlib.suppress(OSError):
                os.unlink(tmp)
            raise
        os.close(fd)
        return tmp

    def stage(self, folder: str) -> StagedObject:
        """A new temporary file in ``folder`` for an object whose name is known only once it
        is written (a pack is named by the hash of its bytes): write it piece by piece, then
        :meth:`StagedObject.commit` publishes it as durably as :meth:`store`. Nothing of it
        is held in memory; until the commit it is an ignored temporary file."""
        directory = self.root / check_name(folder)
        try:
            self._ensure_dir(directory)
            # The tag starts with the pid, so the process that started a killed writer can
            # remove what it left (`.staged~tmp~PID-*`); the rest lets prune judge it later.
            tmp = directory / temp_name("staged")
            fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_CLOEXEC, 0o600)
        except OSError as err:
            raise _write_error(err, folder, self.url) from err
        return StagedObject(self, tmp, fd)

    # --- Backend protocol ------------------------------------------------------

    def load(self, name: str, offset: int = 0, length: int | None = None) -> bytes:
        if offset < 0 or (length is not None and length < 0):
            raise UsageError(f"invalid range offset={offset} length={length} for {name!r}")
        path = self._path(name)
        try:
            with open(path, "rb", buffering=0) as f:
                if offset:
                    f.seek(offset)
                if length is None:
                    return f.readall()
                chunks: list[bytes] = []
                remaining = length
                while remaining > 0:
                    chunk = f.read(remaining)
                    if not chunk:
                        break
                    chunks.append(chunk)
                    remaining -= len(chunk)
                return b"".join(chunks)
        except OSError as err:
            raise translate_oserror(err, f"object {name!r} in {self.url}") from err

    def store(self, name: str, data: bytes | bytearray) -> None:
        path = self._path(name)
        try:
            tmp = self._write_temp(path, data)
        except OSError as err:
            raise _write_error(err, name, self.url) from err
        self._publish(tmp, name)

    def _publish(self, tmp: Path, name: str) -> None:
        """Rename the fsync'd temporary file ``tmp`` to the object ``name`` (whose folder
        exists) and fsync the folder."""
        path = self._path(name)
        try:
            try:
                os.replace(tmp, path)
            except BaseException:
                with contextlib.suppress(OSError):
                    os.unlink(tmp)
                raise
            _fsync_dir(path.parent)
        except OSError as err:
            raise _write_error(err, name, self.url) from err

    def create(self, name: str, data: bytes) -> None:
        # Crash safety: the content is written and fsync'd under a temporary name
        # first; os.link() then publishes it under the final name only if that name
        # is free (link(2) fails with EEXIST atomically, also on NFS). So the final
        # name, once visible, always points to complete, durable content; a crash
        # before the link leaves only an ignored temporary file, a crash after it
        # leaves the complete object. O_EXCL + write would instead show a partial
        # object to a concurrent reader (or after a crash). File systems without
        # hard links (EPERM/ENOTSUP, e.g. some FUSE mounts) fall back to O_EXCL.
        path = self._path(name)
        try:
            tmp = self._write_temp(path, data)
            try:
                os.link(tmp, path)
            except FileExistsError:
                raise ObjectExists(f"object {name!r} already exists in {self.url}") from None
            except OSError as err:
                if err.errno not in (errno.EPERM, errno.ENOTSUP, errno.EOPNOTSUPP, errno.EMLINK):
                    raise
                self._create_exclusive(path, name, data)
            finally:
                with contextlib.suppress(OSError):
                    os.unlink(tmp)
            _fsync_dir(path.parent)
        except OSError as err:
            raise _write_error(err, name, self.url) from err

    def _create_exclusive(self, path: Path, name: str, data: bytes) -> None:
        try:
            fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_CLOEXEC, 0o600)
        except FileExistsError:
            raise ObjectExists(f"object {name!r} already exists in {self.url}") from None
        try:
            _write_all(fd, data)
            os.fsync(fd)
        finally:
            os.close(fd)

    def delete(self, name: str) -> None:
        path = self._path(name)
        try:
            os.unlink(path)
            _fsync_dir(path.parent)
        except OSError as err:
            raise translate_oserror(err, f"object {name!r} in {self.url}") from err

    def list(self, prefix: str = "") -> Iterator[ObjectInfo]:
        # Walk only the deepest directory the prefix names; filter the rest by string.
        # Symbolic links are followed (a user may put data/ on another disk); a set of
        # visited directories guards against loops.
        base = prefix.rsplit("/", 1)[0] + "/" if "/" in prefix else ""
        if base:
            check_name(base.rstrip("/"))
        start = self.root / base if base else self.root
        yield from self._walk(start, base, prefix, set())

    def _entries(self, directory: Path, rel: str, seen: set[tuple[int, int]]) -> _Entries:
        """The entries of ``directory`` (``rel`` in the store) by name; none when it is gone or
        was ``seen`` already (a symbolic link loop)."""
        try:
            st = os.stat(directory)
            if (st.st_dev, st.st_ino) in seen:
                return []
            seen.add((st.st_dev, st.st_ino))
            with os.scandir(directory) as it:
                return sorted(it, key=lambda e: e.name)
        except OSError as err:
            if err.errno in _NOT_FOUND:
                return []
            raise translate_oserror(err, f"directory {rel or '.'!r} in {self.url}") from err

    def _walk(self, directory: Path, rel: str, prefix: str, seen: set[tuple[int, int]]) -> Iterator[ObjectInfo]:
        for entry in self._entries(directory, rel, seen):
            if TMP_MARK in entry.name:
                continue
            name = rel + entry.name
            try:
                if entry.is_dir():
                    sub = name + "/"
                    if sub.startswith(prefix) or prefix.startswith(sub):
                        yield from self._walk(Path(entry.path), sub, prefix, seen)
                    continue
                if not name.startswith(prefix) or not entry.is_file():
                    continue
                size = entry.stat().st_size
            except FileNotFoundError:
                continue  # removed while we listed (or a dangling link)
            except OSError as err:
                raise translate_oserror(err, f"object {name!r} in {self.url}") from err
            yield ObjectInfo(name, size)

    def stat(self, name: str) -> ObjectInfo:
        path = self._path(name)
        try:
            st = os.stat(path)
        except OSError as err:
            raise translate_oserror(err, f"object {name!r} in {self.url}") from err
        if not S_ISREG(st.st_mode):
            raise ObjectNotFound(f"object {name!r} does not exist in {self.url}")
        return ObjectInfo(name, st.st_size)

    def close(self) -> None:
        return None

    # --- leftovers (HasLeftovers) ------------------------------------------------

    def leftovers(self) -> Iterator[Leftover]:
        """Temporary files anywhere under the root: of interrupted writes, or of running ones
        (the caller judges which by :attr:`Leftover.writer` and age)."""
        yield from self._walk_leftovers(self.root, "", set())

    def _walk_leftovers(self, directory: Path, rel: str, seen: set[tuple[int, int]]) -> Iterator[Leftover]:
        for entry in self._entries(directory, rel, seen):
            try:
                if TMP_MARK not in entry.name:
                    if entry.is_dir():
                        yield from self._walk_leftovers(Path(entry.path), rel + entry.name + "/", seen)
                    continue
                if entry.is_symlink() or not entry.is_file():
                    continue
                est = entry.stat(follow_symlinks=False)
            except FileNotFoundError:
                continue  # committed or removed while we listed
            except OSError as err:
                raise translate_oserror(err, f"file {rel + entry.name!r} in {self.url}") from err
            yield temp_leftover(rel + entry.name, est.st_size, est.st_mtime)

    def remove_leftover(self, leftover: Leftover) -> bool:
        """Unlink the temporary file, unless it changed since it was listed."""
        path = self.root.joinpath(*temp_path_parts(leftover, self.url))
        try:
            st = os.lstat(path)
            if not S_ISREG(st.st_mode) or st.st_size != leftover.size or st.st_mtime != leftover.modified:
                return False
            os.unlink(path)
        except FileNotFoundError:
            return False
        except OSError as err:
            raise translate_oserror(err, f"file {leftover.name!r} in {self.url}") from err
        return True


class StagedObject:
    """An object being written to a temporary file of a :class:`LocalBackend`."""

    def __init__(self, backend: LocalBackend, tmp: Path, fd: int) -> None:
        self._backend = backend
        self._tmp = tmp
        self._fd: int | None = fd

    def write(self, data: bytes | memoryview) -> None:
        assert self._fd is not None, "the staged object is closed"
        try:
            _write_all(self._fd, data)
        except OSError as err:
            self.abort()
            raise _write_error(err, self._tmp.name, self._backend.url) from err

    def commit(self, name: str) -> None:
        """fsync the file, rename it to ``name`` and fsync the folder."""
        assert self._fd is not None, "the staged object is closed"
        fd, self._fd = self._fd, None
        try:
            try:
                os.fsync(fd)
            finally:
                os.close(fd)
            self._backend._ensure_dir(self._backend._path(name).parent)
        except OSError as err:
            with contextlib.suppress(OSError):
                os.unlink(self._tmp)
            raise _write_error(err, name, self._backend.url) from err
        self._backend._publish(self._tmp, name)

    def abort(self) -> None:
        """Drop what was written (idempotent)."""
        fd, self._fd = self._fd, None
        if fd is not None:
            with contextlib.suppress(OSError):
                os.close(fd)
            with contextlib.suppress(OSError):
                os.unlink(self._tmp)
