"""Machine-side helpers of the test bed: state directory, locks, logged commands, apt."""

from __future__ import annotations

import contextlib
import fcntl
import logging
import os
import shutil
import subprocess
import sys
from collections.abc import Iterator, Mapping, Sequence
from pathlib import Path

from cargohold.errors import TestbedError

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
