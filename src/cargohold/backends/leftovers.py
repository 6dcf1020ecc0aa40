"""Who may remove a leftover of an interrupted write, and when.

A leftover (:class:`~cargohold.backends.base.Leftover`) is removable when its writer is
surely gone:

* **written on this host** (same host name and PID namespace as the reader, as the
  backend recorded them): when that process is gone — no such pid, a zombie, or
  another start time (pid reuse). A running writer's leftover is never removable,
  however old (a backup may wait long for its source);
* **written on another host, or by an unknown writer** (a leftover of an older
  cargohold, an object store that records no pid): only when it was not modified for
  ``stale_after`` (the lock staleness bound) **and** no fresh lock of another holder
  could belong to its writer — for a known host, no fresh lock of that host; for an
  unknown writer, no fresh lock of anyone. A live backup refreshes its lock every
  ``stale_after / 3``, so a writer that could still be at work always has one.

Host names must be unique among the hosts that share a repository (on NFS, say), as
they must be for locks: two hosts of one name would judge each other's processes.
"""

from __future__ import annotations

import hashlib
import os
import re
import secrets
import socket
from collections.abc import Callable, Iterable
from dataclasses import dataclass

from cargohold.backends.base import Leftover, Writer
from cargohold.errors import UsageError
from cargohold.procinfo import my_start, process_gone


def host_digest(value: str, length: int = 12) -> str:
    """A short digest of a host name or PID namespace, fit for a file name."""
    return hashlib.sha256(value.encode("utf-8", "surrogateescape")).hexdigest()[:length]


def pid_namespace() -> str:
    """This process's PID namespace (``pid:[4026531836]``), "" when unknown."""
    try:
        return os.readlink("/proc/self/ns/pid")
    except OSError:
        return ""


_ME: dict[tuple[int, str], Writer] = {}


def this_writer() -> Writer:
    """The identity of this process as leftovers record it."""
    key = (os.getpid(), socket.gethostname())  # after fork the pid changes
    me = _ME.get(key)
    if me is None:
        me = _ME[key] = Writer(
            host=host_digest(key[1]), pidns=host_digest(pid_namespace(), 8), pid=key[0], start=my_start()
        )
    return me


# --- in names of temporary files -------------------------------------------------------

_TAG = re.compile(r"^(\d+)-(\d+|x)-([0-9a-f]{12})-([0-9a-f]{8})-[0-9a-f]{12}$")
_LEGACY_STAGED = re.compile(r"^(\d+)-[0-9a-f]{12}$")  # cargohold <= 0.x: pid only


def writer_tag(writer: Writer, random_hex: str) -> str:
    """``PID-START-HOST-PIDNS-RANDOM``: what follows the temporary mark in a file name.

    The pid comes first, so ``<mark><pid>-*`` finds a process's files."""
    start = "x" if writer.start is None else str(writer.start)
    return f"{writer.pid}-{start}-{writer.host}-{writer.pidns}-{random_hex}"


def parse_writer_tag(tag: str) -> Writer | None:
    """The writer a :func:`writer_tag` names; None for older or foreign names."""
    m = _TAG.match(tag)
    if m is None:
        return None
    start = None if m.group(2) == "x" else int(m.group(2))
    return Writer(host=m.group(3), pidns=m.group(4), pid=int(m.group(1)), start=start)


def legacy_pid(tag: str) -> int | None:
    """The pid of a staged file named by an older cargohold (``PID-RANDOM``), host unknown."""
    m = _LEGACY_STAGED.match(tag)
    return int(m.group(1)) if m else None


def new_writer_tag() -> str:
    """A :func:`writer_tag` of this process with a fresh random part (unique per call)."""
    return writer_tag(this_writer(), secrets.token_hex(6))


#: What marks the name of a temporary file of the file backends (local, SFTP): no object
#: name may hold a ``~``, so a listing of objects never shows one.
TMP_MARK = "~tmp~"


def temp_name(base: str) -> str:
    """The name of a new temporary file for the file ``base`` beside it: ``.BASE~tmp~TAG``."""
    return f".{base}{TMP_MARK}{new_writer_tag()}"


def temp_leftover(name: str, size: int, modified: float) -> Leftover:
    """The leftover that the temporary file ``name`` (a path relative to the store) is, its
    writer read from the tag in its name."""
    tag = name.rsplit(TMP_MARK, 1)[1]
    writer = parse_writer_tag(tag)
    kind = "temporary file"
    pid = legacy_pid(tag) if writer is None else None
    if pid is not None:
        kind = f"temporary file of pid {pid} (host not recorded)"
    return Leftover(name, size, modified, writer, kind)


def temp_path_parts(leftover: Leftover, url: str) -> list[str]:
    """The segments of a temporary file's path a file backend may remove; a UsageError for
    any other name (an object, a path leaving the store)."""
    parts = leftover.name.split("/")
    if TMP_MARK not in parts[-1] or any(p in ("", ".", "..") or TMP_MARK in p for p in parts[:-1]):
        raise UsageError(f"{leftover.name!r} is no temporary file of {url}")
    return parts


# --- the verdict -----------------------------------------------------------------------


@dataclass(frozen=True)
class Verdict:
    leftover: Leftover
    removable: bool
    #: Why, for messages and ``--json``.
    reason: str


def _human(seconds: float) -> str:
    s = max(0, int(seconds))
    if s < 120:
        return f"{s}s"
    if s < 7200:
        return f"{s // 60}m"
    return f"{s // 3600}h{(s % 3600) // 60:02d}m"


def judge(
    leftovers: Iterable[Leftover],
    *,
    busy_hosts: Iterable[str],
    stale_after: float,
    now: float,
    me: Writer | None = None,
    gone: Callable[[int, int | None], bool] = process_gone,
) -> list[Verdict]:
    """Decide for each leftover whether its writer is surely gone.

    ``busy_hosts``: the host names of the fresh locks held by others than the caller
    (the caller's own lock does not make its host busy: it writes nothing meanwhile).
    """
    me = me or this_writer()
    busy = {host_digest(h) for h in busy_hosts}
    out = []
    for lo in leftovers:
        w = lo.writer
        age = now - lo.modified
        if w is not None and w.host == me.host and w.pidns == me.pidns:
            if gone(w.pid, w.start):
                out.append(Verdict(lo, True, f"its writer, pid {w.pid} on this host, is gone"))
            else:
                out.append(Verdict(lo, False, f"its writer, pid {w.pid} on this host, is running"))
            continue
        who = "an unknown writer" if w is None else f"pid {w.pid} of another host or PID namespace"
        if age <= stale_after:
            reason = (
                f"written by {who} {_human(age)} ago: it may still be at work (removable after {_human(stale_after)})"
            )
            out.append(Verdict(lo, False, reason))
        elif w is not None and w.host in busy:
            out.append(Verdict(lo, False, f"written by {who}, whose host holds a fresh lock"))
        elif w is None and busy:
            out.append(Verdict(lo, False, f"written by {who}, and a fresh lock is held"))
        else:
            out.append(
                Verdict(lo, True, f"written by {who} {_human(age)} ago, and no fresh lock could be its writer's")
            )
    return out
