"""Find the engine the way the docker CLI does.

Precedence: an explicit ``--host``, then ``DOCKER_HOST``, then an explicit
``--context``, then ``DOCKER_CONTEXT``, then ``currentContext`` of the docker config
file, then the default socket.
"""

from __future__ import annotations

import hashlib
import json
import os
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from urllib.parse import urlsplit

from cargohold.errors import EngineConfigError

DEFAULT_HOST = "unix:///var/run/docker.sock"
_SCHEMES = ("unix", "tcp", "ssh", "http", "https", "npipe")


@dataclass(frozen=True, slots=True)
class Endpoint:
    host: str
    #: How it was chosen, for messages: "--host", "DOCKER_HOST", "context NAME", "default".
    origin: str
    tls_verify: bool = False
    cert_path: str | None = None

    @property
    def scheme(self) -> str:
        return self.host.split("://", 1)[0]

    @property
    def is_local(self) -> bool:
        """The engine runs on this machine (its paths are our paths)."""
        return self.scheme == "unix"

    @property
    def socket_path(self) -> str | None:
        return self.host[len("unix://") :] if self.scheme == "unix" else None


def validate_host(host: str, origin: str) -> str:
    """Check a DOCKER_HOST-style URL; return it normalised."""
    value = host.strip()
    if "://" not in value:
        raise EngineConfigError(f"{origin}={host!r} is not a URL")
    scheme, rest = value.split("://", 1)
    if scheme not in _SCHEMES:
        raise EngineConfigError(f"{origin}={host!r}: unknown scheme {scheme!r}")
    if scheme == "unix":
        if not rest.startswith("/"):
            raise EngineConfigError(f"{origin}={host!r}: a unix socket needs an absolute path")
        return value
    if scheme == "npipe":
        return value
    parts = urlsplit(value)
    if not parts.hostname:
        raise EngineConfigError(f"{origin}={host!r}: no host name")
    try:
        port = parts.port
    except ValueError as exc:
        raise EngineConfigError(f"{origin}={host!r}: bad port") from exc
    if scheme in ("tcp", "http", "https") and port is None:
        raise EngineConfigError(f"{origin}={host!r}: a TCP endpoint needs a port (e.g. :2376)")
    return value


def _docker_config_dir(env: Mapping[str, str]) -> Path:
    if env.get("DOCKER_CONFIG"):
        return Path(env["DOCKER_CONFIG"])
    return Path(env.get("HOME", str(Path.home()))) / ".docker"


def _current_context_name(env: Mapping[str, str]) -> str:
    cfg = _docker_config_dir(env) / "config.json"
    try:
        data = json.loads(cfg.read_text())
    except (OSError, ValueError):
        return "default"
    name = data.get("currentContext") if isinstance(data, dict) else None
    return name if isinstance(name, str) and name else "default"


def _context_endpoint(name: str, env: Mapping[str, str]) -> Endpoint:
    meta_dir = _docker_config_dir(env) / "contexts" / "meta" / hashlib.sha256(name.encode()).hexdigest()
    try:
        meta = json.loads((meta_dir / "meta.json").read_text())
    except FileNotFoundError as exc:
        raise EngineConfigError(
            f"Docker context {name!r} does not exist",
            hint="list contexts with `docker context ls` or unset DOCKER_CONTEXT",
        ) from exc
    except (OSError, ValueError) as exc:
        raise EngineConfigError(f"Docker context {name!r} is unreadable: {exc}") from exc
    docker_ep = (meta.get("Endpoints") or {}).get("docker") or {}
    host = docker_ep.get("Host")
    if not isinstance(host, str) or not host:
        raise EngineConfigError(f"Docker context {name!r} has no docker endpoint")
    tls_dir = _docker_config_dir(env) / "contexts" / "tls" / meta_dir.name / "docker"
    skip_verify = bool(docker_ep.get("SkipTLSVerify"))
    return Endpoint(
        host=validate_host(host, f"context {name}"),
        origin=f"context {name}",
        tls_verify=tls_dir.is_dir() and not skip_verify,
        cert_path=str(tls_dir) if tls_dir.is_dir() else None,
    )


def resolve_endpoint(
    host: str | None = None,
    context: str | None = None,
    env: Mapping[str, str] | None = None,
) -> Endpoint:
    """Choose the engine endpoint like the docker CLI."""
    env = os.environ if env is None else env
    tls_verify = env.get("DOCKER_TLS_VERIFY", "") not in ("", "0")
    cert_path = env.get("DOCKER_CERT_PATH") or None
    if host:
        return Endpoint(validate_host(host, "--host"), "--host", tls_verify, cert_path)
    if env.get("DOCKER_HOST"):
        return Endpoint(validate_host(env["DOCKER_HOST"], "DOCKER_HOST"), "DOCKER_HOST", tls_verify, cert_path)
    name = context or env.get("DOCKER_CONTEXT") or _current_context_name(env)
    if name != "default":
        return _context_endpoint(name, env)
    return Endpoint(DEFAULT_HOST, "default")
