"""Is the process that left something behind still running? (locks, intents, helper containers)

A process is named by host, pid and its start time in clock ticks since boot (from
``/proc/PID/stat``), so a reused pid is not mistaken for the original.
"""

from __future__ import annotations

import getpass
import os
import socket

_MY_START: dict[int, int | None] = {}


def process_start(pid: int) -> tuple[str, int] | None:
    """State letter and start time (clock ticks since boot) of ``pid``, from /proc; None if unknown."""
    try:
        with open(f"/proc/{pid}/stat", "rb") as f:
            stat = f.read().decode("ascii", "replace")
    except FileNotFoundError:
        return ("X", 0)  # no such process
    except OSError:
        return None
    fields = stat[stat.rfind(")") + 2 :].split()  # the command name may hold spaces and parentheses
    try:
        return fields[0], int(fields[19])
    except (IndexError, ValueError):
        return None


def process_gone(pid: int, start: int | None) -> bool:
    """Whether process ``pid`` (started at ``start`` ticks, if known) no longer runs here."""
    if pid <= 0:
        return True
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return True
    except PermissionError:
        pass  # exists, owned by someone else
    proc = process_start(pid)
    if proc is None:
        return False
    state, started = proc
    if state in ("X", "Z"):  # gone, or a zombie nobody reaped yet
        return True
    return start is not None and started != start  # the pid was reused


def my_start() -> int | None:
    pid = os.getpid()
    if pid not in _MY_START:  # after fork the pid changes
        proc = process_start(pid)
        _MY_START[pid] = proc[1] if proc else None
    return _MY_START[pid]


def current_user() -> str:
    """The login name, or the numeric uid when it has no name (containers, odd set-ups)."""
    try:
        return getpass.getuser()
    except (KeyError, OSError):
        return str(os.getuid())


def owner_token() -> str:
    """``HOST:PID:START`` of this process, for labels of things it creates."""
    return f"{socket.gethostname()}:{os.getpid()}:{my_start() or ''}"


def owner_gone(token: str) -> bool:
    """Whether the process of an :func:`owner_token` has ended. Other hosts' owners never are."""
    parts = token.split(":")
    if len(parts) < 3 or ":".join(parts[:-2]) != socket.gethostname():
        return False
    try:
        pid = int(parts[-2])
    except ValueError:
        return False
    start = int(parts[-1]) if parts[-1].isdigit() else None
    return process_gone(pid, start)
