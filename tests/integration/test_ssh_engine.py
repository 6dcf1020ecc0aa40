"""DOCKER_HOST=ssh://… through a real OpenSSH server on 127.0.0.1, as the docker CLI does it."""

from __future__ import annotations

import json
import os
import shutil
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from cargohold.testbed._system import apt_install
from cargohold.testbed.resources import Resources

SSHD = "/usr/sbin/sshd"
CLI = [sys.executable, "-m", "cargohold.cli.app"]


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@pytest.fixture(scope="module")
def ssh_env(tmp_path_factory: pytest.TempPathFactory) -> Iterator[dict[str, str]]:
    """An sshd on 127.0.0.1 that lets us in as ourselves by key, and an `ssh` that knows it."""
    if not Path(SSHD).exists():
        apt_install(["openssh-server"], why="the ssh:// engine test needs an OpenSSH server")
    if shutil.which("docker") is None:
        pytest.fail("the docker CLI is needed on the ssh side (`docker system dial-stdio`)")
    d = tmp_path_factory.mktemp("ssh")
    subprocess.run(["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-f", str(d / "host")], check=True)
    subprocess.run(["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-f", str(d / "client")], check=True)
    (d / "authorized_keys").write_text((d / "client.pub").read_text())
    os.chmod(d / "authorized_keys", 0o600)
    port = _free_port()
    (d / "sshd_config").write_text(
        f"Port {port}\nListenAddress 127.0.0.1\nHostKey {d / 'host'}\nPidFile {d / 'sshd.pid'}\n"
        f"AuthorizedKeysFile {d / 'authorized_keys'}\nPasswordAuthentication no\n"
        "KbdInteractiveAuthentication no\nPermitRootLogin prohibit-password\nUsePAM no\nStrictModes no\n"
        "SetEnv PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin\n"
    )
    Path("/run/sshd").mkdir(exist_ok=True)  # privilege separation directory
    proc = subprocess.Popen([SSHD, "-D", "-e", "-f", str(d / "sshd_config")], stderr=subprocess.PIPE)
    user = os.environ.get("USER") or "root"
    (d / "ssh_config").write_text(
        f"Host 127.0.0.1\n  Port {port}\n  User {user}\n  IdentityFile {d / 'client'}\n"
        "  StrictHostKeyChecking no\n  UserKnownHostsFile /dev/null\n  LogLevel ERROR\n  BatchMode yes\n"
    )
    bindir = d / "bin"
    bindir.mkdir()
    # docker-py runs plain `ssh`; this one reads our config (ssh ignores $HOME for ~/.ssh).
    (bindir / "ssh").write_text(f'#!/bin/sh\nexec {shutil.which("ssh")} -F {d / "ssh_config"} "$@"\n')
    os.chmod(bindir / "ssh", 0o755)
    deadline = time.monotonic() + 20
    while True:
        with socket.socket() as s:
            if s.connect_ex(("127.0.0.1", port)) == 0:
                break
        if proc.poll() is not None or time.monotonic() > deadline:
            err = proc.stderr.read().decode() if proc.stderr else ""
            pytest.fail(f"sshd did not start: {err}")
        time.sleep(0.1)
    env = {
        **os.environ,
        "PATH": f"{bindir}:{os.environ['PATH']}",
        "DOCKER_HOST": f"ssh://{user}@127.0.0.1:{port}",
    }
    try:
        yield env
    finally:
        proc.terminate()
        proc.wait(10)


def test_volumes_over_ssh(ssh_env: dict[str, str], resources: Resources, busybox_image: str) -> None:
    vol = resources.volume("ssh")
    ctr = resources.container(
        busybox_image, volumes={vol: "/data"}, mounts=[{"Type": "bind", "Source": "/tmp", "Target": "/hosttmp"}]
    )
    res = subprocess.run([*CLI, "volumes", "--json"], env=ssh_env, capture_output=True, text=True, timeout=120)
    assert res.returncode == 0, res.stderr
    doc = json.loads(res.stdout)
    assert doc["engine"]["host"] == ssh_env["DOCKER_HOST"] and doc["engine"]["local"] is False
    [entry] = [v for v in doc["volumes"] if v["name"] == vol]
    assert entry["containers"][0]["name"] == ctr

    res = subprocess.run([*CLI, "mounts", "--json"], env=ssh_env, capture_output=True, text=True, timeout=120)
    assert res.returncode == 0, res.stderr
    [c] = [c for c in json.loads(res.stdout)["containers"] if c["name"] == ctr]
    bind = next(m for m in c["mounts"] if m["type"] == "bind")
    assert bind["source_exists"] is None  # a remote engine's paths are not ours to check


def test_unreachable_ssh_host_is_one_line(ssh_env: dict[str, str]) -> None:
    env = {**ssh_env, "DOCKER_HOST": f"ssh://nobody@127.0.0.1:{_free_port()}"}
    res = subprocess.run([*CLI, "volumes"], env=env, capture_output=True, text=True, timeout=120)
    assert res.returncode == 3
    assert "cannot reach the Docker engine at ssh://" in res.stderr and "Traceback" not in res.stderr
