"""A private OpenSSH sshd on 127.0.0.1: a real SFTP server for the SFTP backend's tests.

:func:`start_sshd` makes a state directory (generated ed25519 host and client keys,
``authorized_keys``, ``known_hosts``, its own ``sshd_config``: key-only login as the
current user, ``internal-sftp``), starts ``sshd -D`` on a free port of 127.0.0.1 and
waits for its banner. :func:`stop_sshd` stops it by its recorded PID and removes the
directory. Debian's ``openssh-server`` and ``openssh-client`` are installed when missing
(as root). Nothing of the user's own ``~/.ssh`` is read or written: a client uses the
files of :class:`Sshd` (:meth:`Sshd.ssh_config` writes a config block for them).
"""

from __future__ import annotations

import contextlib
import getpass
import json
import os
import shutil
import signal
import socket
import subprocess
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

from cargohold.errors import TestbedError
from cargohold.testbed._system import (
    OWNER_FILE,
    apt_install,
    free_port,
    log,
    log_tail,
    orphaned_dirs,
    owned_temp_dir,
    pid_alive,
    spawn_daemon,
    stop_pid,
)

SSHD = Path("/usr/sbin/sshd")
PACKAGES = ("openssh-server", "openssh-client")


def default_base() -> Path:
    """Where ``python -m cargohold.testbed sshd start`` keeps its server (per user)."""
    return Path(tempfile.gettempdir()) / f"cargohold-sshd-{os.getuid()}"


@dataclass(frozen=True)
class Sshd:
    """A running test sshd and the client-side files that reach it."""

    base: Path
    port: int
    pid: int
    user: str
    host: str = "127.0.0.1"

    @property
    def client_key(self) -> Path:
        return self.base / "id_ed25519"

    @property
    def known_hosts(self) -> Path:
        return self.base / "known_hosts"

    @property
    def host_public_key(self) -> Path:
        return self.base / "host_ed25519.pub"

    @property
    def data(self) -> Path:
        """A directory for test repositories (the server's file system is this machine's)."""
        return self.base / "data"

    @property
    def log_file(self) -> Path:
        return self.base / "sshd.log"

    def ssh_config(
        self, alias: str, *, known_hosts: Path | None = None, key: Path | None = None, port: int | None = None
    ) -> str:
        """An ssh_config block naming this server ``alias``, with its key and known_hosts;
        ``port``: another port that reaches it (a proxy's)."""
        return (
            f"Host {alias}\n"
            f"    HostName {self.host}\n"
            f"    Port {port or self.port}\n"
            f"    User {self.user}\n"
            f"    IdentityFile {key or self.client_key}\n"
            f"    IdentitiesOnly yes\n"
            f"    IdentityAgent none\n"
            f"    UserKnownHostsFile {known_hosts or self.known_hosts}\n"
        )

    def known_hosts_line(self, port: int | None = None) -> str:
        """The known_hosts line of the server's host key at its address (``port``: another
        port that reaches it, a proxy's)."""
        key = self.host_public_key.read_text().split()[:2]
        return f"[{self.host}]:{port or self.port} {' '.join(key)}\n"

    def session_pids(self) -> list[int]:
        """The sshd processes serving connections: every descendant of the listener."""
        parents: dict[int, int] = {}
        for entry in Path("/proc").iterdir():
            if not entry.name.isdigit():
                continue
            try:
                stat = (entry / "stat").read_text()
            except OSError:
                continue
            parents[int(entry.name)] = int(stat.rsplit(")", 1)[1].split()[1])
        found: set[int] = set()
        frontier = {self.pid}
        while frontier:
            frontier = {pid for pid, ppid in parents.items() if ppid in frontier and pid not in found}
            found |= frontier
        return sorted(found)


def sshd_status(base: Path) -> Sshd | None:
    """The sshd recorded in ``base`` when it still runs."""
    try:
        info = json.loads((base / "sshd.json").read_text())
    except (OSError, ValueError):
        return None
    sshd = Sshd(base=base, port=int(info["port"]), pid=int(info["pid"]), user=str(info["user"]))
    return sshd if pid_alive(sshd.pid) else None


def _ensure_installed() -> None:
    if SSHD.exists() and shutil.which("ssh-keygen"):
        return
    apt_install(list(PACKAGES), why="the SFTP tests need OpenSSH")


def _keygen(path: Path, comment: str) -> None:
    subprocess.run(
        ["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-C", comment, "-f", str(path)],
        check=True,
        stdin=subprocess.DEVNULL,
        stdout=subprocess.DEVNULL,
    )


def _config(base: Path, port: int, sftp: bool = True) -> str:
    subsystem = "Subsystem sftp internal-sftp\n" if sftp else ""
    return (
        f"ListenAddress 127.0.0.1:{port}\n"
        f"HostKey {base / 'host_ed25519'}\n"
        f"PidFile {base / 'sshd.pid'}\n"
        f"AuthorizedKeysFile {base / 'authorized_keys'}\n"
        "PermitRootLogin prohibit-password\n"
        "PubkeyAuthentication yes\n"
        "PasswordAuthentication no\n"
        "KbdInteractiveAuthentication no\n"
        "UsePAM no\n"
        # the state directory may sit under a world-writable /tmp
        "StrictModes no\n"
        "AllowTcpForwarding yes\n"
        f"{subsystem}"
        "LogLevel VERBOSE\n"
    )


def _banner(port: int, timeout: float = 1.0) -> bool:
    try:
        with socket.create_connection(("127.0.0.1", port), timeout=timeout) as s:
            return s.recv(64).startswith(b"SSH-2.0-")
    except OSError:
        return False


def start_sshd(base: Path | None = None, *, timeout: float = 15.0, sftp: bool = True) -> Sshd:
    """Start a private sshd whose state lives in ``base`` (reused when it runs already);
    ``sftp=False`` leaves the SFTP subsystem out (a server that offers none)."""
    base = base or default_base()
    running = sshd_status(base)
    if running is not None:
        return running
    _ensure_installed()
    owner = ""
    with contextlib.suppress(OSError):
        owner = (base / OWNER_FILE).read_text()  # of a temp_base: kept
    stop_sshd(base)
    base.mkdir(parents=True, exist_ok=True)
    if owner:
        (base / OWNER_FILE).write_text(owner)
    base.chmod(0o700)
    (base / "data").mkdir()
    _keygen(base / "host_ed25519", "cargohold-testbed-host")
    _keygen(base / "id_ed25519", "cargohold-testbed-client")
    shutil.copy(base / "id_ed25519.pub", base / "authorized_keys")
    (base / "authorized_keys").chmod(0o600)
    Path("/run/sshd").mkdir(parents=True, exist_ok=True)  # sshd's privilege separation directory
    user = getpass.getuser()
    last = ""
    for _attempt in range(3):  # a free port may be taken between our probe and sshd's bind
        port = free_port()
        (base / "sshd_config").write_text(_config(base, port, sftp))
        check = subprocess.run([str(SSHD), "-t", "-f", str(base / "sshd_config")], capture_output=True, text=True)
        if check.returncode != 0:
            raise TestbedError(f"sshd rejects its test config: {check.stderr.strip()}")
        log.info("starting sshd on 127.0.0.1:%d (state: %s)", port, base)
        proc = spawn_daemon([str(SSHD), "-D", "-f", str(base / "sshd_config"), "-E", str(base / "sshd.log")], None)
        sshd = Sshd(base=base, port=port, pid=proc.pid, user=user)
        sshd.known_hosts.write_text(sshd.known_hosts_line())
        (base / "sshd.json").write_text(json.dumps({"port": port, "pid": proc.pid, "user": user}))
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline and proc.poll() is None:
            if _banner(port):
                return sshd
            time.sleep(0.05)
        last = log_tail(base / "sshd.log")
        with contextlib.suppress(ProcessLookupError):
            proc.kill()
        proc.wait()
    raise TestbedError(f"sshd did not start: {last}", hint=f"see {base / 'sshd.log'}")


def stop_sshd(base: Path | None = None) -> bool:
    """Stop the sshd recorded in ``base`` (and the sessions it serves); remove ``base``.

    False when none was running."""
    base = base or default_base()
    sshd = sshd_status(base)
    if sshd is not None:
        for pid in sshd.session_pids():
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGTERM)
        stop_pid(sshd.pid, "sshd")
    shutil.rmtree(base, ignore_errors=True)
    return sshd is not None


_TEMP_PREFIX = "ch-sshd-"


def temp_base() -> Path:
    """A new short directory for an sshd of its own (a test session's), naming this process as
    its owner, so that :func:`sweep_orphans` can stop it if this process dies without stopping
    it (a test run killed by a timeout)."""
    return owned_temp_dir(_TEMP_PREFIX)


def sweep_orphans() -> list[Path]:
    """Stop the sshds of :func:`temp_base` directories whose owner process is gone; the
    directories they were in. Directories without an owner record are left alone."""
    swept = orphaned_dirs(_TEMP_PREFIX)
    for base in swept:
        log.info("stopping the orphaned sshd in %s", base)
        stop_sshd(base)
    return swept
