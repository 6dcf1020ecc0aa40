"""`cargohold adopt` on the real engine: data moves into a named volume without loss."""

from __future__ import annotations

import contextlib
import json
import subprocess
import sys
import time
import uuid
from collections.abc import Callable, Iterator

import pytest

from cargohold.docker.sdk import SdkDocker
from cargohold.errors import CargoholdError
from cargohold.model.engine import MountType
from cargohold.services import adopt as adopt_svc
from cargohold.testbed.resources import Resources

CLI = [sys.executable, "-m", "cargohold.cli.app"]
LABELS = {"cargohold.test": "1"}
# Idempotent: the container is restarted by adopt and must come up again the same way.
SEED = (
    "if [ ! -f {d}/seeded ]; then mkdir -p {d}/sub && echo hello > {d}/a.txt && chown 1000:2000 {d}/a.txt "
    "&& chmod 640 {d}/a.txt && ln -sf a.txt {d}/link && head -c 1048576 /dev/urandom > {d}/sub/blob "
    "&& chmod 700 {d}/sub && touch {d}/seeded; fi; exec sleep 600"
)


@pytest.fixture
def cleanup(docker_port: SdkDocker) -> Iterator[Callable[..., None]]:
    containers: list[str] = []
    volumes: list[str] = []

    def track(*, container: str | None = None, volume: str | None = None) -> None:
        if container:
            containers.append(container)
        if volume:
            volumes.append(volume)

    yield track
    for c in containers:
        with contextlib.suppress(CargoholdError):
            docker_port.remove_container(c, force=True, volumes=True)
    for v in volumes:
        with contextlib.suppress(CargoholdError):
            docker_port.remove_volume(v, force=True)


def _wait_seeded(docker: SdkDocker, name: str, path: str) -> None:
    for _ in range(100):
        if docker.exec(name, ["test", "-f", f"{path}/seeded"]).exit_code == 0:
            return
        time.sleep(0.1)
    raise AssertionError("container did not seed its data")


def _volume_manifest(docker: SdkDocker, image: str, volume: str, path: str) -> adopt_svc.Manifest:
    reader = docker.create_container(
        image,
        command=["true"],
        mounts=[{"Type": "volume", "Source": volume, "Target": path}],
        labels=LABELS,
    )
    try:
        return adopt_svc.manifest(docker, reader, path)
    finally:
        docker.remove_container(reader, force=True)


def test_adopt_anonymous_volume_via_cli(
    docker_port: SdkDocker, resources: Resources, cleanup: Callable[..., None], busybox_image: str
) -> None:
    name = resources.run(
        busybox_image,
        prefix="adopt-anon",
        command=["sh", "-c", SEED.format(d="/data")],
        mounts=[{"Type": "volume", "Target": "/data"}],
        labels=LABELS,
    )
    cleanup(container=name)
    _wait_seeded(docker_port, name, "/data")
    before = adopt_svc.manifest(docker_port, name, "/data")
    [anon] = [m.name for m in docker_port.inspect_container(name).mounts if m.destination == "/data"]
    volume = f"chtest-adopted-{uuid.uuid4().hex[:8]}"
    cleanup(volume=volume)

    res = subprocess.run(
        [*CLI, "adopt", f"{name}:/data", "--as", volume, "--stop-timeout", "1", "--json"],
        capture_output=True,
        text=True,
        check=False,
        timeout=120,
    )
    assert res.returncode == 0, res.stderr
    out = json.loads(res.stdout)
    assert out["source"] == "anonymous-volume" and out["old_volume"] == anon and out["files"] == 3
    assert docker_port.inspect_container(name).state == "running"  # restarted after the copy

    after = _volume_manifest(docker_port, busybox_image, volume, "/data")
    assert after == before
    a = after["data/a.txt"]
    assert (a.uid, a.gid, a.mode & 0o777) == (1000, 2000, 0o640)
    assert after["data/sub"].mode & 0o777 == 0o700 and after["data/link"].link == "a.txt"
    assert docker_port.inspect_volume(anon).name == anon  # nothing deleted
    assert docker_port.inspect_volume(volume).labels[adopt_svc.ADOPTED_LABEL] == f"{name}:/data"


def test_adopt_writable_layer_with_recreate(
    docker_port: SdkDocker, resources: Resources, cleanup: Callable[..., None], busybox_image: str
) -> None:
    name = resources.run(
        busybox_image,
        prefix="adopt-layer",
        command=["sh", "-c", SEED.format(d="/srv/uploads")],
        labels={**LABELS, "app": "shop"},
        environment={"GREETING": "hi"},
    )
    cleanup(container=name)
    _wait_seeded(docker_port, name, "/srv/uploads")
    before = adopt_svc.manifest(docker_port, name, "/srv/uploads")
    volume = f"chtest-adopted-{uuid.uuid4().hex[:8]}"
    cleanup(volume=volume)

    result = adopt_svc.adopt(docker_port, name, "/srv/uploads", volume, recreate=True, stop_timeout=1)
    assert result.recreated and result.source == "writable-layer" and result.old_container
    cleanup(container=result.old_container)

    new = docker_port.inspect_container(name)
    assert new.state == "running"
    [m] = [m for m in new.mounts if m.destination == "/srv/uploads"]
    assert m.type is MountType.VOLUME and m.name == volume
    assert new.labels["app"] == "shop"  # same configuration otherwise
    env = docker_port.exec(name, ["sh", "-c", "echo $GREETING"]).stdout.decode().strip()
    assert env == "hi"
    assert adopt_svc.manifest(docker_port, name, "/srv/uploads") == before
    old = docker_port.inspect_container(result.old_container)
    assert old.state == "exited"  # kept, stopped, with its writable layer


def test_adopt_refuses_named_volume_and_leaves_container_running(
    docker_port: SdkDocker, resources: Resources, cleanup: Callable[..., None], busybox_image: str
) -> None:
    vol = resources.volume("adopt-named")
    name = resources.run(busybox_image, prefix="adopt-ref", command=["sleep", "600"], volumes={vol: "/data"})
    cleanup(container=name)
    res = subprocess.run(
        [*CLI, "adopt", f"{name}:/data", "--as", "chtest-never-created"],
        capture_output=True,
        text=True,
        check=False,
        timeout=60,
    )
    assert res.returncode == 2 and "already on the named volume" in res.stderr
    assert docker_port.inspect_container(name).state == "running"
    res = subprocess.run([*CLI, "adopt", f"{name}:/data", "--as", vol], capture_output=True, text=True, check=False)
    assert res.returncode != 0


def test_adopt_compose_container_prints_the_compose_change(
    docker_port: SdkDocker, resources: Resources, cleanup: Callable[..., None], busybox_image: str
) -> None:
    project = f"chtest-adoptc-{uuid.uuid4().hex[:8]}"
    name = resources.run(
        busybox_image,
        name=f"{project}-db-1",
        command=["sh", "-c", SEED.format(d="/var/lib/db")],
        mounts=[{"Type": "volume", "Target": "/var/lib/db"}],
        labels={**LABELS, "com.docker.compose.project": project, "com.docker.compose.service": "db"},
    )
    cleanup(container=name)
    _wait_seeded(docker_port, name, "/var/lib/db")
    volume = f"{project}_db-data"
    cleanup(volume=volume)
    with pytest.raises(CargoholdError, match="--recreate is for plain containers"):
        adopt_svc.adopt(docker_port, name, "/var/lib/db", volume, recreate=True)
    result = adopt_svc.adopt(docker_port, name, "/var/lib/db", volume, stop_timeout=1)
    assert "- db-data:/var/lib/db" in result.instructions and "docker compose up -d db" in result.instructions
    labels = docker_port.inspect_volume(volume).labels
    assert labels["com.docker.compose.project"] == project and labels["com.docker.compose.volume"] == "db-data"
    assert docker_port.inspect_container(name).state == "running"


def test_adopt_rm_container_is_paused_not_stopped(
    docker_port: SdkDocker, cleanup: Callable[..., None], busybox_image: str
) -> None:
    """Stopping a --rm container would delete it and its anonymous volume before the copy."""
    import docker as docker_sdk

    api = docker_port.api
    name = f"chtest-adopt-rm-{uuid.uuid4().hex[:8]}"
    host = api.create_host_config(
        auto_remove=True, network_mode="none", mounts=[docker_sdk.types.Mount("/data", None, type="volume")]
    )
    api.create_container(
        busybox_image, name=name, command=["sh", "-c", SEED.format(d="/data")], host_config=host, labels=LABELS
    )
    cleanup(container=name)
    api.start(name)
    _wait_seeded(docker_port, name, "/data")
    before = adopt_svc.manifest(docker_port, name, "/data")
    volume = f"chtest-adopted-{uuid.uuid4().hex[:8]}"
    cleanup(volume=volume)
    with pytest.raises(CargoholdError, match="--rm"):
        adopt_svc.adopt(docker_port, name, "/data", volume, recreate=True)
    adopt_svc.adopt(docker_port, name, "/data", volume)
    assert docker_port.inspect_container(name).state == "running"
    assert _volume_manifest(docker_port, busybox_image, volume, "/data") == before
