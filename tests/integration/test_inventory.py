"""Inventory against the real engine: a compose-labelled project with every kind of mount."""

from __future__ import annotations

import contextlib
import json
import multiprocessing
import os
import shutil
import subprocess
import sys
import uuid
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import docker
import pytest

from cargohold.docker.sdk import SdkDocker
from cargohold.errors import EnginePermissionDenied

CLI = [sys.executable, "-m", "cargohold.cli.app"]
ANON_LEN = 64


def cli(*args: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    return subprocess.run([*CLI, *args], capture_output=True, text=True, env=env, check=False, timeout=120)


@dataclass
class Scene:
    project: str
    container: str
    named: str
    dangling: str
    bind_present: Path
    bind_missing: Path
    image: str
    anon: str = ""
    created: list[str] = field(default_factory=list)


@pytest.fixture
def scene(docker_port: SdkDocker, busybox_image: str, tmp_path: Path) -> Iterator[Scene]:
    """A compose-style project: named volume, image-VOLUME anonymous volume, two binds, two tmpfs."""
    tag = uuid.uuid4().hex[:8]
    project = f"chtest-inv-{tag}"
    api: Any = docker_port.api
    s = Scene(
        project=project,
        container=f"{project}-app-1",
        named=f"{project}_data",
        dangling=f"chtest-inv-dangling-{tag}",
        bind_present=tmp_path / "conf",
        bind_missing=tmp_path / "gone",
        image=f"chtest-volimg-{tag}:1",
    )
    s.bind_present.mkdir()
    s.bind_missing.mkdir()
    base = api.create_container(busybox_image, command=["true"], labels={"cargohold.test": "1"})
    try:
        # An image that declares a VOLUME, as database images do.
        api.commit(base["Id"], repository=s.image.split(":")[0], tag="1", changes=["VOLUME /var/lib/app"])
    finally:
        api.remove_container(base["Id"], force=True)
    try:
        docker_port.create_volume(
            s.named,
            labels={
                "com.docker.compose.project": project,
                "com.docker.compose.volume": "data",
                "cargohold.test": "1",
            },
        )
        info = docker_port.create_volume(s.dangling, labels={"cargohold.test": "1"})
        Path(info.mountpoint, "left-behind.bin").write_bytes(b"x" * 4096)
        host_config = api.create_host_config(
            network_mode="none",
            mounts=[
                docker.types.Mount("/srv/data", s.named, type="volume"),
                docker.types.Mount("/cfg", str(s.bind_present), type="bind", read_only=True),
                docker.types.Mount("/gone", str(s.bind_missing), type="bind"),
                docker.types.Mount("/scratch", None, type="tmpfs", tmpfs_size=1 << 20),
            ],
            tmpfs={"/run/app": "size=64k"},
        )
        created = api.create_container(
            s.image,
            name=s.container,
            command=["sleep", "600"],
            host_config=host_config,
            labels={
                "com.docker.compose.project": project,
                "com.docker.compose.service": "app",
                "com.docker.compose.project.working_dir": str(tmp_path),
                "com.docker.compose.project.config_files": str(tmp_path / "compose.yaml"),
                "cargohold.test": "1",
            },
        )
        s.created.append(created["Id"])
        api.start(created["Id"])
        shutil.rmtree(s.bind_missing)  # the bind source disappears under a running container
        mounts = api.inspect_container(created["Id"])["Mounts"]
        s.anon = next(m["Name"] for m in mounts if m["Destination"] == "/var/lib/app")
        yield s
    finally:
        for cid in s.created:
            api.remove_container(cid, force=True, v=True)
        for vol in (s.named, s.dangling):
            with contextlib.suppress(docker.errors.NotFound):
                api.remove_volume(vol, force=True)
        api.remove_image(s.image, force=True)


def test_volumes_json(scene: Scene) -> None:
    res = cli("volumes", "--json")
    assert res.returncode == 0, res.stderr
    doc = json.loads(res.stdout)
    assert doc["schema_version"] == 1 and doc["engine"]["local"] is True
    vols = {v["name"]: v for v in doc["volumes"]}

    named = vols[scene.named]
    assert named["kind"] == "named"
    assert named["compose"] == {"project": scene.project, "volume": "data"}
    assert named["flags"] == []
    [user] = named["containers"]
    assert user["name"] == scene.container and user["mount_path"] == "/srv/data"
    assert user["state"] == "running" and user["compose_service"] == "app" and user["read_only"] is False

    anon = vols[scene.anon]
    assert len(scene.anon) == ANON_LEN and anon["kind"] == "anonymous"
    assert anon["flags"] == ["anonymous-in-use"]
    assert anon["containers"][0]["mount_path"] == "/var/lib/app"

    dangling = vols[scene.dangling]
    assert dangling["flags"] == ["dangling", "dangling-with-data"]
    assert dangling["size_bytes"] == 4096 and dangling["containers"] == []


def test_mounts_json(scene: Scene) -> None:
    res = cli("mounts", "--json")
    assert res.returncode == 0, res.stderr
    doc = json.loads(res.stdout)
    [c] = [c for c in doc["containers"] if c["name"] == scene.container]
    assert c["compose"]["project"] == scene.project and c["compose"]["service"] == "app"
    assert c["compose"]["config_files"] == [str(Path(scene.bind_present).parent / "compose.yaml")]
    m = {x["destination"]: x for x in c["mounts"]}
    assert set(m) == {"/srv/data", "/var/lib/app", "/cfg", "/gone", "/scratch", "/run/app"}
    assert m["/srv/data"]["type"] == "volume" and m["/srv/data"]["volume_kind"] == "named"
    assert m["/var/lib/app"]["volume"] == scene.anon and m["/var/lib/app"]["volume_kind"] == "anonymous"
    assert m["/var/lib/app"]["declared_by_image"] is True
    assert m["/cfg"]["type"] == "bind" and m["/cfg"]["read_only"] is True
    assert m["/cfg"]["source_exists"] is True
    assert m["/gone"]["source_exists"] is False
    assert m["/scratch"]["type"] == "tmpfs" and m["/run/app"]["type"] == "tmpfs"
    assert m["/run/app"]["options"] == "size=64k"
    assert c["declared_volumes"] == [
        {"path": "/var/lib/app", "covered_by": "anonymous-volume", "source": scene.anon, "via_parent": None}
    ]


def test_tables_when_piped(scene: Scene) -> None:
    res = cli("volumes")
    assert res.returncode == 0, res.stderr
    lines = res.stdout.splitlines()
    assert lines[0].split() == ["NAME", "KIND", "DRIVER", "SIZE", "PROJECT", "USED", "BY", "FLAGS"]
    row = next(line for line in lines if line.startswith(scene.anon))  # full names when piped
    assert "anonymous" in row and "anonymous-in-use" in row and f"{scene.container}:/var/lib/app" in row
    assert "dangling-with-data" in next(line for line in lines if line.startswith(scene.dangling))

    res = cli("mounts")
    assert res.returncode == 0, res.stderr
    rows = [line for line in res.stdout.splitlines() if line.startswith(scene.container)]
    assert len(rows) == 6
    gone = next(r for r in rows if " /gone " in r)
    assert "SOURCE MISSING" in gone
    assert any("tmpfs" in r and "/run/app" in r and "size=64k" in r for r in rows)
    assert any("(anonymous)" in r and "image VOLUME" in r for r in rows)


def test_inspect(scene: Scene) -> None:
    res = cli("inspect", scene.named, "--json")
    assert res.returncode == 0, res.stderr
    vol = json.loads(res.stdout)["volume"]
    assert vol["name"] == scene.named and vol["labels"]["com.docker.compose.volume"] == "data"
    text = cli("inspect", scene.named)
    assert text.returncode == 0 and f"{scene.container} (" in text.stdout and "at /srv/data rw" in text.stdout


def test_unknown_volume_one_line_error() -> None:
    res = cli("inspect", f"chtest-no-such-{uuid.uuid4().hex[:6]}")
    assert res.returncode == 5
    assert res.stderr.count("\n") == 1 and "not found" in res.stderr and "Traceback" not in res.stderr


@pytest.mark.parametrize(
    ("host", "code", "text"),
    [
        ("unix:///nonexistent/docker.sock", 3, "no Docker engine socket"),
        ("tcp://127.0.0.1:9", 3, "cannot reach the Docker engine"),
        ("not-a-url", 2, "is not a URL"),
        ("tcp://127.0.0.1", 2, "needs a port"),
    ],
)
def test_bad_engine_one_line_errors(host: str, code: int, text: str) -> None:
    env = {**os.environ, "DOCKER_HOST": host}
    res = cli("volumes", env=env)
    assert res.returncode == code, res.stderr
    assert text in res.stderr and res.stderr.count("\n") == 1 and "Traceback" not in res.stderr
    debug = cli("--debug", "volumes", env=env)
    assert debug.returncode == code and "Traceback" in debug.stderr


def _as_nobody(queue: Any) -> None:
    os.setgroups([])
    os.setgid(65534)
    os.setuid(65534)
    try:
        SdkDocker().list_volumes()
    except EnginePermissionDenied as err:
        queue.put(("denied", str(err)))
    except Exception as err:
        queue.put((type(err).__name__, str(err)))
    else:
        queue.put(("ok", ""))


@pytest.mark.skipif(os.geteuid() != 0, reason="needs root to drop to an unprivileged user")
def test_socket_permission_denied(engine: str) -> None:
    if not engine.startswith("unix://"):
        pytest.skip("the engine is not on a local socket")
    sock = engine[len("unix://") :]
    if os.stat(sock).st_mode & 0o006:
        pytest.skip("the socket is world-accessible")
    ctx = multiprocessing.get_context("fork")
    queue = ctx.Queue()
    proc = ctx.Process(target=_as_nobody, args=(queue,))
    proc.start()
    proc.join(60)
    kind, message = queue.get(timeout=5)
    assert kind == "denied", message
    assert "permission denied" in message and "docker' group" in message


def test_project_filter(scene: Scene) -> None:
    res = cli("volumes", "--json", "--project", scene.project)
    assert res.returncode == 0, res.stderr
    # the named volume carries the label; the anonymous one belongs through its container
    assert {v["name"] for v in json.loads(res.stdout)["volumes"]} == {scene.named, scene.anon}
    res = cli("mounts", "--json", "-p", scene.project)
    assert [c["name"] for c in json.loads(res.stdout)["containers"]] == [scene.container]


def test_docker_context_selects_the_engine(engine: str, tmp_path: Path) -> None:
    """A docker CLI context (as `docker context create` writes it) is honoured, flag and env alike."""
    import hashlib

    cfg = tmp_path / "dockercfg"
    meta = cfg / "contexts" / "meta" / hashlib.sha256(b"bed").hexdigest()
    meta.mkdir(parents=True)
    (meta / "meta.json").write_text(
        json.dumps({"Name": "bed", "Metadata": {}, "Endpoints": {"docker": {"Host": engine, "SkipTLSVerify": False}}})
    )
    env = {k: v for k, v in os.environ.items() if k != "DOCKER_HOST"}
    env["DOCKER_CONFIG"] = str(cfg)
    for args, extra in ((["--context", "bed"], {}), ([], {"DOCKER_CONTEXT": "bed"})):
        res = cli(*args, "volumes", "--json", env={**env, **extra})
        assert res.returncode == 0, res.stderr
        assert json.loads(res.stdout)["engine"]["host"] == engine
    res = cli("--context", "missing", "volumes", env=env)
    assert res.returncode == 2 and "context 'missing' does not exist" in res.stderr
