"""Worker processes of the repository layer: how they start, get their setup and fail.

Backups (:mod:`.procworker`) and restores (:mod:`.restoreworker`) hand their heavy work
to child processes because Python threads share one interpreter lock. A child is started
as ``python -m MODULE FD``, ``FD`` being its end of a socket pair; its setup (the key
among it) arrives over that socket, never on a command line or in the environment. It
dies with its parent (``PR_SET_PDEATHSIG``), ignores Ctrl-C (the parent stops it), and
reports a failure as one ``("fatal", kind, message, hint, traceback)`` message that the
parent turns back into one of our errors.
"""

from __future__ import annotations

import contextlib
import ctypes
import os
import signal
import socket
import subprocess
import sys
import traceback
from collections.abc import Callable
from multiprocessing.connection import Connection
from typing import Any, Protocol

import cargohold
from cargohold import errors
from cargohold.errors import CargoholdError, RepositoryError
from cargohold.repo.memory import tune_allocator

_PR_SET_PDEATHSIG = 1


class WorkerFailed(RepositoryError):
    """A worker process failed or died."""


def spawn(module: str, setup: dict[str, Any]) -> tuple[subprocess.Popen[bytes], Connection]:
    """Start ``python -m module FD`` and send it ``setup``."""
    ours, theirs = socket.socketpair()
    env = dict(os.environ)
    # the child imports cargohold from where this process did, installed or not
    package_parent = os.path.dirname(os.path.dirname(os.path.abspath(cargohold.__file__)))
    env["PYTHONPATH"] = os.pathsep.join(p for p in (package_parent, env.get("PYTHONPATH", "")) if p)
    try:
        proc = subprocess.Popen(
            # -P: the working directory (a backup of ".", a restore target) is not put on
            # sys.path, so nothing in it can stand in for a module of a process holding the key
            [sys.executable, "-P", "-m", module, str(theirs.fileno())],
            pass_fds=(theirs.fileno(),),
            stdin=subprocess.DEVNULL,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
            env=env,
        )
    except BaseException:
        ours.close()
        raise
    finally:
        theirs.close()
    conn = Connection(ours.detach())
    try:
        conn.send(setup)
    except OSError:
        proc.kill()
        proc.wait()
        conn.close()
        raise WorkerFailed("a worker process did not start") from None
    return proc, conn


def child_error(msg: tuple[Any, ...]) -> BaseException:
    """A child's ``fatal`` message as one of our errors (its traceback kept for ``--debug``)."""
    _, kind, message, hint, trace = msg
    cls = getattr(errors, kind, None)
    if isinstance(cls, type) and issubclass(cls, CargoholdError):
        try:
            err: BaseException = cls(message, hint=hint)
        except TypeError:
            err = WorkerFailed(message, hint=hint)
    else:
        err = WorkerFailed(f"a worker process failed: {kind}: {message}")
    err.add_note(trace)
    return err


def died(conn: Connection, what: str) -> BaseException:
    """Why the child at the other end of ``conn`` is gone: the error it reported before its
    socket broke, if that is still unread (a send to a child that failed and exited fails
    with EPIPE; its ``fatal`` message says why), else that ``what`` died."""
    try:
        while conn.poll(0):
            msg = conn.recv()
            if isinstance(msg, tuple) and msg and msg[0] == "fatal":
                return child_error(msg)
    except (EOFError, OSError):
        pass
    return WorkerFailed(f"{what} process died", hint="see the system log (out of memory?)")


class ChildWork(Protocol):
    def run(self) -> None: ...

    def send(self, msg: tuple[Any, ...]) -> None: ...

    def close(self) -> None: ...


def _die_with_parent() -> None:
    """Ask Linux to kill this process when the parent dies (a killed backup leaves no
    worker behind to finish its packs); elsewhere the closed socket ends it soon enough."""
    with contextlib.suppress(OSError, AttributeError):
        libc = ctypes.CDLL(None, use_errno=True)
        libc.prctl(_PR_SET_PDEATHSIG, signal.SIGKILL)


def run_child(argv: list[str], make: Callable[[Connection, dict[str, Any]], ChildWork]) -> int:
    """The ``main`` of a worker module: set up, run ``make(conn, setup)``, report a failure."""
    parent = os.getppid()
    signal.signal(signal.SIGINT, signal.SIG_IGN)  # Ctrl-C reaches the parent, which stops us
    _die_with_parent()
    if os.getppid() != parent:  # the parent died before prctl took effect
        return 1
    conn = Connection(int(argv[1]))
    try:
        setup = conn.recv()
    except (EOFError, OSError):
        return 1
    tune_allocator()
    work = None
    try:
        work = make(conn, setup)
        work.run()
    except (EOFError, BrokenPipeError, ConnectionResetError):
        return 1  # the parent is gone: nothing to report to
    except BaseException as err:
        kind = type(err).__name__
        message = getattr(err, "message", None) or str(err) or kind
        hint = getattr(err, "hint", None)
        fatal = ("fatal", kind, message, hint, traceback.format_exc())
        with contextlib.suppress(OSError):  # through its lock: another thread may be sending
            work.send(fatal) if work is not None else conn.send(fatal)
        return 1
    finally:
        if work is not None:
            work.close()
    return 0
