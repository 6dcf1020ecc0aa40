"""A backend on an SFTP server: ``sftp://[USER@]HOST[:PORT]/PATH[?OPTIONS]``.

``HOST`` may be a Host alias of the ssh config; PATH is absolute (``/srv/repo``), or
relative to the login directory when it starts with ``~`` (``sftp://host/~/repo``).
Options (in the query string; no secrets there, the URL alone reopens the store):

* ``ssh_config=PATH`` — the ssh config file to read (default ``~/.ssh/config``; ``none``);
* ``connections=N`` — how many SSH connections the backend opens at most (default 4);
* ``timeout=SECONDS`` — for connecting and for every request (default 30).

The connection (ssh config, agent, strict known_hosts) is :mod:`cargohold.backends._ssh`;
the SFTP channel on it and the pool of them, :mod:`cargohold.backends._sftp_session`.

**Writes.** ``store`` writes a temporary file in the object's folder (``.NAME~tmp~TAG``,
TAG naming the writer like :class:`~cargohold.backends.local.LocalBackend`'s), fsyncs it
(``fsync@openssh.com``), renames it over the object (``posix-rename@openssh.com``, atomic)
and fsyncs the folder (a directory opened read-only, then ``fsync@openssh.com``: OpenSSH
allows it). ``create`` writes and fsyncs a complete temporary file and publishes it with
``hardlink@openssh.com``, which fails when the name is taken: a reader never sees a
half-written lock, and of racing creators exactly one wins. Servers without these
extensions get the SFTP v3 fallbacks: ``rename`` (which must not replace an existing
name) for ``create``, remove-then-rename for ``store`` (the object is missing for a
moment), no fsync. Folders (``data/xx/``) are created on demand.

**Errors.** No such file → ObjectNotFound; a lost or stalled connection →
``BackendIOError(transient=True)`` (the connection is dropped; the next call opens a new
one); permission denied, a refused login or an unknown host key → a non-transient error
that says what to check.

**Threads.** Calls may come from several threads: each takes one of at most
:attr:`SFTPBackend.connections` SSH connections (one SFTP channel each) from a pool, opened
on demand; requests are pipelined within a call (reads and writes of up to 128 KiB, as
``limits@openssh.com`` allows, 32 in flight).
"""

from __future__ import annotations

import contextlib
import os
import stat as stat_mod
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import TypeVar
from urllib.parse import parse_qsl, unquote, urlsplit

import paramiko
from paramiko.sftp_attr import SFTPAttributes

from cargohold.backends._sftp_session import NoSFTP, Pool, Session, SFTPStatusError
from cargohold.backends._ssh import DEFAULT_TIMEOUT, SSHEnv, Target, connect, resolve
from cargohold.backends.base import Leftover, ObjectInfo, check_name
from cargohold.backends.leftovers import TMP_MARK, temp_leftover, temp_name, temp_path_parts
from cargohold.errors import BackendError, BackendIOError, ObjectExists, ObjectNotFound, UsageError

__all__ = ["DEFAULT_CONNECTIONS", "SFTPBackend", "SFTPLocation", "SFTPStatusError", "open_url", "parse_url"]

DEFAULT_CONNECTIONS = 4
_OPTIONS = {"ssh_config", "connections", "timeout"}
#: Folder levels a listing descends at most (the repository's names have 3).
_MAX_DEPTH = 16

T = TypeVar("T")
#: (name, attributes) of what a folder walk found (an alias: ``list`` is a method of the backend).
_Entries = list[tuple[str, SFTPAttributes]]


# --- URL -------------------------------------------------------------------------------------


@dataclass(frozen=True)
class SFTPLocation:
    host: str
    user: str | None
    port: int | None
    #: The repository's folder on the server: absolute, or relative to the login directory.
    path: str
    ssh_config: str | None
    connections: int
    timeout: float


def parse_url(url: str) -> SFTPLocation:
    parts = urlsplit(url)
    if parts.scheme.lower() != "sftp" or not parts.hostname:
        raise UsageError(f"not an SFTP URL: {url!r}", hint="use sftp://[USER@]HOST[:PORT]/PATH")
    try:
        port = parts.port
    except ValueError:
        raise UsageError(f"bad port in {url!r}") from None
    path = unquote(parts.path)
    if path.startswith("/~"):
        path = path[2:].lstrip("/")  # relative to the login directory
    elif not path.startswith("/") or path == "/":
        raise UsageError(
            f"SFTP URL {url!r} needs the repository's path",
            hint="use sftp://HOST/absolute/path, or sftp://HOST/~/path for a path in the login directory",
        )
    path = path.rstrip("/")
    if any(seg in (".", "..") for seg in path.split("/")):
        raise UsageError(f"SFTP URL {url!r}: '.' and '..' are not allowed in the path")
    query = dict(parse_qsl(parts.query, keep_blank_values=True))
    unknown = sorted(set(query) - _OPTIONS)
    if unknown:
        raise UsageError(
            f"unknown option(s) {', '.join(unknown)} in SFTP URL {url!r}",
            hint=f"known: {', '.join(sorted(_OPTIONS))}",
        )
    try:
        connections = int(query.get("connections", DEFAULT_CONNECTIONS))
        timeout = float(query.get("timeout", DEFAULT_TIMEOUT))
    except ValueError:
        raise UsageError(f"SFTP URL {url!r}: connections must be a whole number, timeout a number of seconds") from None
    if connections < 1 or timeout <= 0:
        raise UsageError(f"SFTP URL {url!r}: connections must be >= 1 and timeout > 0")
    return SFTPLocation(
        host=parts.hostname,
        user=unquote(parts.username) if parts.username else None,
        port=port,
        path=path,
        ssh_config=query.get("ssh_config"),
        connections=connections,
        timeout=timeout,
    )


def open_url(url: str) -> SFTPBackend:
    """The backend ``url`` names, with the ssh setup of this process's environment."""
    loc = parse_url(url)
    env = SSHEnv.from_environ(os.environ, config_file=loc.ssh_config)
    return SFTPBackend(url, env=env)


# --- the backend -----------------------------------------------------------------------------


class SFTPBackend:
    """Objects are files under a folder of an SFTP server; ``a/b/c`` is ``PATH/a/b/c``."""

    def __init__(self, url: str, *, env: SSHEnv) -> None:
        loc = parse_url(url)
        self.url = url
        self._loc = loc
        self._env = env
        self._root = loc.path
        #: How many connections this backend opens at most (the repository's threads share them).
        self.connections: int = loc.connections
        self.timeout = loc.timeout
        self._target: Target | None = None
        self._dir_fsync = True
        self._pool = Pool(self._open_session, self.connections)

    def __repr__(self) -> str:
        return f"SFTPBackend({self.url!r})"

    # -- connections

    def _resolve(self) -> Target:
        if self._target is None:
            self._target = resolve(
                self._loc.host, env=self._env, user=self._loc.user, port=self._loc.port, timeout=self.timeout
            )
        return self._target

    def _open_session(self) -> Session:
        target = self._resolve()
        conn = connect(target, self._env, timeout=self.timeout)
        try:
            return Session(conn, self.timeout)
        except (NoSFTP, paramiko.SFTPError) as err:
            conn.close()
            raise BackendIOError(
                f"{target.where} offers no SFTP service: {err}",
                hint="enable the sftp subsystem in the server's sshd_config (Subsystem sftp internal-sftp)",
            ) from err
        except (OSError, paramiko.SSHException, EOFError) as err:
            conn.close()
            raise self._lost(err, "opening the SFTP channel") from err
        except BaseException:
            conn.close()
            raise

    def _lost(self, err: BaseException, what: str) -> BackendIOError:
        target = self._resolve()
        reason = "timed out" if isinstance(err, TimeoutError) else (str(err).strip().rstrip(":") or type(err).__name__)
        return BackendIOError(
            f"the SFTP connection to {target.where} was lost ({what}): {reason}",
            hint="check the network and the server; a retry reconnects",
            transient=True,
        )

    def _call(self, what: str, fn: Callable[[Session], T], *, missing: Callable[[], BackendError] | None = None) -> T:
        """Run ``fn`` on a pooled session, translating errors; ``missing`` builds the error of a
        "no such file" answer (ObjectNotFound by default)."""
        try:
            with self._pool.session() as s:
                return fn(s)
        except BackendError:
            raise
        except FileNotFoundError as err:
            raise (missing() if missing else ObjectNotFound(f"{what} does not exist in {self.url}")) from err
        except PermissionError as err:
            raise BackendIOError(
                f"permission denied on {what} in {self.url}",
                hint=f"check the owner and mode of the repository folder on the server "
                f"(logged in as {self._resolve().user})",
            ) from err
        except SFTPStatusError as err:  # another answer of the server: the channel is in step
            raise BackendIOError(f"{what} in {self.url}: the server says {err}") from err
        except (OSError, EOFError, paramiko.SSHException) as err:  # the connection failed
            raise self._lost(err, what) from err

    def _path(self, name: str) -> str:
        check_name(name)
        return f"{self._root}/{name}" if self._root else name

    def _dir_of(self, path: str) -> str:
        return path.rsplit("/", 1)[0] if "/" in path else ""

    def _temp(self, path: str) -> str:
        folder, _, base = path.rpartition("/")
        tmp = temp_name(base)
        return f"{folder}/{tmp}" if folder else tmp

    def _write_temp(self, s: Session, path: str, data: memoryview) -> tuple[str, bytes]:
        """A new temporary file beside ``path`` holding ``data`` (folders made on demand): its
        name and open handle."""
        tmp = self._temp(path)
        try:
            return tmp, s.write_file(tmp, data)
        except FileNotFoundError:
            s.makedirs(self._dir_of(path))
            return tmp, s.write_file(tmp, data)

    def _publish(self, s: Session, written: tuple[str, bytes], path: str, *, replace: bool) -> None:
        tmp, handle = written
        folder = self._dir_of(path) if self._dir_fsync else None
        if not s.publish(handle, tmp, path, replace=replace, folder=folder) and folder is not None:
            self._dir_fsync = False  # the server cannot fsync folders: stop asking

    # -- Backend protocol

    def load(self, name: str, offset: int = 0, length: int | None = None) -> bytes:
        if offset < 0 or (length is not None and length < 0):
            raise UsageError(f"invalid range offset={offset} length={length} for {name!r}")
        path = self._path(name)
        return self._call(f"object {name!r}", lambda s: s.read_file(path, offset, length))

    def store(self, name: str, data: bytes | bytearray) -> None:
        path = self._path(name)
        view = memoryview(data).cast("B")

        def run(s: Session) -> None:
            written = self._write_temp(s, path, view)
            try:
                self._publish(s, written, path, replace=True)
            except BaseException:
                with contextlib.suppress(Exception):
                    s.remove_async(written[0])
                raise

        self._call(f"object {name!r}", run, missing=lambda: self._vanished(name))

    def _vanished(self, name: str) -> BackendError:
        return BackendIOError(f"cannot write object {name!r} in {self.url}: its folder vanished", transient=True)

    def create(self, name: str, data: bytes) -> None:
        path = self._path(name)
        view = memoryview(data).cast("B")

        def run(s: Session) -> None:
            written = self._write_temp(s, path, view)
            try:
                self._publish(s, written, path, replace=False)
            except SFTPStatusError:
                if s.exists(path):
                    raise ObjectExists(f"object {name!r} already exists in {self.url}") from None
                raise
            finally:
                with contextlib.suppress(Exception):
                    s.remove_async(written[0])

        self._call(f"object {name!r}", run, missing=lambda: self._vanished(name))

    def delete(self, name: str) -> None:
        path = self._path(name)

        def run(s: Session) -> None:
            try:
                s.sftp.remove(path)
            except OSError as err:
                if isinstance(err, SFTPStatusError) and s.is_dir(path):
                    raise ObjectNotFound(f"object {name!r} does not exist in {self.url}") from None
                raise

        self._call(f"object {name!r}", run)

    def stat(self, name: str) -> ObjectInfo:
        path = self._path(name)

        def run(s: Session) -> ObjectInfo:
            attrs = s.sftp.stat(path)
            if not stat_mod.S_ISREG(attrs.st_mode or 0):
                raise ObjectNotFound(f"object {name!r} does not exist in {self.url}")
            return ObjectInfo(name, attrs.st_size or 0)

        return self._call(f"object {name!r}", run)

    def list(self, prefix: str = "") -> Iterator[ObjectInfo]:
        base = prefix.rsplit("/", 1)[0] + "/" if "/" in prefix else ""
        if base:
            check_name(base.rstrip("/"))

        def descend(sub: str) -> bool:
            return TMP_MARK not in sub and (sub.startswith(prefix) or prefix.startswith(sub))

        # Listed whole on one session, then yielded: a caller may use the backend meanwhile.
        found = self._call("the listing", lambda s: self._scan(s, base, descend))
        for name, a in found:
            if TMP_MARK not in name and name.startswith(prefix) and stat_mod.S_ISREG(a.st_mode or 0):
                yield ObjectInfo(name, a.st_size or 0)

    def _folder(self, rel: str) -> str:
        rel = rel.rstrip("/")
        if not rel:
            return self._root
        return f"{self._root}/{rel}" if self._root else rel

    def _scan(self, s: Session, start: str, descend: Callable[[str], bool]) -> _Entries:
        """Every entry but folders under folder ``start`` ("" or "a/b/"), by name, descending
        level by level (each level's folders listed in parallel) into the sub-folders
        ``descend("a/b/c/")`` accepts. Symbolic links are followed, as the local backend does;
        no deeper than :data:`_MAX_DEPTH` levels (a link loop ends there)."""
        out: _Entries = []
        level = [start]
        for _depth in range(_MAX_DEPTH):
            if not level:
                break
            listing = s.listdirs([self._folder(r) for r in level])
            deeper: list[str] = []
            for rel in level:
                for a in listing.get(self._folder(rel)) or []:
                    name = rel + a.filename
                    if stat_mod.S_ISLNK(a.st_mode or 0):
                        try:
                            a = s.sftp.stat(self._folder(name))
                        except FileNotFoundError:
                            continue  # a dangling link
                    if stat_mod.S_ISDIR(a.st_mode or 0):
                        if descend(name + "/"):
                            deeper.append(name + "/")
                    else:
                        out.append((name, a))
            level = deeper
        return sorted(out, key=lambda e: e[0])

    def close(self) -> None:
        self._pool.close()

    # -- leftovers (HasLeftovers)

    def leftovers(self) -> Iterator[Leftover]:
        """Temporary files of writes (interrupted, or still running: the caller judges)."""

        def descend(sub: str) -> bool:
            return TMP_MARK not in sub

        found = self._call("the listing of temporary files", lambda s: self._scan(s, "", descend))
        for name, a in found:
            if TMP_MARK in name.rsplit("/", 1)[-1] and stat_mod.S_ISREG(a.st_mode or 0):
                yield temp_leftover(name, a.st_size or 0, float(a.st_mtime or 0))

    def remove_leftover(self, leftover: Leftover) -> bool:
        """Remove the temporary file, unless it changed since it was listed."""
        temp_path_parts(leftover, self.url)
        path = self._folder(leftover.name)

        def run(s: Session) -> bool:
            try:
                a = s.sftp.lstat(path)
            except FileNotFoundError:
                return False
            if (
                not stat_mod.S_ISREG(a.st_mode or 0)
                or (a.st_size or 0) != leftover.size
                or float(a.st_mtime or 0) != leftover.modified
            ):
                return False
            try:
                s.sftp.remove(path)
            except FileNotFoundError:
                return False
            return True

        return self._call(f"temporary file {leftover.name!r}", run)
