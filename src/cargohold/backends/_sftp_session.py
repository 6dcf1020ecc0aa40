"""The SFTP protocol under :class:`~cargohold.backends.sftp.SFTPBackend`: one SFTP channel
per SSH connection (:class:`Session`) and a pool of them shared by threads (:class:`Pool`).

A session speaks SFTP v3 through paramiko's client, with what paramiko lacks: the
extensions the server announces (``limits@openssh.com``, ``fsync@openssh.com``,
``posix-rename@openssh.com``, ``hardlink@openssh.com``), pipelined reads and writes
(up to 128 KiB each, 32 in flight), a write published with one round trip
(:meth:`Session.publish`) and folders listed in parallel (:meth:`Session.listdirs`).
Its methods raise what the server answered as :data:`STATUS_ERRORS` (no such file,
permission denied, :class:`SFTPStatusError`) — the channel is then still in step — and
anything else for a connection that failed; the backend maps both to its error tree.
"""

from __future__ import annotations

import contextlib
import errno
import logging
import os
import stat as stat_mod
import threading
from collections.abc import Callable, Iterator
from typing import Any

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

from cargohold.backends._ssh import Connection
from cargohold.errors import ObjectExists, ObjectNotFound, UsageError

__all__ = ["STATUS_ERRORS", "NoSFTP", "Pool", "SFTPStatusError", "Session", "is_status_error", "raise_status"]

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

# paramiko logs a reset connection from its transport thread; with no handler Python would
# print that to stderr (the last-resort handler) beside cargohold's one-line error.
logging.getLogger("paramiko").addHandler(logging.NullHandler())


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
            raise_status(code, msg.get_text())


class NoSFTP(Exception):
    """The server refused the SFTP subsystem."""


class _Replies:
    """Collects the answers to pipelined requests (paramiko hands them to ``_async_response``)."""

    def __init__(self) -> None:
        self.got: dict[int, tuple[int, Message]] = {}

    def _async_response(self, kind: int, msg: Message, num: int) -> None:
        self.got[num] = (kind, msg)


class Session:
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
                    raise NoSFTP(str(err)) from err
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
            raise_status(code, msg.get_text())

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
            except STATUS_ERRORS as err:
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
                except STATUS_ERRORS:
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
            raise_status(code, msg.get_text())
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
        except STATUS_ERRORS:
            return
        replies = _Replies()
        sync = self._send(replies, CMD_EXTENDED, "fsync@openssh.com", handle)
        self.close_async(handle)
        kind, msg = self._wait(replies, sync)
        with contextlib.suppress(*STATUS_ERRORS):
            self._check_status(kind, msg)

    def is_dir(self, path: str) -> bool:
        try:
            return stat_mod.S_ISDIR(self.sftp.stat(path).st_mode or 0)
        except STATUS_ERRORS:
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
                raise_status(*failure)
            active = dict(handles)
            while active:
                reading = {p: self._send(replies, CMD_READDIR, h) for p, h in active.items()}
                for p, num in reading.items():
                    kind, msg = self._wait(replies, num)
                    if kind == CMD_STATUS:
                        code = msg.get_int()
                        if code != SFTP_EOF:
                            raise_status(code, msg.get_text())
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


def raise_status(code: int, text: str) -> None:
    """Raise an error status: FileNotFoundError, PermissionError or SFTPStatusError."""
    if code == SFTP_NO_SUCH_FILE:
        raise FileNotFoundError(errno.ENOENT, text)
    if code == SFTP_PERMISSION_DENIED:
        raise PermissionError(errno.EACCES, text)
    raise SFTPStatusError(f"{text or 'SFTP status'} (SFTP status {code})")


#: The errors that are answers of the server.
STATUS_ERRORS = (FileNotFoundError, PermissionError, SFTPStatusError)


# --- the pool ----------------------------------------------------------------------------------


class Pool:
    """At most ``size`` sessions; a session that failed mid-request is closed, not reused.
    :meth:`close` closes the idle ones and those in use once they are given back; a later
    call opens new ones (a closed backend still works, as a local one does)."""

    def __init__(self, opener: Callable[[], Session], size: int) -> None:
        self._open = opener
        self.size = size
        self._idle: list[Session] = []
        self._busy = 0
        self._cond = threading.Condition()
        self._pid = os.getpid()
        self._generation = 0

    def _take(self) -> tuple[Session, int]:
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

    def _give(self, s: Session, generation: int, broken: bool) -> None:
        with self._cond:
            self._busy -= 1
            if broken or generation != self._generation or not s.alive():
                s.close()
            else:
                self._idle.append(s)
            self._cond.notify()

    @contextlib.contextmanager
    def session(self) -> Iterator[Session]:
        s, generation = self._take()
        broken = True
        try:
            yield s
            broken = False
        except (*STATUS_ERRORS, ObjectExists, ObjectNotFound, UsageError):
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


def is_status_error(err: OSError) -> bool:
    """An SFTP status answer (the channel is in step), not a connection failure."""
    return isinstance(err, STATUS_ERRORS)
