"""SSH connections the way an ssh user expects them (paramiko underneath).

* **Where the settings come from**: :class:`SSHEnv` is read once, at the boundary
  (:meth:`SSHEnv.from_environ`): the home directory (``$HOME``), the ssh config file
  (``~/.ssh/config`` unless the caller names another, or none) and the agent socket
  (``$SSH_AUTH_SOCK``). Nothing below reads the environment, so a test hands in its own.
* **ssh_config**: ``Include``, Host aliases, ``HostName``, ``User``, ``Port``, ``IdentityFile``,
  ``IdentitiesOnly``, ``IdentityAgent`` (``none`` or a socket path),
  ``UserKnownHostsFile``, ``GlobalKnownHostsFile``, ``HostKeyAlias``, ``ProxyJump``
  (through a ``direct-tcpip`` channel of the jump host's own connection), ``ProxyCommand``,
  ``ConnectTimeout``, ``ServerAliveInterval``.
* **Host keys are checked strictly**, whatever ``StrictHostKeyChecking`` says: an unknown
  or changed key is a :class:`HostKeyError` that names the key type and SHA256 fingerprint
  and how to accept it. Nothing is ever added to a known_hosts file.
* **Login by key only**: the agent's keys, then the identity files (``IdentityFile``, or
  the default ``~/.ssh/id_*``). A passphrase-protected file is used through the agent.
"""

from __future__ import annotations

import base64
import contextlib
import dataclasses
import getpass
import glob
import hashlib
import io
import os
import re
import shlex
import socket
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import paramiko

from cargohold.errors import BackendIOError

DEFAULT_TIMEOUT = 30.0
DEFAULT_KEEPALIVE = 15
_DEFAULT_IDENTITIES = ("id_rsa", "id_ecdsa", "id_ecdsa_sk", "id_ed25519", "id_ed25519_sk", "id_dsa")
_GLOBAL_KNOWN_HOSTS = ("/etc/ssh/ssh_known_hosts", "/etc/ssh/ssh_known_hosts2")
_MAX_JUMPS = 8


class HostKeyError(BackendIOError):
    """The server's host key is not known, or differs from the known one (never transient)."""

    def __init__(self, message: str, *, hint: str, key_type: str, fingerprint: str) -> None:
        super().__init__(message, hint=hint, transient=False)
        self.key_type = key_type
        self.fingerprint = fingerprint


class LoginRefused(BackendIOError):
    """The server refused every key we offered (never transient)."""


@dataclass(frozen=True)
class SSHEnv:
    """The user's ssh setup, as read at the boundary."""

    home: Path
    #: The ssh config file; None reads none.
    config_file: Path | None
    #: The ssh agent's socket; None uses no agent.
    agent_socket: str | None
    #: The local user name (the default login name).
    local_user: str = field(default_factory=getpass.getuser)

    @classmethod
    def from_environ(cls, environ: Mapping[str, str], *, config_file: str | None = None) -> SSHEnv:
        """``config_file``: a path, "none" (read no config), or None for ``~/.ssh/config``."""
        home = Path(environ.get("HOME") or os.path.expanduser("~"))
        if config_file is None:
            config: Path | None = home / ".ssh" / "config"
        elif config_file.lower() == "none":
            config = None
        else:
            config = Path(_expand_home(config_file, home))
        return cls(home=home, config_file=config, agent_socket=environ.get("SSH_AUTH_SOCK") or None)


def _expand_home(path: str, home: Path) -> str:
    if path == "~" or path.startswith("~/"):
        return str(home) + path[1:]
    return path


@dataclass(frozen=True)
class Target:
    """Where to connect and how, resolved from a host name or alias and the ssh config."""

    alias: str
    hostname: str
    port: int
    user: str
    identity_files: tuple[Path, ...]
    identities_only: bool
    agent_socket: str | None
    known_hosts_files: tuple[Path, ...]
    host_key_alias: str | None
    proxy_jump: str | None
    proxy_command: str | None
    connect_timeout: float
    keepalive: int

    @property
    def known_hosts_name(self) -> str:
        """The name the host's keys are filed under in known_hosts (as OpenSSH files them)."""
        if self.host_key_alias:
            return self.host_key_alias
        return self.hostname if self.port == 22 else f"[{self.hostname}]:{self.port}"

    @property
    def where(self) -> str:
        shown = self.hostname if self.hostname == self.alias else f"{self.alias} ({self.hostname})"
        return f"{self.user}@{shown}:{self.port}"


class _Config(paramiko.SSHConfig):
    """paramiko's ssh config, with ``~`` and ``%d`` meaning :attr:`SSHEnv.home` (paramiko
    would read ``$HOME`` of this process)."""

    def __init__(self, home: Path) -> None:
        super().__init__()
        self._home = str(home)

    def _tokenize(self, config: Any, target_hostname: str, key: str, value: str) -> str:
        if key in ("identityfile", "proxycommand"):
            value = _expand_home(value, Path(self._home)).replace("%d", self._home)
        result: str = super()._tokenize(config, target_hostname, key, value)  # type: ignore[misc]
        return result


_INCLUDE = re.compile(r"^\s*include(?:\s*=\s*|\s+)(.+?)\s*$", re.IGNORECASE)
_MAX_INCLUDE_DEPTH = 16


def _config_text(path: Path, home: Path, depth: int = 0) -> str:
    """The config file's text with its ``Include`` lines replaced by the files they name
    (paramiko knows no Include): globs, ``~``, and paths relative to ``~/.ssh``, in place, so
    an Include inside a Host block stays conditional as in OpenSSH."""
    if depth > _MAX_INCLUDE_DEPTH:
        raise BackendIOError(f"ssh config Include nested more than {_MAX_INCLUDE_DEPTH} deep at {path}")
    out: list[str] = []
    for line in path.read_text(encoding="utf-8").splitlines():
        m = _INCLUDE.match(line)
        if m is None:
            out.append(line)
            continue
        for pattern in shlex.split(m.group(1)):
            pattern = _expand_home(pattern, home)
            if not pattern.startswith("/"):
                pattern = str(home / ".ssh" / pattern)
            for included in sorted(glob.glob(pattern)):
                if Path(included).is_file():
                    out.append(_config_text(Path(included), home, depth + 1))
    return "\n".join(out) + "\n"


def _read_config(env: SSHEnv) -> paramiko.SSHConfig:
    config = _Config(env.home)
    if env.config_file is None or not env.config_file.exists():
        return config
    try:
        config.parse(io.StringIO(_config_text(env.config_file, env.home)))
        return config
    except (OSError, UnicodeDecodeError, ValueError, paramiko.ConfigParseError) as err:
        raise BackendIOError(
            f"cannot read the ssh config {env.config_file}: {err}", hint="fix the file, or name another"
        ) from err


def resolve(
    host: str,
    *,
    env: SSHEnv,
    user: str | None = None,
    port: int | None = None,
    timeout: float | None = None,
) -> Target:
    """The connection settings for ``host`` (an alias or a name): what the URL says wins
    over the ssh config, which wins over the defaults."""
    opts: Any = _read_config(env).lookup(host)
    files: list[Path] = []
    for f in opts.get("identityfile", []):
        files.append(Path(_expand_home(f, env.home)))
    if not files:
        files = [env.home / ".ssh" / n for n in _DEFAULT_IDENTITIES]
    known_files = _split_files(opts.get("userknownhostsfile"), env.home) or [
        env.home / ".ssh" / "known_hosts",
        env.home / ".ssh" / "known_hosts2",
    ]
    known_files += _split_files(opts.get("globalknownhostsfile"), env.home) or [Path(p) for p in _GLOBAL_KNOWN_HOSTS]
    agent: str | None = env.agent_socket
    identity_agent = opts.get("identityagent")
    if identity_agent:
        agent = None if identity_agent.lower() == "none" else _expand_home(identity_agent, env.home)
        if agent == "SSH_AUTH_SOCK":
            agent = env.agent_socket
    jump = opts.get("proxyjump")
    command = opts.get("proxycommand")
    try:
        cfg_port = int(opts.get("port", 22))
        connect_timeout = float(opts["connecttimeout"]) if "connecttimeout" in opts else DEFAULT_TIMEOUT
        keepalive = int(opts.get("serveraliveinterval", DEFAULT_KEEPALIVE))
    except ValueError as err:
        raise BackendIOError(f"bad value in the ssh config for {host}: {err}") from err
    return Target(
        alias=host,
        hostname=opts.get("hostname", host),
        port=port or cfg_port,
        user=user or opts.get("user") or env.local_user,
        identity_files=tuple(files),
        identities_only=str(opts.get("identitiesonly", "no")).lower() == "yes",
        agent_socket=agent,
        known_hosts_files=tuple(known_files),
        host_key_alias=opts.get("hostkeyalias"),
        proxy_jump=None if not jump or jump.lower() == "none" else jump,
        proxy_command=None if not command or command.lower() == "none" else command,
        connect_timeout=timeout if timeout is not None else connect_timeout,
        keepalive=keepalive if keepalive > 0 else DEFAULT_KEEPALIVE,
    )


def _split_files(value: str | None, home: Path) -> list[Path]:
    if not value or value.lower() == "none":
        return []
    return [Path(_expand_home(v, home)) for v in value.split()]


# --- host keys ---------------------------------------------------------------------------


def fingerprint(key: paramiko.PKey) -> str:
    """``SHA256:...`` as ``ssh-keygen -l`` prints it."""
    digest = hashlib.sha256(key.asbytes()).digest()
    return "SHA256:" + base64.b64encode(digest).decode().rstrip("=")


def _known_keys(target: Target) -> dict[str, list[tuple[Path, paramiko.PKey]]]:
    """Key type -> the keys known for the target, with the file each is in."""
    found: dict[str, list[tuple[Path, paramiko.PKey]]] = {}
    for path in target.known_hosts_files:
        if not path.exists():
            continue
        keys = paramiko.HostKeys()
        try:
            keys.load(str(path))
        except (OSError, paramiko.SSHException, ValueError) as err:
            raise BackendIOError(f"cannot read known hosts file {path}: {err}") from err
        entry = keys.lookup(target.known_hosts_name)
        if entry is None:
            continue
        for key_type in entry:
            found.setdefault(key_type, []).append((path, entry[key_type]))
    return found


def _rsa_aware(key_type: str) -> list[str]:
    return ["rsa-sha2-512", "rsa-sha2-256", "ssh-rsa"] if key_type == "ssh-rsa" else [key_type]


def _short_type(key_type: str) -> str:
    """``ssh-keyscan -t`` spelling of a key type."""
    return {"ssh-ed25519": "ed25519", "ssh-rsa": "rsa", "ssh-dss": "dsa"}.get(
        key_type, "ecdsa" if key_type.startswith("ecdsa-") else key_type
    )


def check_host_key(target: Target, key: paramiko.PKey, known: dict[str, list[tuple[Path, paramiko.PKey]]]) -> None:
    """Raise :class:`HostKeyError` unless ``key`` is a known key of the target."""
    key_type = key.get_name()
    fp = fingerprint(key)
    ours = known.get(key_type, [])
    if any(k.asbytes() == key.asbytes() for _p, k in ours):
        return
    name = target.known_hosts_name
    first_file = target.known_hosts_files[0] if target.known_hosts_files else Path("~/.ssh/known_hosts")
    port = f"-p {target.port} " if target.port != 22 else ""
    # `ssh ALIAS` reads the alias's settings (Port, UserKnownHostsFile) from the ssh config
    ssh_once = f"ssh {target.alias}" if target.alias != target.hostname else f"ssh {port}{target.hostname}"
    if ours:
        files = sorted({str(p) for p, _k in ours})
        raise HostKeyError(
            f"the {key_type} host key of {name} has CHANGED (now {fp}; {', '.join(files)} has another): "
            "someone may be intercepting the connection, or the server was reinstalled",
            hint=f"if the change is expected, remove the old key with `ssh-keygen -R '{name}' -f {files[0]}` "
            f"and accept the new one (`{ssh_once}` once, comparing the fingerprint)",
            key_type=key_type,
            fingerprint=fp,
        )
    other = f" (known_hosts has only {', '.join(sorted(known))} keys for it)" if known else ""
    raise HostKeyError(
        f"the host key of {name} is not known: {key_type} {fp}{other}",
        hint=f"check the fingerprint with the server's admin, then accept it: "
        f"`ssh-keyscan {port}-t {_short_type(key_type)} {target.hostname} >> {first_file}` "
        f"(or `{ssh_once}` once)",
        key_type=key_type,
        fingerprint=fp,
    )


# --- connecting ----------------------------------------------------------------------------


def _unreachable(target: Target, err: BaseException) -> BackendIOError:
    if isinstance(err, socket.gaierror):
        transient = err.errno in (socket.EAI_AGAIN,)
        return BackendIOError(
            f"cannot resolve host name {target.hostname!r} of {target.alias}: {err.strerror}",
            hint="check the host name in the repository URL or the ssh config's HostName",
            transient=transient,
        )
    if isinstance(err, TimeoutError | socket.timeout):
        what = "timed out"
    elif isinstance(err, ConnectionRefusedError):
        what = "connection refused"
    else:
        what = str(err) or type(err).__name__
    return BackendIOError(
        f"cannot connect to {target.where}: {what}",
        hint="check that the SSH server runs and is reachable (host, port, firewall)",
        transient=True,
    )


class Connection:
    """One authenticated SSH transport (and the jump hosts' transports it runs through)."""

    def __init__(self, transport: paramiko.Transport, through: Sequence[Connection] = ()) -> None:
        self.transport = transport
        self._through = list(through)

    def alive(self) -> bool:
        return bool(self.transport.is_active()) and all(c.alive() for c in self._through)

    def close(self) -> None:
        with contextlib.suppress(Exception):
            self.transport.close()
        for c in self._through:
            c.close()


def connect(target: Target, env: SSHEnv, *, timeout: float | None = None, _depth: int = 0) -> Connection:
    """An authenticated connection to ``target`` (host key checked), or a BackendIOError."""
    io_timeout = timeout if timeout is not None else target.connect_timeout
    through: list[Connection] = []  # the jump hosts' connections, closed again on any failure
    sock: Any
    try:
        try:
            if target.proxy_jump:
                if _depth >= _MAX_JUMPS:
                    raise BackendIOError(f"more than {_MAX_JUMPS} ProxyJump hops to reach {target.alias}")
                hop: Connection | None = None
                for spec in target.proxy_jump.split(","):
                    jump_target = _jump_target(spec.strip(), env, hop is None, target.connect_timeout)
                    if hop is None:
                        hop = connect(jump_target, env, timeout=timeout, _depth=_depth + 1)
                    else:
                        hop = _connect_via(hop, jump_target, env, io_timeout)
                    through.append(hop)
                assert hop is not None
                sock = hop.transport.open_channel(
                    "direct-tcpip", (target.hostname, target.port), ("127.0.0.1", 0), timeout=target.connect_timeout
                )
            elif target.proxy_command:
                sock = paramiko.ProxyCommand(target.proxy_command)
            else:
                sock = socket.create_connection((target.hostname, target.port), timeout=target.connect_timeout)
        except (OSError, paramiko.SSHException, EOFError) as err:
            raise _unreachable(target, err) from err
        try:
            return Connection(_handshake(sock, target, env, io_timeout), through)
        except BaseException:
            with contextlib.suppress(Exception):
                sock.close()
            raise
    except BaseException:
        for c in through:
            c.close()
        raise


def _jump_target(spec: str, env: SSHEnv, first: bool, timeout: float) -> Target:
    """A ProxyJump hop, ``[user@]host[:port]`` or ``ssh://[user@]host[:port]``."""
    spec = spec.removeprefix("ssh://")
    user, _, hostport = spec.rpartition("@")
    host, port = hostport, None
    if hostport.startswith("["):
        host, _, rest = hostport[1:].partition("]")
        port = int(rest[1:]) if rest.startswith(":") else None
    elif hostport.count(":") == 1:
        host, p = hostport.split(":")
        port = int(p)
    jump = resolve(host, env=env, user=user or None, port=port, timeout=timeout)
    if not first:  # a later hop is reached through the one before: its own ProxyJump does not apply
        jump = dataclasses.replace(jump, proxy_jump=None, proxy_command=None)
    return jump


def _connect_via(hop: Connection, target: Target, env: SSHEnv, timeout: float) -> Connection:
    try:
        chan = hop.transport.open_channel(
            "direct-tcpip", (target.hostname, target.port), ("127.0.0.1", 0), timeout=target.connect_timeout
        )
    except (OSError, paramiko.SSHException, EOFError) as err:
        raise _unreachable(target, err) from err
    return Connection(_handshake(chan, target, env, timeout))


_GCM_CIPHERS = ("aes128-gcm@openssh.com", "aes256-gcm@openssh.com")


def _handshake(sock: Any, target: Target, env: SSHEnv, timeout: float) -> paramiko.Transport:
    known = _known_keys(target)
    transport = paramiko.Transport(sock)
    try:
        transport.banner_timeout = timeout
        transport.auth_timeout = timeout
        transport.handshake_timeout = timeout
        # Ask first for the key types known_hosts has for this host, as OpenSSH does, so a
        # server with several host keys shows the one we can check.
        opts = transport.get_security_options()
        preferred = [t for kt in known for t in _rsa_aware(kt) if t in opts.key_types]
        opts.key_types = tuple(dict.fromkeys([*preferred, *opts.key_types]))
        # AES-GCM first, as OpenSSH orders it: it authenticates each packet itself, where
        # paramiko's first choice (aes128-ctr) computes an HMAC per packet in Python.
        gcm = [c for c in _GCM_CIPHERS if c in opts.ciphers]
        opts.ciphers = tuple(dict.fromkeys([*gcm, *opts.ciphers]))
        try:
            transport.start_client(timeout=timeout)
            if not transport.initial_kex_done:  # paramiko returns quietly when the timeout passed
                raise TimeoutError("no key exchange")
        except (OSError, paramiko.SSHException, EOFError) as err:
            raise _unreachable(target, err) from err
        key = transport.get_remote_server_key()
        check_host_key(target, key, known)
        _authenticate(transport, target)
        transport.set_keepalive(target.keepalive)
        return transport
    except BaseException:
        transport.close()
        raise


def _agent_keys(path: str) -> tuple[list[paramiko.AgentKey], paramiko.Agent | None]:
    """The agent's keys at socket ``path`` (none when it does not answer)."""
    try:
        conn = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        conn.settimeout(5)
        conn.connect(path)
    except OSError:
        return [], None
    agent = paramiko.Agent.__new__(paramiko.Agent)
    paramiko.agent.AgentSSH.__init__(agent)
    try:
        agent._connect(conn)  # type: ignore[attr-defined]  # the socket we chose, not the one $SSH_AUTH_SOCK names
    except (paramiko.SSHException, OSError):
        conn.close()
        return [], None
    return list(agent.get_keys()), agent


def _load_key(path: Path) -> paramiko.PKey | str:
    """The private key in ``path``, or why it cannot be used."""
    try:
        return paramiko.PKey.from_path(str(path))
    except paramiko.PasswordRequiredException:
        return "passphrase-protected (add it to ssh-agent)"
    except TypeError as err:  # cryptography's word for an OpenSSH-format key with a passphrase
        if "password" in str(err).lower():
            return "passphrase-protected (add it to ssh-agent)"
        return f"unreadable: {err}"
    except (OSError, paramiko.SSHException, ValueError) as err:
        return f"unreadable: {err}"


def _public_blob(path: Path) -> bytes | None:
    try:
        fields = Path(str(path) + ".pub").read_text().split()
        return base64.b64decode(fields[1])
    except (OSError, IndexError, ValueError):
        return None


def _authenticate(transport: paramiko.Transport, target: Target) -> None:
    tried: list[str] = []
    agent_keys: list[paramiko.AgentKey] = []
    agent: paramiko.Agent | None = None
    if target.agent_socket:
        agent_keys, agent = _agent_keys(target.agent_socket)
    try:
        files = [p for p in target.identity_files if p.exists()]
        if target.identities_only:
            wanted = {b for b in (_public_blob(p) for p in files) if b}
            agent_keys = [k for k in agent_keys if k.asbytes() in wanted]
        candidates: list[tuple[str, paramiko.PKey | str]] = [
            (f"agent key {k.get_name()} {fingerprint(k)}", k) for k in agent_keys
        ]
        agent_blobs = {k.asbytes() for k in agent_keys}
        for p in files:
            blob = _public_blob(p)
            if blob is not None and blob in agent_blobs:
                continue  # offered through the agent already
            candidates.append((str(p), _load_key(p)))
        for label, key in candidates:
            if isinstance(key, str):
                tried.append(f"{label}: {key}")
                continue
            try:
                rest = transport.auth_publickey(target.user, key)
            except paramiko.BadAuthenticationType as err:
                raise LoginRefused(
                    f"the SSH server {target.where} does not accept key logins (only {', '.join(err.allowed_types)})",
                    hint="cargohold logs in with keys only: allow publickey authentication for this user",
                ) from err
            except paramiko.AuthenticationException:
                tried.append(label)
                continue
            except (OSError, paramiko.SSHException, EOFError) as err:
                raise _unreachable(target, err) from err
            if not rest and transport.is_authenticated():
                return
            tried.append(f"{label} (needs more: {', '.join(rest)})")
    finally:
        if agent is not None:
            agent.close()
    offered = "; ".join(tried) if tried else "no key (no agent, no identity file)"
    raise LoginRefused(
        f"the SSH server {target.where} refused the login: tried {offered}",
        hint=f"put one of these public keys into {target.user}'s ~/.ssh/authorized_keys on the server, "
        "or set User/IdentityFile for this host in the ssh config (or load the key into ssh-agent)",
    )
