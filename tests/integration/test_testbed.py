"""The test bed, for real: the engine, the images, the second engine, the cleanup."""

from __future__ import annotations

import os
import socket
import time
from collections.abc import Callable

import pytest

from cargohold.docker.sdk import SdkDocker
from cargohold.errors import ContainerNotFound, VolumeNotFound
from cargohold.testbed.engine import engine_answers, ensure_engine
from cargohold.testbed.recipes import MARIADB, POSTGRES, REDIS
from cargohold.testbed.resources import OWNER_LABEL, TEST_LABEL, Resources, owner_id, sweep, wait_ready


def _ok(port: SdkDocker, container: str, command: list[str]) -> str:
    result = port.exec(container, command)
    assert result.exit_code == 0, (command, result.stdout, result.stderr)
    return result.stdout.decode()


def test_engine_answers_quickly_and_speaks_api_1_41(engine: str, docker_port: SdkDocker) -> None:
    assert engine_answers(engine)
    started = time.monotonic()
    assert ensure_engine() == engine
    assert time.monotonic() - started < 1.0
    info = docker_port.engine_info()
    assert tuple(int(x) for x in info.api_version.split(".")) >= (1, 41)
    assert info.host == engine


def test_integration_marker_is_applied(request: pytest.FixtureRequest) -> None:
    assert request.node.get_closest_marker("integration") is not None


def test_busybox_runs_a_command_without_network(
    docker_port: SdkDocker, resources: Resources, busybox_image: str
) -> None:
    name = resources.run(busybox_image, command=["sh", "-c", "echo hello from $(basename $0); ls /sys/class/net"])
    assert docker_port.wait(name, timeout=30) == 0
    out = docker_port.logs(name)
    assert "hello from sh" in out
    assert out.split()[-1] == "lo"  # network none: loopback only
    assert docker_port.inspect_container(name).network_mode == "none"
    assert docker_port.inspect_image(busybox_image).tags  # tagged by hash (and latest)
    assert docker_port.image_exists("cargohold-test/busybox:latest")


def test_postgres_data_persists_in_a_named_volume(
    docker_port: SdkDocker, resources: Resources, postgres_image: str
) -> None:
    vol = resources.volume("pgdata")
    first = resources.run(postgres_image, prefix="pg", volumes={vol: "/var/lib/postgresql/data"})
    wait_ready(docker_port, first, POSTGRES)
    assert "1 row" in _ok(docker_port, first, ["psql", "-U", "postgres", "-c", "select 1"])
    # PID 1 is the server itself, as its own user: signals reach it.
    status = _ok(docker_port, first, ["cat", "/proc/1/status"])
    assert "Name:\tpostgres" in status
    assert "\nUid:\t0\t" not in status
    # Also over TCP on the container's own loopback (network none).
    _ok(docker_port, first, ["psql", "-h", "127.0.0.1", "-U", "postgres", "-c", "select 1"])
    _ok(
        docker_port,
        first,
        ["psql", "-U", "postgres", "-c", "create table kept(v text); insert into kept values ('still here')"],
    )
    started = time.monotonic()
    docker_port.stop(first, timeout=30)
    assert time.monotonic() - started < 15  # SIGINT = fast shutdown, not the kill timeout
    assert docker_port.wait(first, timeout=5) == 0
    docker_port.remove_container(first)

    # PGPORT in the container's environment moves the server and the exec'd clients alike.
    second = resources.run(
        postgres_image, prefix="pg", volumes={vol: "/var/lib/postgresql/data"}, environment={"PGPORT": "5433"}
    )
    wait_ready(docker_port, second, POSTGRES, server_port=5433)
    out = _ok(docker_port, second, ["psql", "-U", "postgres", "-tAc", "select v from kept"])
    assert out.strip() == "still here"
    assert _ok(docker_port, second, ["psql", "-U", "postgres", "-tAc", "show port"]).strip() == "5433"
    logs = docker_port.logs(second, tail=200)
    assert "initdb" not in logs and "Success. You can now start" not in logs  # not re-initialised


def test_database_images_carry_the_client_tools(
    docker_port: SdkDocker, resources: Resources, postgres_image: str
) -> None:
    name = resources.container(postgres_image, entrypoint=["sleep"], command=["60"])
    docker_port.start(name)
    for tool in ("psql", "pg_dumpall", "mariadb-dump", "mysqldump", "redis-cli", "sqlite3"):
        _ok(docker_port, name, [tool, "--version"])
    image = docker_port.inspect_image(postgres_image)
    assert image.volumes == ("/var/lib/postgresql/data",)
    assert any(e.startswith("PATH=/usr/lib/postgresql/15/bin:") for e in image.env)


def test_mariadb_answers_a_query(docker_port: SdkDocker, resources: Resources, mariadb_image: str) -> None:
    vol = resources.volume("mydata")
    name = resources.run(mariadb_image, prefix="my", volumes={vol: "/var/lib/mysql"})
    wait_ready(docker_port, name, MARIADB)
    assert _ok(docker_port, name, ["mariadb", "-uroot", "-N", "-e", "select 6*7"]).strip() == "42"
    assert docker_port.inspect_image(mariadb_image).volumes == ("/var/lib/mysql",)
    assert "Name:\tmariadbd" in _ok(docker_port, name, ["cat", "/proc/1/status"])


def test_redis_answers_a_query(docker_port: SdkDocker, resources: Resources, redis_image: str) -> None:
    vol = resources.volume("rdata")
    name = resources.run(redis_image, prefix="rd", volumes={vol: "/data"}, environment={"REDIS_PORT": "6390"})
    wait_ready(docker_port, name, REDIS)
    assert _ok(docker_port, name, ["redis-cli", "-p", "6390", "set", "k", "v"]).strip() == "OK"
    assert _ok(docker_port, name, ["redis-cli", "-p", "6390", "get", "k"]).strip() == "v"
    assert docker_port.inspect_image(redis_image).volumes == ("/data",)


def test_second_engine_is_independent(
    docker_port: SdkDocker,
    second_docker_port: SdkDocker,
    resources: Resources,
    second_resources: Resources,
    second_engine: str,
    second_engine_image: Callable[[str], str],
) -> None:
    assert second_engine != docker_port.endpoint.host
    assert second_docker_port.engine_info().id != docker_port.engine_info().id
    vol = resources.volume("only-on-first")
    assert docker_port.inspect_volume(vol).name == vol
    with pytest.raises(VolumeNotFound):
        second_docker_port.inspect_volume(vol)
    other = second_resources.volume("only-on-second")
    with pytest.raises(VolumeNotFound):
        docker_port.inspect_volume(other)

    image = second_engine_image("busybox")
    name = second_resources.run(image, command=["sh", "-c", "echo on the second engine"])
    assert second_docker_port.wait(name, timeout=30) == 0
    assert "on the second engine" in second_docker_port.logs(name)
    with pytest.raises(ContainerNotFound):
        docker_port.inspect_container(name)


def test_cleanup_removes_containers_and_volumes(docker_port: SdkDocker, busybox_image: str) -> None:
    res = Resources(docker_port)
    vol = res.volume("gone")
    name = res.run(busybox_image, command=["sleep", "60"], volumes={vol: "/data"})
    assert docker_port.inspect_container(name).state == "running"
    labels = docker_port.inspect_volume(vol).labels
    assert labels[TEST_LABEL] == "1" and labels[OWNER_LABEL] == owner_id()
    res.track_container("chtest-never-created-12345678")  # already gone: ignored
    assert res.cleanup() == []
    with pytest.raises(ContainerNotFound):
        docker_port.inspect_container(name)
    with pytest.raises(VolumeNotFound):
        docker_port.inspect_volume(vol)


def test_sweep_removes_leftovers_of_dead_sessions_only(
    docker_port: SdkDocker, resources: Resources, unique_name: Callable[[str], str]
) -> None:
    dead_pid = _dead_pid()
    dead = resources.volume("dead", labels={OWNER_LABEL: f"{socket.gethostname()}:{dead_pid}"})
    alive = resources.volume("alive", labels={OWNER_LABEL: f"{socket.gethostname()}:1"})
    foreign = unique_name("foreign")
    docker_port.create_volume(foreign, labels={"purpose": "not a test"})
    try:
        result = sweep(docker_port, owner=f"{socket.gethostname()}:{os.getpid()}-not-me")
        assert dead in result.volumes
        assert alive not in result.volumes and foreign not in result.volumes
        docker_port.inspect_volume(alive)
        docker_port.inspect_volume(foreign)
    finally:
        docker_port.remove_volume(foreign, force=True)


def _dead_pid() -> int:
    pid = 4_000_000
    while True:
        try:
            os.kill(pid, 0)
        except ProcessLookupError:
            return pid
        except PermissionError:
            pass
        pid += 1
