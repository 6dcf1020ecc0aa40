"""A backend on an SFTP server: ``sftp://[USER@]HOST[:PORT]/PATH[?OPTIONS]``.

``HOST`` may be a Host alias of the ssh config; PATH is absolute (``/srv/repo``), or
relative to the login directory when it starts with ``~`` (``sftp://host/~/repo``).
Options (in the query string; no secrets there, the URL alone reopens the store):

* ``ssh_config=PATH`` — the ssh config file to read (default ``~/.ssh/config``; ``none``);
* ``connections=N`` — how many SSH connections the backend opens at most (default 4);
* ``timeout=SECONDS`` — for connecting and for every request (default 30).

The connection (ssh config, agent, strict known_hosts) is :mod:`cargohold.backends._ssh`.

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
import errno
import logging
import os
import stat as stat_mod
import threading
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import Any, TypeVar
from urllib.parse import parse_qsl, unquote, urlsplit

import paramiko
from paramiko.message import Message
from paramiko.sftp import (
    CMD_ATTRS,
    CMD_CLOSE,
    CMD_DATA,
    CMD_EXTENDED,
    CMD_EXTENDED_REPLY,
    CMD_FSTAT,
    CMD_HANDLE,
    CMD_INIT,
    CMD_NAME,
    CMD_OPEN,
    CMD_OPENDIR,
    CMD_READ,
    CMD_READDIR,
    CMD_REMOVE,
    CMD_RENAME,
    CMD_STATUS,
    CMD_VERSION,
    CMD_WRITE,
    SFTP_EOF,
    SFTP_FLAG_CREATE,
    SFTP_FLAG_EXCL,
    SFTP_FLAG_READ,
    SFTP_FLAG_WRITE,
    SFTP_NO_SUCH_FILE,
    SFTP_OK,
    SFTP_PERMISSION_DENIED,
    int64,
)
from paramiko.sftp_attr import SFTPAttributes

from cargohold.backends._ssh import DEFAULT_TIMEOUT, Connection, SSHEnv, Target, connect, resolve
from cargohold.backends.base import Leftover, ObjectInfo, check_name
from cargohold.backends.leftovers import TMP_MARK, temp_leftover, temp_name, temp_path_parts
from cargohold.errors import BackendError, BackendIOError, ObjectExists, ObjectNotFound, UsageError

__all__ = ["DEFAULT_CONNECTIONS", "SFTPBackend", "SFTPLocation", "SFTPStatusError", "open_url", "parse_url"]

DEFAULT_CONNECTIONS = 4
#: Bytes per read or write request: what ``limits@openssh.com`` allows, at most this much
#: (measured best on loopback: docs/REPOSITORY.md); 32 KiB, which every server takes,
#: where the server does not say.
_CHUNK = 128 * 1024
_SAFE_CHUNK = 32 * 1024
#: Requests in flight per call.
_WINDOW = 32
#: Folders listed at once (each holds a handle of the server: at most a quarter of its limit).
_FOLDERS_AT_ONCE = 128
#: The SSH channel's receive window and largest packet (paramiko's defaults, 2 MiB and
#: 32 KiB, halve the download rate).
_CHANNEL_WINDOW = 16 * 1024 * 1024
_CHANNEL_PACKET = 128 * 1024
_OPTIONS = {"ssh_config", "connections", "timeout"}
#: Folder levels a listing descends at most (the repository's names have 3).
_MAX_DEPTH = 16

T = TypeVar("T")

# paramiko logs a reset connection from its transport thread; with no handler Python would
# print that to stderr (the last-resort handler) beside cargohold's one-line error.
logging.getLogger("paramiko").addHandler(logging.NullHandler())
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


# --- one SFTP channel ------------------------------------------------------------------------


class _Client(paramiko.SFTPClient):
    """paramiko's SFTP client, keeping the extensions the server announces."""

    extensions: dict[str, bytes]

    def _send_version(self) -> int:
        msg = Message()
        msg.add_int(3)
        self._send_packet(CMD_INIT, msg)  # type: ignore[attr-defined]
        kind, data = self._read_packet()  # type: ignore[attr-defined]
        if kind != CMD_VERSION:
            raise paramiko.SFTPError("incompatible SFTP protocol")
        reply = Message(data)
        version = reply.get_int()
        self.extensions = {}
        while reply.get_remainder():
            name = reply.get_text()
            self.extensions[name] = reply.get_binary()
        return version

    def _convert_status(self, msg: Message) -> None:
        code = msg.get_int()
        if code != SFTP_OK:
            _raise_status(code, msg.get_text())


class _NoSFTP(Exception):
    """The server refused the SFTP subsystem."""


class _Replies:
    """Collects the answers to pipelined requests (paramiko hands them to ``_async_response``)."""

    def __init__(self) -> None:
        self.got: dict[int, tuple[int, Message]] = {}

    def _async_response(self, kind: int, msg: Message, num: int) -> None:
        self.got[num] = (kind, msg)


class _Session:
    """A connection and its SFTP channel, used by one thread at a time."""

    def __init__(self, conn: Connection, timeout: float) -> None:
        self.conn = conn
        self.pid = os.getpid()
        self.read_chunk = self.write_chunk = _SAFE_CHUNK
        self.folders_at_once = _FOLDERS_AT_ONCE
        # paramiko waits for the subsystem's answer without a timeout: a watchdog closes the
        # connection if the setup takes longer than ``timeout``.
        watchdog = threading.Timer(timeout, conn.close)
        watchdog.daemon = True
        watchdog.start()
        try:
            chan = conn.transport.open_session(
                window_size=_CHANNEL_WINDOW, max_packet_size=_CHANNEL_PACKET, timeout=timeout
            )
            chan.settimeout(timeout)
            try:
                chan.invoke_subsystem("sftp")
            except paramiko.SSHException as err:
                if watchdog.is_alive() and conn.alive():  # refused, not cut off
                    raise _NoSFTP(str(err)) from err
                raise TimeoutError("no answer to the SFTP subsystem request") from err
            self.sftp = _Client(chan)
            self.ext = self.sftp.extensions
            if "limits@openssh.com" in self.ext:
                kind, msg = self._request(CMD_EXTENDED, "limits@openssh.com")
                if kind == CMD_EXTENDED_REPLY:
                    _packet, max_read, max_write = msg.get_int64(), msg.get_int64(), msg.get_int64()
                    max_handles = msg.get_int64()
                    self.read_chunk = min(_CHUNK, max_read or _CHUNK)
                    self.write_chunk = min(_CHUNK, max_write or _CHUNK)
                    if max_handles:
                        self.folders_at_once = max(1, min(self.folders_at_once, max_handles // 4))
        finally:
            watchdog.cancel()

    def alive(self) -> bool:
        return self.pid == os.getpid() and self.conn.alive()

    def close(self) -> None:
        with contextlib.suppress(Exception):
            self.sftp.close()
        self.conn.close()

    # -- requests

    def _request(self, kind: int, *args: Any) -> tuple[int, Message]:
        result: tuple[int | None, Message | None] = self.sftp._request(kind, *args)  # type: ignore[attr-defined]
        assert result[0] is not None and result[1] is not None
        return result[0], result[1]

    def _send(self, replies: _Replies, kind: int, *args: Any) -> int:
        num: int = self.sftp._async_request(replies, kind, *args)  # type: ignore[attr-defined]
        return num

    def _wait(self, replies: _Replies, num: int) -> tuple[int, Message]:
        while num not in replies.got:
            self.sftp._read_response()  # type: ignore[attr-defined]
        return replies.got.pop(num)

    def _check_status(self, kind: int, msg: Message) -> None:
        if kind != CMD_STATUS:
            raise paramiko.SFTPError(f"expected a status, got message type {kind}")
        code = msg.get_int()
        if code != SFTP_OK:
            _raise_status(code, msg.get_text())

    def open(self, path: str, flags: int) -> bytes:
        attrs = SFTPAttributes()
        if flags & SFTP_FLAG_CREATE:
            attrs.st_mode = 0o600
        kind, msg = self._request(CMD_OPEN, path, flags, attrs)
        if kind != CMD_HANDLE:
            raise paramiko.SFTPError(f"expected a handle, got message type {kind}")
        return msg.get_binary()

    def remove_async(self, path: str) -> None:
        """Remove without waiting for the answer (a later request reads and drops it)."""
        self.sftp._async_request(type(None), CMD_REMOVE, path)  # type: ignore[attr-defined]

    def close_async(self, handle: bytes) -> None:
        """Close without waiting: the answer is read (and dropped) by a later request."""
        self.sftp._async_request(type(None), CMD_CLOSE, handle)  # type: ignore[attr-defined]

    def fstat(self, handle: bytes) -> SFTPAttributes:
        _kind, msg = self._request(CMD_FSTAT, handle)
        return SFTPAttributes._from_msg(msg)  # type: ignore[attr-defined,no-any-return]

    def write_file(self, path: str, data: memoryview) -> bytes:
        """Create ``path`` (which must not exist) and write ``data``; the handle, still open,
        once every write is acknowledged (:meth:`publish` then makes it an object)."""
        handle = self.open(path, SFTP_FLAG_WRITE | SFTP_FLAG_CREATE | SFTP_FLAG_EXCL)
        try:
            replies = _Replies()
            pending: list[int] = []
            step = self.write_chunk
            for off in range(0, len(data), step):
                if len(pending) >= _WINDOW:
                    self._check_status(*self._wait(replies, pending.pop(0)))
                pending.append(self._send(replies, CMD_WRITE, handle, int64(off), bytes(data[off : off + step])))
            for num in pending:
                self._check_status(*self._wait(replies, num))
        except BaseException:
            with contextlib.suppress(Exception):
                self.close_async(handle)
            raise
        return handle

    def publish(self, handle: bytes, tmp: str, final: str, *, replace: bool, folder: str | None) -> bool:
        """fsync and close the written temporary file ``tmp``, publish it as ``final`` — over an
        existing one (``replace``) or only if the name is free (else an SFTPStatusError) — and
        fsync ``folder``: all sent at once, one round trip (plus one for the folder's fsync).
        The writes are acknowledged already, so a published object is always whole. True when
        the folder was fsync'd."""
        replies = _Replies()
        steps: list[tuple[str, int]] = []
        if "fsync@openssh.com" in self.ext:
            steps.append(("fsync", self._send(replies, CMD_EXTENDED, "fsync@openssh.com", handle)))
        steps.append(("close", self._send(replies, CMD_CLOSE, handle)))
        fallback = replace and "posix-rename@openssh.com" not in self.ext
        if replace and not fallback:
            steps.append(("publish", self._send(replies, CMD_EXTENDED, "posix-rename@openssh.com", tmp, final)))
        elif not replace and "hardlink@openssh.com" in self.ext:
            steps.append(("publish", self._send(replies, CMD_EXTENDED, "hardlink@openssh.com", tmp, final)))
        elif not replace:
            steps.append(("publish", self._send(replies, CMD_RENAME, tmp, final)))  # SFTP v3: fails if taken
        if folder is not None and "fsync@openssh.com" in self.ext and not fallback:
            steps.append(("folder", self._send(replies, CMD_OPEN, folder or ".", SFTP_FLAG_READ, SFTPAttributes())))
        error: BaseException | None = None
        folder_handle: bytes | None = None
        for step, num in steps:
            kind, msg = self._wait(replies, num)
            if step == "folder":
                folder_handle = msg.get_binary() if kind == CMD_HANDLE else None
                continue
            try:
                self._check_status(kind, msg)
            except _STATUS as err:
                error = error or err
        if folder_handle is not None:
            if error is not None:
                self.close_async(folder_handle)
            else:
                sync = self._send(replies, CMD_EXTENDED, "fsync@openssh.com", folder_handle)
                self.close_async(folder_handle)
                kind, msg = self._wait(replies, sync)
                try:
                    self._check_status(kind, msg)
                except _STATUS:
                    folder_handle = None
        if error is not None:
            raise error
        if fallback:  # no atomic replace: the object is missing for a moment, never partial
            with contextlib.suppress(FileNotFoundError):
                self.sftp.remove(final)
            self.sftp.rename(tmp, final)
        return folder_handle is not None

    def read_file(self, path: str, offset: int, length: int | None) -> bytes:
        """Bytes of ``path`` from ``offset`` (``length`` of them, or to the end). A range needs
        no size: reads past the end are answered with EOF. A whole file asks for its size and
        its first piece at once, so a small object costs two round trips (open, read)."""
        handle = self.open(path, SFTP_FLAG_READ)
        try:
            if length is not None:
                try:
                    return self._read_range(handle, offset, offset + length)
                except SFTPStatusError:
                    self._check_regular(handle)  # a folder opens, but cannot be read
                    raise
            replies = _Replies()
            stat = self._send(replies, CMD_FSTAT, handle)
            first = self._send(replies, CMD_READ, handle, int64(offset), self.read_chunk)
            kind, msg = self._wait(replies, stat)
            if kind != CMD_ATTRS:
                self._wait(replies, first)
                self._check_status(kind, msg)
                raise paramiko.SFTPError(f"expected attributes, got message type {kind}")
            attrs = SFTPAttributes._from_msg(msg)  # type: ignore[attr-defined]
            kind, msg = self._wait(replies, first)
            if attrs.st_mode is not None and not stat_mod.S_ISREG(attrs.st_mode):
                raise FileNotFoundError(errno.ENOENT, "not a regular file")
            piece = self._data(kind, msg)
            size = attrs.st_size or 0
            if offset + len(piece) >= size:
                return piece[: max(0, size - offset)]
            return piece + self._read_range(handle, offset + len(piece), size)
        finally:
            with contextlib.suppress(Exception):
                self.close_async(handle)

    def _check_regular(self, handle: bytes) -> None:
        attrs = self.fstat(handle)
        if attrs.st_mode is not None and not stat_mod.S_ISREG(attrs.st_mode):
            raise FileNotFoundError(errno.ENOENT, "not a regular file")

    def _data(self, kind: int, msg: Message) -> bytes:
        """The bytes of a read's answer (b"" at the end of the file)."""
        if kind == CMD_STATUS:
            code = msg.get_int()
            if code == SFTP_EOF:
                return b""
            _raise_status(code, msg.get_text())
        if kind != CMD_DATA:
            raise paramiko.SFTPError(f"expected data, got message type {kind}")
        return msg.get_binary()

    def _read_range(self, handle: bytes, start: int, end: int) -> bytes:
        """Bytes ``start:end`` of an open file, by pipelined reads (a short answer, which a
        server may give, is followed by a new request from where it ended)."""
        out = bytearray()
        replies = _Replies()
        pending: list[tuple[int, int]] = []  # (request, length asked)
        next_off = pos = start
        short: int | None = None  # the length of a short answer, until we know it was no EOF
        while pos < end:
            while next_off < end and len(pending) < _WINDOW:
                n = min(self.read_chunk, end - next_off)
                pending.append((self._send(replies, CMD_READ, handle, int64(next_off), n), n))
                next_off += n
            num, n = pending.pop(0)
            piece = self._data(*self._wait(replies, num))
            if not piece:  # the end of the file
                break
            if short is not None:  # data after a short answer: the server reads less per request
                self.read_chunk = max(1024, min(self.read_chunk, short))
                short = None
            out += piece
            pos += len(piece)
            if len(piece) < n:
                short = len(piece)
                for num2, _n in pending:  # answers to requests past the gap: drop them
                    self._wait(replies, num2)
                pending.clear()
                next_off = pos
        for num, _n in pending:
            self._wait(replies, num)
        return bytes(out)

    def makedirs(self, path: str) -> None:
        """Create folder ``path`` and its missing parents, fsyncing the parent of each new one
        (so that the new entry survives a crash as the objects in it do)."""
        head = path.rstrip("/").rpartition("/")[0]
        parent = head or ("/" if path.startswith("/") else "")
        try:
            self.sftp.mkdir(path, 0o700)
        except FileNotFoundError:
            if parent in ("", "/"):
                raise
            self.makedirs(parent)
            try:
                self.sftp.mkdir(path, 0o700)
            except SFTPStatusError:
                if not self.is_dir(path):
                    raise
                return
        except SFTPStatusError:  # "Failure": it may exist (made by another writer meanwhile)
            if self.is_dir(path):
                return
            raise
        self.fsync_folder(parent)

    def fsync_folder(self, path: str) -> None:
        """fsync a folder where the server can (best effort)."""
        if "fsync@openssh.com" not in self.ext:
            return
        try:
            handle = self.open(path or ".", SFTP_FLAG_READ)
        except _STATUS:
            return
        replies = _Replies()
        sync = self._send(replies, CMD_EXTENDED, "fsync@openssh.com", handle)
        self.close_async(handle)
        kind, msg = self._wait(replies, sync)
        with contextlib.suppress(*_STATUS):
            self._check_status(kind, msg)

    def is_dir(self, path: str) -> bool:
        try:
            return stat_mod.S_ISDIR(self.sftp.stat(path).st_mode or 0)
        except _STATUS:
            return False

    def exists(self, path: str) -> bool:
        try:
            self.sftp.lstat(path)
        except FileNotFoundError:
            return False
        return True

    def listdirs(self, paths: list[str]) -> dict[str, list[SFTPAttributes] | None]:
        """The entries of each folder (None for a missing one), listed in parallel: a level of
        256 ``data/xx`` folders costs a few round trips, not a thousand."""
        out: dict[str, list[SFTPAttributes] | None] = {}
        step = self.folders_at_once
        for i in range(0, len(paths), step):
            out.update(self._listdirs(paths[i : i + step]))
        return out

    def _listdirs(self, paths: list[str]) -> dict[str, list[SFTPAttributes] | None]:
        replies = _Replies()
        out: dict[str, list[SFTPAttributes] | None] = {}
        handles: dict[str, bytes] = {}
        try:
            opening = {p: self._send(replies, CMD_OPENDIR, p or ".") for p in paths}
            failure: tuple[int, str] | None = None
            for p, num in opening.items():
                kind, msg = self._wait(replies, num)
                if kind == CMD_HANDLE:
                    handles[p] = msg.get_binary()
                    out[p] = []
                    continue
                code = msg.get_int() if kind == CMD_STATUS else -1
                if code == SFTP_NO_SUCH_FILE:
                    out[p] = None
                elif failure is None:
                    failure = (code, msg.get_text() if kind == CMD_STATUS else f"message type {kind}")
            if failure is not None:
                _raise_status(*failure)
            active = dict(handles)
            while active:
                reading = {p: self._send(replies, CMD_READDIR, h) for p, h in active.items()}
                for p, num in reading.items():
                    kind, msg = self._wait(replies, num)
                    if kind == CMD_STATUS:
                        code = msg.get_int()
                        if code != SFTP_EOF:
                            _raise_status(code, msg.get_text())
                        del active[p]
                        continue
                    if kind != CMD_NAME:
                        raise paramiko.SFTPError(f"expected names, got message type {kind}")
                    entries = out[p]
                    assert entries is not None
                    for _ in range(msg.get_int()):
                        filename, longname = msg.get_text(), msg.get_text()
                        attrs = SFTPAttributes._from_msg(msg, filename, longname)  # type: ignore[attr-defined]
                        if filename not in (".", ".."):
                            entries.append(attrs)
        finally:
            for h in handles.values():
                with contextlib.suppress(Exception):
                    self.close_async(h)
        return out


class SFTPStatusError(OSError):
    """An SFTP error status other than "no such file" and "permission denied" ("Failure",
    "Bad message", "Operation unsupported"...): the server answered, the channel is in step.
    (paramiko raises a bare OSError for these, as it does for a closed channel.)"""


def _raise_status(code: int, text: str) -> None:
    """Raise an error status: FileNotFoundError, PermissionError or SFTPStatusError."""
    if code == SFTP_NO_SUCH_FILE:
        raise FileNotFoundError(errno.ENOENT, text)
    if code == SFTP_PERMISSION_DENIED:
        raise PermissionError(errno.EACCES, text)
    raise SFTPStatusError(f"{text or 'SFTP status'} (SFTP status {code})")


#: The errors that are answers of the server.
_STATUS = (FileNotFoundError, PermissionError, SFTPStatusError)


# --- the pool ----------------------------------------------------------------------------------


class _Pool:
    """At most ``size`` sessions; a session that failed mid-request is closed, not reused.
    :meth:`close` closes the idle ones and those in use once they are given back; a later
    call opens new ones (a closed backend still works, as a local one does)."""

    def __init__(self, opener: Callable[[], _Session], size: int) -> None:
        self._open = opener
        self.size = size
        self._idle: list[_Session] = []
        self._busy = 0
        self._cond = threading.Condition()
        self._pid = os.getpid()
        self._generation = 0

    def _take(self) -> tuple[_Session, int]:
        with self._cond:
            if self._pid != os.getpid():  # forked: the parent's connections are not ours
                self._idle, self._busy, self._pid = [], 0, os.getpid()
            while True:
                while self._idle:
                    s = self._idle.pop()
                    if s.alive():
                        self._busy += 1
                        return s, self._generation
                    s.close()
                if self._busy < self.size:
                    self._busy += 1
                    generation = self._generation
                    break
                self._cond.wait()
        try:
            return self._open(), generation
        except BaseException:
            with self._cond:
                self._busy -= 1
                self._cond.notify()
            raise

    def _give(self, s: _Session, generation: int, broken: bool) -> None:
        with self._cond:
            self._busy -= 1
            if broken or generation != self._generation or not s.alive():
                s.close()
            else:
                self._idle.append(s)
            self._cond.notify()

    @contextlib.contextmanager
    def session(self) -> Iterator[_Session]:
        s, generation = self._take()
        broken = True
        try:
            yield s
            broken = False
        except (*_STATUS, ObjectExists, ObjectNotFound, UsageError):
            broken = False  # a clean answer of the server: the channel is in step
            raise
        finally:
            self._give(s, generation, broken)

    def close(self) -> None:
        with self._cond:
            self._generation += 1
            idle, self._idle = self._idle, []
        for s in idle:
            s.close()


def _is_status_error(err: OSError) -> bool:
    """An SFTP status answer (the channel is in step), not a connection failure."""
    return isinstance(err, _STATUS)


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
        self._pool = _Pool(self._open_session, self.connections)

    def __repr__(self) -> str:
        return f"SFTPBackend({self.url!r})"

    # -- connections

    def _resolve(self) -> Target:
        if self._target is None:
            self._target = resolve(
                self._loc.host, env=self._env, user=self._loc.user, port=self._loc.port, timeout=self.timeout
            )
        return self._target

    def _open_session(self) -> _Session:
        target = self._resolve()
        conn = connect(target, self._env, timeout=self.timeout)
        try:
            return _Session(conn, self.timeout)
        except (_NoSFTP, paramiko.SFTPError) as err:
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

    def _call(self, what: str, fn: Callable[[_Session], T], *, missing: Callable[[], BackendError] | None = None) -> T:
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
        except (TimeoutError, EOFError, paramiko.SSHException, ConnectionError) as err:
            raise self._lost(err, what) from err
        except OSError as err:
            if _is_status_error(err):
                raise BackendIOError(f"{what} in {self.url}: the server says {err}") from err
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

    def _write_temp(self, s: _Session, path: str, data: memoryview) -> tuple[str, bytes]:
        """A new temporary file beside ``path`` holding ``data`` (folders made on demand): its
        name and open handle."""
        tmp = self._temp(path)
        try:
            return tmp, s.write_file(tmp, data)
        except FileNotFoundError:
            s.makedirs(self._dir_of(path))
            return tmp, s.write_file(tmp, data)

    def _publish(self, s: _Session, written: tuple[str, bytes], path: str, *, replace: bool) -> None:
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

    def store(self, name: str, data: bytes) -> None:
        path = self._path(name)
        view = memoryview(data).cast("B")

        def run(s: _Session) -> None:
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

        def run(s: _Session) -> None:
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

        def run(s: _Session) -> None:
            try:
                s.sftp.remove(path)
            except OSError as err:
                if isinstance(err, SFTPStatusError) and s.is_dir(path):
                    raise ObjectNotFound(f"object {name!r} does not exist in {self.url}") from None
                raise

        self._call(f"object {name!r}", run)

    def stat(self, name: str) -> ObjectInfo:
        path = self._path(name)

        def run(s: _Session) -> ObjectInfo:
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

    def _scan(self, s: _Session, start: str, descend: Callable[[str], bool]) -> _Entries:
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

        def run(s: _Session) -> bool:
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
