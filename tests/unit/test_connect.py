"""Endpoint resolution follows the docker CLI's precedence and rejects bad URLs."""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

import pytest

from cargohold.docker.connect import DEFAULT_HOST, resolve_endpoint, validate_host
from cargohold.errors import EngineConfigError


def make_context(home: Path, name: str, host: str) -> None:
    meta = home / ".docker" / "contexts" / "meta" / hashlib.sha256(name.encode()).hexdigest()
    meta.mkdir(parents=True)
    (meta / "meta.json").write_text(
        json.dumps(
            {"Name": name, "Metadata": {}, "Endpoints": {"docker": {"Host": host, "SkipTLSVerify": False}}}
        )
    )


def test_default_when_nothing_set(tmp_path: Path) -> None:
    ep = resolve_endpoint(env={"HOME": str(tmp_path)})
    assert ep.host == DEFAULT_HOST and ep.origin == "default" and ep.is_local
    assert ep.socket_path == "/var/run/docker.sock"


def test_precedence(tmp_path: Path) -> None:
    make_context(tmp_path, "remote", "ssh://me@example")
    make_context(tmp_path, "other", "tcp://127.0.0.1:2376")
    (tmp_path / ".docker" / "config.json").write_text(json.dumps({"currentContext": "other"}))
    env = {"HOME": str(tmp_path)}
    assert resolve_endpoint(env=env).host == "tcp://127.0.0.1:2376"
    assert resolve_endpoint(env={**env, "DOCKER_CONTEXT": "remote"}).host == "ssh://me@example"
    assert resolve_endpoint(context="remote", env=env).origin == "context remote"
    env_host = {**env, "DOCKER_CONTEXT": "remote", "DOCKER_HOST": "unix:///tmp/x.sock"}
    assert resolve_endpoint(env=env_host).origin == "DOCKER_HOST"
    assert resolve_endpoint(host="tcp://127.0.0.1:1", env=env_host).origin == "--host"
    assert not resolve_endpoint(env={**env, "DOCKER_CONTEXT": "remote"}).is_local


def test_unknown_context(tmp_path: Path) -> None:
    with pytest.raises(EngineConfigError, match="'nope' does not exist"):
        resolve_endpoint(env={"HOME": str(tmp_path), "DOCKER_CONTEXT": "nope"})


@pytest.mark.parametrize(
    "bad", ["foo", "tcp://", "tcp://host", "unix://relative.sock", "gopher://x:1", "tcp://host:notaport"]
)
def test_bad_hosts(bad: str) -> None:
    with pytest.raises(EngineConfigError):
        validate_host(bad, "DOCKER_HOST")


@pytest.mark.parametrize(
    "good",
    ["unix:///var/run/docker.sock", "tcp://127.0.0.1:2375", "ssh://u@h", "ssh://u@h:2222", "https://h:2376"],
)
def test_good_hosts(good: str) -> None:
    assert validate_host(good, "DOCKER_HOST") == good
