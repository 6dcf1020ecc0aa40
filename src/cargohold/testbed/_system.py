"""Machine-side helpers of the test bed: state directory, locks, logged commands, apt, and the
daemons it starts (detached, found by their recorded pid, stopped by it)."""

from __future__ import annotations

import contextlib
import fcntl
import logging
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator, Mapping, Sequence
from pathlib import Path
from typing import BinaryIO

from cargohold.errors import TestbedError
from cargohold.procinfo import owner_gone, owner_token, process_gone

log = logging.getLogger("cargohold.testbed")

#: Overrides where logs and locks go.
STATE_ENV = "CARGOHOLD_TESTBED_STATE"


def is_linux_root() -> bool:
    return sys.platform.startswith("linux") and os.geteuid() == 0


def state_dir(env: Mapping[str, str] | None = None) -> Path:
    """Where the test bed keeps its logs and lock files (created on demand).

    ``$CARGOHOLD_TESTBED_STATE``, else ``/var/log/cargohold-testbed`` for root, else
    ``$XDG_STATE_HOME/cargohold-testbed`` (``~/.local/state/cargohold-testbed``).
    """
    env = os.environ if env is None else env
    if env.get(STATE_ENV):
        path = Path(env[STATE_ENV])
    elif is_linux_root():
        path = Path("/var/log/cargohold-testbed")
    else:
        base = env.get("XDG_STATE_HOME") or str(Path(env.get("HOME", str(Path.home()))) / ".local" / "state")
        path = Path(base) / "cargohold-testbed"
    try:
        path.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise TestbedError(f"cannot create the test bed state directory {path}: {exc}") from exc
    return path


@contextlib.contextmanager
def file_lock(name: str) -> Iterator[None]:
    """An exclusive lock shared by every process of this machine (blocks until free)."""
    path = state_dir() / f"{name}.lock"
    with open(path, "a+b") as handle:
        fcntl.flock(handle.fileno(), fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(handle.fileno(), fcntl.LOCK_UN)


def log_tail(path: Path, lines: int = 5) -> str:
    """The last lines of a log file joined with " | ", for one-line error messages."""
    try:
        text = path.read_text(errors="replace")
    except OSError:
        return "(no log)"
    kept = [line.strip() for line in text.splitlines() if line.strip()][-lines:]
    return " | ".join(kept) or "(empty log)"


def run_logged(args: Sequence[str], log_path: Path, *, env: Mapping[str, str] | None = None) -> None:
    """Run a command to completion, appending its output to ``log_path``; raise on failure."""
    log.info("running %s (log: %s)", " ".join(args[:3]) + (" ..." if len(args) > 3 else ""), log_path)
    full_env = {**os.environ, **(env or {})}
    try:
        with open(log_path, "ab") as out:
            out.write(f"\n$ {' '.join(args)}\n".encode())
            out.flush()
            proc = subprocess.run(
                list(args), stdin=subprocess.DEVNULL, stdout=out, stderr=subprocess.STDOUT, env=full_env
            )
    except OSError as exc:
        raise TestbedError(f"cannot run {args[0]}: {exc}") from exc
    if proc.returncode != 0:
        raise TestbedError(
            f"{args[0]} failed with exit code {proc.returncode}: {log_tail(log_path)}",
            hint=f"full log: {log_path}",
        )


def apt_install(packages: Sequence[str], *, why: str) -> None:
    """Install Debian packages (root on a Debian-like Linux only)."""
    if not is_linux_root() or shutil.which("apt-get") is None:
        raise TestbedError(
            f"{why}: install the Debian package(s) {' '.join(packages)} "
            "(this needs root on Debian/Ubuntu; the test bed does it itself when run as root)"
        )
    log_path = state_dir() / "apt.log"
    with file_lock("apt"):
        env = {"DEBIAN_FRONTEND": "noninteractive"}
        run_logged(["apt-get", "update"], log_path, env=env)
        run_logged(["apt-get", "install", "-y", *packages], log_path, env=env)


# --- daemons ------------------------------------------------------------------------------------

# Popen objects of the daemons this process started, polled by :func:`reap` once they end.
_STARTED: list[subprocess.Popen[bytes]] = []


def spawn_daemon(args: Sequence[str], log_path: Path | None) -> subprocess.Popen[bytes]:
    """Start a long-lived daemon in its own session, detached from our terminal, its output
    appended to ``log_path`` (after a ``$ command`` line; ``None``: discarded)."""
    log.info("starting %s (log: %s)", " ".join(args), log_path or "none")
    with contextlib.ExitStack() as stack:
        out: int | BinaryIO = subprocess.DEVNULL
        if log_path is not None:
            out = stack.enter_context(open(log_path, "ab"))
            out.write(f"\n$ {' '.join(args)}\n".encode())
            out.flush()
        try:
            proc = subprocess.Popen(
                list(args),
                stdin=subprocess.DEVNULL,
                stdout=out,
                stderr=subprocess.STDOUT if log_path is not None else subprocess.DEVNULL,
                start_new_session=True,
                close_fds=True,
            )
        except OSError as exc:
            raise TestbedError(f"cannot start {args[0]}: {exc}") from exc
    _STARTED.append(proc)
    return proc


def reap() -> None:
    """Collect the daemons we started that have ended (no zombies)."""
    for proc in list(_STARTED):
        if proc.poll() is not None:
            _STARTED.remove(proc)


def pid_alive(pid: int) -> bool:
    """Whether process ``pid`` runs (a zombie does not)."""
    return not process_gone(pid, None)


def pid_in(pidfile: Path) -> int | None:
    """The pid recorded in ``pidfile`` while that process runs; None when none is."""
    try:
        pid = int(pidfile.read_text().strip())
    except (OSError, ValueError):
        return None
    return pid if pid_alive(pid) else None


def stop_pid(pid: int, what: str, *, timeout: float = 10.0) -> bool:
    """SIGTERM ``pid`` and wait up to ``timeout`` seconds for it to end, then SIGKILL it (and
    wait a little more). True when it is gone."""
    with contextlib.suppress(ProcessLookupError):
        os.kill(pid, signal.SIGTERM)
    if not wait_gone(pid, timeout):
        log.warning("%s (pid %d) ignored SIGTERM; killing it", what, pid)
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, signal.SIGKILL)
        return wait_gone(pid, 5.0)
    return True


def wait_gone(pid: int, timeout: float) -> bool:
    """Wait up to ``timeout`` seconds for process ``pid`` to end (reaping the daemons we
    started); whether it has."""
    deadline = time.monotonic() + timeout
    while True:
        reap()
        if not pid_alive(pid):
            return True
        if time.monotonic() >= deadline:
            return False
        time.sleep(0.05)


def free_port(preferred: int | None = None) -> int:
    """A TCP port of 127.0.0.1 free right now: ``preferred`` when it is, else any."""
    for port in ([preferred] if preferred else []) + [0]:
        with socket.socket() as s:
            try:
                s.bind(("127.0.0.1", port))
            except OSError:
                continue
            return int(s.getsockname()[1])
    raise TestbedError("no free TCP port on 127.0.0.1")


# --- directories of daemons owned by a process ----------------------------------------------------

#: The file of an :func:`owned_temp_dir` naming the process that owns it.
OWNER_FILE = "owner"


def _temp_root() -> Path:
    return Path("/tmp") if Path("/tmp").is_dir() else Path(tempfile.gettempdir())


def owned_temp_dir(prefix: str) -> Path:
    """A new short directory ``/tmp/PREFIXxxxx`` for a daemon of this process (a test session's),
    naming this process as its owner, so that :func:`orphaned_dirs` finds it should this process
    die without stopping the daemon (a test run killed by a timeout)."""
    base = Path(tempfile.mkdtemp(prefix=prefix, dir=_temp_root()))
    (base / OWNER_FILE).write_text(owner_token())
    return base


def orphaned_dirs(prefix: str) -> list[Path]:
    """The :func:`owned_temp_dir` directories of ``prefix`` whose owner process is gone.
    Directories without an owner record are not listed."""
    found = []
    for base in sorted(_temp_root().glob(prefix + "*")):
        try:
            token = (base / OWNER_FILE).read_text().strip()
        except OSError:
            continue
        if token and owner_gone(token):
            found.append(base)
    return found
