"""sftp:// URLs and the ssh settings they resolve to (no server: tests/integration/test_sftp_backend.py)."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import paramiko
import pytest

from cargohold.backends._ssh import (
    HostKeyError,
    SSHEnv,
    Target,
    _known_keys,
    check_host_key,
    fingerprint,
    resolve,
)
from cargohold.backends.sftp import DEFAULT_CONNECTIONS, parse_url
from cargohold.errors import UsageError


def test_url_forms() -> None:
    loc = parse_url("sftp://backuphost/srv/repo")
    assert (loc.host, loc.user, loc.port, loc.path) == ("backuphost", None, None, "/srv/repo")
    assert loc.connections == DEFAULT_CONNECTIONS and loc.ssh_config is None
    loc = parse_url("sftp://alice@example.org:2222/srv/repo/?connections=8&timeout=5&ssh_config=/etc/x")
    assert (loc.host, loc.user, loc.port, loc.path) == ("example.org", "alice", 2222, "/srv/repo")
    assert (loc.connections, loc.timeout, loc.ssh_config) == (8, 5.0, "/etc/x")
    assert parse_url("sftp://h/~/backups/repo").path == "backups/repo"  # relative to the login directory
    assert parse_url("sftp://h/~").path == ""


@pytest.mark.parametrize(
    "url",
    [
        "sftp://host",
        "sftp://host/",
        "sftp:///srv/repo",
        "sftp://host/srv/../etc",
        "sftp://host/srv?colour=blue",
        "sftp://host/srv?connections=0",
        "sftp://host/srv?timeout=soon",
        "sftp://host:notaport/srv",
    ],
)
def test_bad_urls_are_usage_errors(url: str) -> None:
    with pytest.raises(UsageError):
        parse_url(url)


def test_env_is_read_at_the_boundary(tmp_path: Path) -> None:
    env = SSHEnv.from_environ({"HOME": str(tmp_path), "SSH_AUTH_SOCK": "/run/agent.sock"})
    assert env.config_file == tmp_path / ".ssh" / "config"
    assert env.agent_socket == "/run/agent.sock"
    assert SSHEnv.from_environ({"HOME": str(tmp_path)}, config_file="none").config_file is None
    assert SSHEnv.from_environ({"HOME": str(tmp_path)}, config_file="~/other").config_file == tmp_path / "other"
    assert SSHEnv.from_environ({"HOME": str(tmp_path)}).agent_socket is None


def _env(tmp_path: Path, config: str, agent: str | None = "/run/agent.sock") -> SSHEnv:
    (tmp_path / ".ssh").mkdir(exist_ok=True)
    (tmp_path / ".ssh" / "config").write_text(config)
    return SSHEnv(home=tmp_path, config_file=tmp_path / ".ssh" / "config", agent_socket=agent, local_user="me")


def test_host_alias_settings(tmp_path: Path) -> None:
    env = _env(
        tmp_path,
        "Host backuphost\n"
        "    HostName 192.0.2.7\n    Port 2222\n    User backup\n"
        "    IdentityFile ~/.ssh/backup_key\n    IdentitiesOnly yes\n"
        "    UserKnownHostsFile ~/.ssh/kh_backup /etc/kh\n    ConnectTimeout 7\n    ServerAliveInterval 4\n"
        "Host *\n    IdentityAgent none\n",
    )
    t = resolve("backuphost", env=env)
    assert (t.hostname, t.port, t.user) == ("192.0.2.7", 2222, "backup")
    assert t.identity_files == (tmp_path / ".ssh" / "backup_key",)
    assert t.identities_only and t.agent_socket is None
    assert t.known_hosts_files[:2] == (tmp_path / ".ssh" / "kh_backup", Path("/etc/kh"))
    assert (t.connect_timeout, t.keepalive) == (7.0, 4)
    assert t.known_hosts_name == "[192.0.2.7]:2222"
    # what the URL says wins over the config
    t = resolve("backuphost", env=env, user="root", port=22, timeout=3)
    assert (t.user, t.port, t.connect_timeout, t.known_hosts_name) == ("root", 22, 3.0, "192.0.2.7")


def test_include_of_other_config_files(tmp_path: Path) -> None:
    (tmp_path / ".ssh" / "config.d").mkdir(parents=True)
    (tmp_path / ".ssh" / "config.d" / "10-backup.conf").write_text("Host backuphost\n    HostName 192.0.2.9\n")
    (tmp_path / ".ssh" / "config.d" / "20-other.conf").write_text("Host other\n    Port 2200\n")
    (tmp_path / ".ssh" / "extra").write_text("Host extra\n    User extra-user\n")
    env = _env(tmp_path, "Include config.d/*.conf ~/.ssh/extra\nHost *\n    User everyone\n")
    assert resolve("backuphost", env=env).hostname == "192.0.2.9"
    assert resolve("other", env=env).port == 2200
    assert resolve("extra", env=env).user == "extra-user"
    assert resolve("backuphost", env=env).user == "everyone"


def test_defaults_without_config(tmp_path: Path) -> None:
    env = SSHEnv(home=tmp_path, config_file=None, agent_socket="/run/a", local_user="me")
    t = resolve("example.org", env=env)
    assert (t.hostname, t.port, t.user, t.agent_socket) == ("example.org", 22, "me", "/run/a")
    assert tmp_path / ".ssh" / "id_ed25519" in t.identity_files
    assert t.known_hosts_files[0] == tmp_path / ".ssh" / "known_hosts"
    assert t.proxy_jump is None and t.proxy_command is None


def test_proxy_settings(tmp_path: Path) -> None:
    env = _env(tmp_path, "Host inner\n    ProxyJump bastion:2200\nHost other\n    ProxyCommand nc %h %p\n")
    assert resolve("inner", env=env).proxy_jump == "bastion:2200"
    assert resolve("other", env=env).proxy_command == "nc other 22"


def test_a_later_proxy_jump_hop_drops_its_own_proxy_settings(tmp_path: Path) -> None:
    from cargohold.backends._ssh import _jump_target

    env = _env(tmp_path, "Host hop2\n    HostName 192.0.2.7\n    ProxyJump hop1\n    ProxyCommand nc %h %p\n")
    first = _jump_target("ssh://bob@hop2:2022", env, True, 7.0)
    assert (first.hostname, first.port, first.user, first.connect_timeout) == ("192.0.2.7", 2022, "bob", 7.0)
    assert first.proxy_jump == "hop1" and (first.proxy_command or "").startswith("nc 192.0.2.7 ")
    later = _jump_target("ssh://bob@hop2:2022", env, False, 7.0)  # reached through the hop before it
    assert (later.proxy_jump, later.proxy_command) == (None, None)
    assert later == Target(**{**first.__dict__, "proxy_jump": None, "proxy_command": None})


def _keygen(path: Path) -> str:
    """A new ed25519 key pair at ``path``; its public ``TYPE BASE64``."""
    subprocess.run(["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-f", str(path)], check=True)
    return " ".join(Path(f"{path}.pub").read_text().split()[:2])


def _check(target: Target, key: paramiko.PKey) -> None:
    check_host_key(target, key, _known_keys(target))


def test_host_key_checks(tmp_path: Path) -> None:
    server_line = _keygen(tmp_path / "server")
    key = paramiko.Ed25519Key.from_private_key_file(str(tmp_path / "server"))
    known = tmp_path / "known_hosts"
    env = _env(tmp_path, f"Host h\n    HostName 192.0.2.1\n    Port 2222\n    UserKnownHostsFile {known}\n")
    target = resolve("h", env=env)
    known.write_text(f"[192.0.2.1]:2222 {server_line}\n")
    _check(target, key)  # known: fine

    known.write_text("")
    with pytest.raises(HostKeyError) as unknown:
        _check(target, key)
    assert unknown.value.fingerprint == fingerprint(key) and fingerprint(key).startswith("SHA256:")
    text = str(unknown.value)
    assert "not known" in text and fingerprint(key) in text and "ssh-ed25519" in text
    assert f"ssh-keyscan -p 2222 -t ed25519 192.0.2.1 >> {known}" in text and "`ssh h` once" in text
    assert not unknown.value.transient
    assert known.read_text() == ""  # never accepted silently

    known.write_text(f"[192.0.2.1]:2222 {_keygen(tmp_path / 'impostor')}\n")
    with pytest.raises(HostKeyError) as changed:
        _check(target, key)
    assert "CHANGED" in str(changed.value) and f"ssh-keygen -R '[192.0.2.1]:2222' -f {known}" in str(changed.value)
    assert fingerprint(key) in str(changed.value)


def test_local_commands_do_not_import_paramiko() -> None:
    code = (
        "import sys, cargohold.cli.app, cargohold.backends as b; b.open_backend('/nonexistent/x'); "
        "sys.exit(1 if 'paramiko' in sys.modules else 0)"
    )
    assert subprocess.run([sys.executable, "-c", code]).returncode == 0


def test_server_answers_are_told_from_a_dead_channel() -> None:
    from cargohold.backends._sftp_session import is_status_error, raise_status
    from cargohold.backends.sftp import SFTPStatusError

    assert not is_status_error(OSError("Socket is closed"))  # paramiko's word for a closed channel
    for code, cls in ((2, FileNotFoundError), (3, PermissionError), (4, SFTPStatusError)):
        with pytest.raises(cls) as err:
            raise_status(code, "text")
        assert is_status_error(err.value)
