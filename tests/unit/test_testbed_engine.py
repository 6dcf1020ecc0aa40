"""Engine set-up: command lines, where to look, what happens when nothing answers."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

from cargohold.errors import TestbedError
from cargohold.testbed import _system, engine
from cargohold.testbed.engine import (
    NETWORK_FLAGS,
    SecondEngineLayout,
    candidate_hosts,
    dockerd_args,
    parse_dockerd_major,
)

DEFAULT = "unix:///var/run/docker.sock"


def test_default_engine_gets_only_the_network_flags() -> None:
    assert dockerd_args() == ["dockerd", "--bridge=none", "--iptables=false", "--ip-masq=false", "--ip6tables=false"]


def test_second_engine_has_its_own_everything() -> None:
    layout = SecondEngineLayout(Path("/run/x-e2"))
    args = dockerd_args(layout)
    assert args[: 1 + len(NETWORK_FLAGS)] == ["dockerd", *NETWORK_FLAGS]
    assert "--data-root=/run/x-e2/data" in args
    assert "--exec-root=/run/x-e2/exec" in args
    assert "--pidfile=/run/x-e2/docker.pid" in args
    assert "--config-file=/run/x-e2/daemon.json" in args
    assert "--host=unix:///run/x-e2/docker.sock" in args
    namespace = next(a for a in args if a.startswith("--containerd-namespace="))
    assert namespace.split("=")[1] != "moby"
    assert layout.host == "unix:///run/x-e2/docker.sock"
    assert SecondEngineLayout(Path("/run/y-e2")).namespace != layout.namespace
    assert layout.daemon_config(20) == {"deprecated-key-path": "/run/x-e2/key.json"}
    assert layout.daemon_config(27) == {}


def test_second_engine_socket_path_must_be_short_and_absolute() -> None:
    SecondEngineLayout(Path("/run/cargohold-e2")).check()
    with pytest.raises(TestbedError, match="longer than"):
        SecondEngineLayout(Path("/tmp/" + "d" * 100)).check()
    with pytest.raises(TestbedError, match="absolute"):
        SecondEngineLayout(Path("relative/dir")).check()


def test_parse_dockerd_major() -> None:
    assert parse_dockerd_major("Docker version 20.10.24+dfsg1, build 5d6db84") == 20
    assert parse_dockerd_major("Docker version 27.3.1, build 41ca978") == 27
    assert parse_dockerd_major("garbage") is None


def test_candidates_are_docker_host_then_the_default_socket(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(engine, "DEFAULT_HOST", DEFAULT)
    assert candidate_hosts({}) == [DEFAULT]
    assert candidate_hosts({"DOCKER_HOST": "tcp://127.0.0.1:2375"}) == ["tcp://127.0.0.1:2375", DEFAULT]
    assert candidate_hosts({"DOCKER_HOST": DEFAULT}) == [DEFAULT]


def test_engine_that_answers_is_used_as_is(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(engine, "DEFAULT_HOST", DEFAULT)
    asked: list[str] = []

    def answers(host: str, *, timeout: float = 3.0) -> bool:
        asked.append(host)
        return host == DEFAULT

    monkeypatch.setattr(engine, "engine_answers", answers)
    monkeypatch.setattr(engine, "_spawn", _must_not_run)
    assert engine.ensure_engine(env={"DOCKER_HOST": "unix:///nowhere.sock"}) == DEFAULT
    assert asked == ["unix:///nowhere.sock", DEFAULT]


def test_no_engine_and_not_root_says_what_to_provide(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.setattr(engine, "DEFAULT_HOST", f"unix://{tmp_path}/docker.sock")
    monkeypatch.setattr(engine, "engine_answers", lambda host, timeout=3.0: False)
    monkeypatch.setattr(engine, "is_linux_root", lambda: False)
    monkeypatch.setattr(engine, "_spawn", _must_not_run)
    with pytest.raises(TestbedError) as info:
        engine.ensure_engine(env={})
    text = str(info.value)
    assert f"no Docker engine answers at unix://{tmp_path}/docker.sock" in text
    assert "DOCKER_HOST" in text and "\n" not in text
    with pytest.raises(TestbedError, match="needs root"):
        engine.ensure_second_engine(Path("/run/x-e2"))


def test_a_socket_we_may_not_use_is_named(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    (tmp_path / "docker.sock").touch()
    monkeypatch.setattr(engine, "DEFAULT_HOST", f"unix://{tmp_path}/docker.sock")
    monkeypatch.setattr(engine, "engine_answers", lambda host, timeout=3.0: False)
    monkeypatch.setattr(engine, "is_linux_root", lambda: False)
    monkeypatch.setattr(engine.os, "access", lambda path, mode: False)
    with pytest.raises(TestbedError, match=re.escape(f"permission denied on the Docker socket {tmp_path}/docker.sock")):
        engine.ensure_engine(env={})


def test_engine_answers_is_false_for_a_missing_socket(tmp_path: Path) -> None:
    assert engine.engine_answers(f"unix://{tmp_path}/none.sock") is False


def test_state_dir_can_be_chosen(tmp_path: Path) -> None:
    chosen = tmp_path / "state"
    assert _system.state_dir({"CARGOHOLD_TESTBED_STATE": str(chosen)}) == chosen
    assert chosen.is_dir()


def test_failed_command_reports_its_log_tail(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("CARGOHOLD_TESTBED_STATE", str(tmp_path))
    log_path = tmp_path / "x.log"
    with pytest.raises(TestbedError, match=r"exit code 3: .*boom"):
        _system.run_logged(["sh", "-c", "echo boom; exit 3"], log_path)
    _system.run_logged(["sh", "-c", "echo fine"], log_path)
    assert "fine" in log_path.read_text()


def _must_not_run(*args: object, **kwargs: object) -> None:
    raise AssertionError("dockerd must not be started")
