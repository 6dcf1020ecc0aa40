"""A real Docker engine for the tests: use the one that answers, else install and start one.

:func:`ensure_engine` returns a DOCKER_HOST-style URL of an engine that answers. On a
Linux machine where we are root and none answers, it installs Debian's ``docker.io`` if
``dockerd`` is missing and starts ``dockerd`` detached, with no bridge and no iptables
rules (containers use ``network_mode`` host or none). :func:`ensure_second_engine`
starts a second, independent engine (own data root, exec root, containerd namespace and
socket) for migration tests; :func:`stop_second_engine` stops it.

Never creates bridge or overlay networks and never initialises swarm.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import re
import shutil
import subprocess
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

import docker

from cargohold.docker.connect import DEFAULT_HOST
from cargohold.errors import TestbedError
from cargohold.testbed._system import (
    apt_install,
    file_lock,
    is_linux_root,
    log,
    log_tail,
    pid_in,
    spawn_daemon,
    state_dir,
    stop_pid,
)

#: dockerd flags that keep the engine off the machine's networks: no docker0 bridge
#: (which would take a private address range), no iptables/NAT rules.
NETWORK_FLAGS: tuple[str, ...] = (
    "--bridge=none",
    "--iptables=false",
    "--ip-masq=false",
    "--ip6tables=false",
)

DEFAULT_SECOND_BASE = Path("/run/cargohold-e2")
#: sun_path holds 108 bytes on Linux (104 on BSDs); keep well below.
MAX_SOCKET_PATH = 100
#: The pidfile dockerd writes when started without --pidfile.
DEFAULT_PIDFILE = Path("/var/run/docker.pid")
#: The API version every engine of the test bed must speak (Docker 20.10).
API_VERSION = "1.41"

# --- pure parts -------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class SecondEngineLayout:
    """Where a second engine keeps everything, all under one short base directory."""

    base: Path

    @property
    def data_root(self) -> Path:
        return self.base / "data"

    @property
    def exec_root(self) -> Path:
        return self.base / "exec"

    @property
    def pidfile(self) -> Path:
        return self.base / "docker.pid"

    @property
    def socket(self) -> Path:
        return self.base / "docker.sock"

    @property
    def host(self) -> str:
        return f"unix://{self.socket}"

    @property
    def config_file(self) -> Path:
        return self.base / "daemon.json"

    @property
    def key_file(self) -> Path:
        return self.base / "key.json"

    def daemon_config(self, dockerd_major: int | None) -> dict[str, str]:
        """Its own daemon.json, so /etc/docker/daemon.json of the first engine does not apply.

        Before Docker 23 the engine ID comes from a key file shared by default
        (/etc/docker/key.json); a second engine with the same ID would not look independent.
        """
        if dockerd_major is not None and dockerd_major < 23:
            return {"deprecated-key-path": str(self.key_file)}
        return {}

    @property
    def namespace(self) -> str:
        """containerd namespace: distinct from the first engine's "moby" even if both
        engines end up on one system containerd."""
        return "cargohold-" + hashlib.sha256(str(self.base).encode()).hexdigest()[:8]

    def check(self) -> None:
        if not self.base.is_absolute():
            raise TestbedError(f"the second engine's directory must be absolute, not {str(self.base)!r}")
        if len(str(self.socket).encode()) > MAX_SOCKET_PATH:
            raise TestbedError(
                f"socket path {self.socket} is longer than {MAX_SOCKET_PATH} bytes (unix sockets are limited to ~108)",
                hint="use a short base directory such as /run/cargohold-e2",
            )


def dockerd_args(layout: SecondEngineLayout | None = None) -> list[str]:
    """The dockerd command line: the default engine, or a second one in ``layout``."""
    args = ["dockerd", *NETWORK_FLAGS]
    if layout is not None:
        args += [
            f"--data-root={layout.data_root}",
            f"--exec-root={layout.exec_root}",
            f"--pidfile={layout.pidfile}",
            f"--config-file={layout.config_file}",
            f"--containerd-namespace={layout.namespace}",
            f"--containerd-plugins-namespace={layout.namespace}-plugins",
            f"--host={layout.host}",
        ]
    return args


def parse_dockerd_major(version_text: str) -> int | None:
    """19/20/23... from ``dockerd --version`` ("Docker version 20.10.24+dfsg1, build ...")."""
    match = re.search(r"version (\d+)\.", version_text)
    return int(match.group(1)) if match else None


def candidate_hosts(env: Mapping[str, str]) -> list[str]:
    """Where to look for an engine that answers: DOCKER_HOST, then the default socket."""
    hosts: list[str] = []
    if env.get("DOCKER_HOST", "").strip():
        hosts.append(env["DOCKER_HOST"].strip())
    if DEFAULT_HOST not in hosts:
        hosts.append(DEFAULT_HOST)
    return hosts


# --- talking to an engine ------------------------------------------------------------------


def engine_answers(host: str, *, timeout: float = 3.0) -> bool:
    """True if a Docker engine answers a ping at ``host`` (never raises)."""
    if host.startswith("unix://") and not Path(host[len("unix://") :]).exists():
        return False
    try:
        client = docker.APIClient(base_url=host, version=API_VERSION, timeout=timeout)
    except Exception:
        return False
    try:
        return bool(client.ping())
    except Exception:
        return False
    finally:
        client.close()


def _wait_until_answers(host: str, log_path: Path, proc: subprocess.Popen[bytes] | None, timeout: float) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if engine_answers(host, timeout=2.0):
            return
        if proc is not None and proc.poll() is not None:
            raise TestbedError(
                f"dockerd exited with code {proc.returncode} before answering at {host}: {log_tail(log_path)}",
                hint=f"full log: {log_path}",
            )
        time.sleep(0.2)
    raise TestbedError(
        f"dockerd did not answer at {host} within {timeout:.0f} s: {log_tail(log_path)}",
        hint=f"full log: {log_path}",
    )


def _spawn(args: Sequence[str], log_path: Path) -> subprocess.Popen[bytes]:
    return spawn_daemon(args, log_path)


def _need_root(what: str, host: str) -> None:
    if not is_linux_root():
        for candidate in host.split(" or "):
            path = candidate[len("unix://") :] if candidate.startswith("unix://") else ""
            if path and Path(path).exists() and not os.access(path, os.R_OK | os.W_OK):
                raise TestbedError(
                    f"permission denied on the Docker socket {path}",
                    hint="join the 'docker' group, run as root, or set DOCKER_HOST to an engine you may use",
                )
        raise TestbedError(
            f"no Docker engine answers at {host}; {what} needs root on Linux",
            hint="start a Docker engine (API >= 1.41) and set DOCKER_HOST to it, "
            "or run `python -m cargohold.testbed engine` as root on Linux",
        )


def _dockerd_major() -> int | None:
    try:
        out = subprocess.run(["dockerd", "--version"], capture_output=True, text=True, timeout=30).stdout
    except (OSError, subprocess.SubprocessError):
        return None
    return parse_dockerd_major(out)


def _ensure_dockerd_installed() -> None:
    if shutil.which("dockerd") is None:
        apt_install(["docker.io"], why="dockerd is not installed")
        if shutil.which("dockerd") is None:
            raise TestbedError("docker.io was installed but dockerd is still not on PATH")


# --- the engines ------------------------------------------------------------------------------


def ensure_engine(*, timeout: float = 60.0, env: Mapping[str, str] | None = None) -> str:
    """Return the URL of a Docker engine that answers, starting a local one if needed.

    Looks at ``DOCKER_HOST`` and then the default socket. When neither answers and we
    are root on Linux: installs ``docker.io`` if ``dockerd`` is missing, starts
    ``dockerd`` on the default socket and waits until it answers. Raises
    :class:`~cargohold.errors.TestbedError` saying what to provide otherwise.
    """
    env = os.environ if env is None else env
    hosts = candidate_hosts(env)
    for host in hosts:
        if engine_answers(host):
            return host
    _need_root("starting one", " or ".join(hosts))
    with file_lock("engine"):
        if engine_answers(DEFAULT_HOST):
            return DEFAULT_HOST
        _ensure_dockerd_installed()
        log_path = state_dir() / "dockerd.log"
        proc = None
        if pid_in(DEFAULT_PIDFILE) is None:
            proc = _spawn(dockerd_args(), log_path)
        else:
            log.info("dockerd is already starting (pid file %s); waiting", DEFAULT_PIDFILE)
        _wait_until_answers(DEFAULT_HOST, log_path, proc, timeout)
    return DEFAULT_HOST


def second_engine_host(base_dir: Path | str = DEFAULT_SECOND_BASE) -> str:
    return SecondEngineLayout(Path(base_dir)).host


def ensure_second_engine(base_dir: Path | str = DEFAULT_SECOND_BASE, *, timeout: float = 60.0) -> str:
    """Start (if not running) a second engine independent of the first; return its URL.

    It has its own data root, exec root, pid file, containerd namespace and socket
    ``unix://BASE/docker.sock``, and the same network flags as the first.
    """
    layout = SecondEngineLayout(Path(base_dir))
    layout.check()
    if engine_answers(layout.host):
        return layout.host
    _need_root("a second engine", layout.host)
    _ensure_dockerd_installed()
    with file_lock("engine-" + layout.namespace):
        if engine_answers(layout.host):
            return layout.host
        layout.base.mkdir(parents=True, exist_ok=True)
        config = layout.daemon_config(_dockerd_major())
        layout.config_file.write_text(json.dumps(config, indent=2) + "\n")
        log_path = state_dir() / f"dockerd-{layout.namespace}.log"
        proc = None
        if pid_in(layout.pidfile) is None:
            with contextlib.suppress(FileNotFoundError):
                layout.socket.unlink()
            proc = _spawn(dockerd_args(layout), log_path)
        _wait_until_answers(layout.host, log_path, proc, timeout)
    return layout.host


def stop_second_engine(
    base_dir: Path | str = DEFAULT_SECOND_BASE, *, timeout: float = 30.0, purge: bool = False
) -> bool:
    """Stop the second engine in ``base_dir``; True if one was running.

    With ``purge`` its data (images, volumes, containers) is deleted too.
    """
    layout = SecondEngineLayout(Path(base_dir))
    layout.check()
    with file_lock("engine-" + layout.namespace):
        pid = pid_in(layout.pidfile)
        if pid is not None:
            log.info("stopping the second engine (pid %d)", pid)
            stop_pid(pid, "the second engine", timeout=timeout)
        if purge and layout.base.exists():
            busy = _mounts_under(layout.base)
            if busy:
                raise TestbedError(
                    f"not purging {layout.base}: {len(busy)} file systems are still mounted under it (first: {busy[0]})"
                )
            shutil.rmtree(layout.base)
    return pid is not None


def _mounts_under(base: Path) -> list[str]:
    try:
        lines = Path("/proc/self/mounts").read_text().splitlines()
    except OSError:
        return []
    prefix = str(base).rstrip("/") + "/"
    points = [line.split()[1] for line in lines if len(line.split()) > 1]
    return [p for p in points if p.startswith(prefix)]
