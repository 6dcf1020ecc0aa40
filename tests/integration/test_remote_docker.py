"""Docker state through remote repositories, with the CLI as a user runs it, once on the test bed's
RADOS Gateway (S3) and once on its OpenSSH server (SFTP) (``remote_repo``, tests/conftest.py): a
volume backed up (read from its mountpoint and through the Engine archive API), restored ``--to`` a
new volume and verified; ``copy VOLUME --to-engine`` and ``project move`` to the test bed's second
engine (first a full copy, then only the change); a PostgreSQL volume backed up with its dump,
restored from the dump and verified. Every copy is compared with its source entry by entry: type,
mode, owner, size, links, link target, modification time and content."""

from __future__ import annotations

import json
import re
import subprocess
import threading
import time
from datetime import UTC, datetime
from pathlib import Path
from typing import TYPE_CHECKING, Any

import pytest

from cargohold.docker.sdk import SdkDocker
from cargohold.testbed.faultproxy import FaultProxy
from cargohold.testbed.recipes import POSTGRES
from cargohold.testbed.resources import Resources, wait_ready
from cargohold.testbed.rgw import RgwServer

if TYPE_CHECKING:
    from conftest import RemoteRepo  # tests/conftest.py (the remote_repo fixture)

SERVICE = ["sh", "-c", "trap 'exit 0' TERM; sleep 600 & wait"]
FILL = (
    "mkdir -p /data/sub/deep /data/empty && echo hello > /data/sub/f && head -c 12000000 /dev/urandom > /data/big"
    " && ln /data/sub/f /data/hard && ln -s sub/f /data/link && echo bye > /data/sub/deep/gone"
    " && mkfifo /data/fifo && chown -R 33:44 /data/sub && chmod 640 /data/sub/f && chmod 710 /data"
    " && touch -d '2020-02-03 04:05:06' /data/sub/f"
)
CHANGE = "echo changed > /data/sub/f2 && rm /data/sub/deep/gone && echo more >> /data/sub/f"
PROJECT_LABEL = "com.docker.compose.project"
PGDATA = "/var/lib/postgresql/data"


def listing(docker: SdkDocker, volume: str, *, seconds: bool = False) -> str:
    """Type, mode, owner, size, links, link target, mtime and content of every entry of a volume."""
    mp = docker.inspect_volume(volume).mountpoint
    out = subprocess.run(
        f"cd {mp} && find . -printf '%p %y %m %U %G %s %n %l %TY-%Tm-%Td %TH:%TM:%TS\\n' | sort"
        " && find . -type f -exec md5sum {} + | sort",
        shell=True,
        capture_output=True,
        text=True,
        check=True,
    ).stdout
    assert len(out.splitlines()) >= 3, out  # ".", an entry, its checksum at least
    # the archive API carries modification times to the second
    return re.sub(r"(\d\d:\d\d:\d\d)\.\d+", r"\1", out) if seconds else out


def js(proc: subprocess.CompletedProcess[str]) -> Any:
    return json.loads(proc.stdout)


def filled_volume(docker: SdkDocker, resources: Resources, image: str, prefix: str, **labels: str) -> tuple[str, str]:
    vol = resources.volume(prefix, labels=labels or None)
    ctr = resources.run(image, command=SERVICE, volumes={vol: "/data"}, labels={"cargohold.consistency": "pause"})
    res = docker.exec(ctr, ["sh", "-c", FILL])
    assert res.exit_code == 0, res.stderr.decode()
    return vol, ctr


@pytest.mark.parametrize("via", ["direct", "api"])
def test_backup_restore_verify_a_volume(
    remote_repo: RemoteRepo, docker_port: SdkDocker, resources: Resources, busybox_image: str, via: str
) -> None:
    r = remote_repo
    r.cli("init")
    vol, ctr = filled_volume(docker_port, resources, busybox_image, "rdv")
    out = js(r.cli("backup", vol, "--via", via, "--json"))
    [res] = out["results"]
    assert res["error"] is None and res["via"] == via and res["consistency"] == "pause", res
    # 12 MB: above the sizes from which backups and restores hand the data to worker processes
    assert out["requests"]["store"] >= 3 and out["requests"]["bytes_up"] > 12_000_000
    snap = res["snapshot"]["id"]
    assert docker_port.inspect_container(ctr).state == "running"
    assert len(r.objects("snapshots/")) == 1 and r.objects("data/")

    target = resources.track_volume(resources.name("rdv-restored"))
    restored = js(r.cli("restore", snap, "--to", target, "--via", via, "--json"))
    assert restored["created"] is True and restored["via"] == via and restored["damaged"] == {}
    exact = via == "direct"
    assert listing(docker_port, target, seconds=not exact) == listing(docker_port, vol, seconds=not exact)

    # again over the restored volume: --force, after a safety snapshot of it in the remote repository
    forced = js(r.cli("restore", snap, "--to", target, "--via", via, "--force", "--json"))
    assert forced["safety_snapshot"] and forced["created"] is False
    assert listing(docker_port, target, seconds=not exact) == listing(docker_port, vol, seconds=not exact)
    safety = [s for s in js(r.cli("snapshots", "--json")) if s["id"] == forced["safety_snapshot"]]
    assert [(s["tags"], s["source"]["name"]) for s in safety] == [(["safety"], target)]

    verified = js(r.cli("verify", snap, "--via", via, "--json"))
    assert verified["ok"] is True and verified["problems"] == [] and verified["files"] == 4, verified
    inventory = js(r.cli("volumes", "--json"))
    assert inventory["backups_read"] is True
    [entry] = [v for v in inventory["volumes"] if v["name"] == vol]
    assert entry["backup"]["snapshot"] == snap and entry["backup"]["last_verify_ok"] is True
    assert js(r.cli("check", "--read-data", "--json"))["ok"] is True


def _project(docker: SdkDocker, res: Resources, image: str, project: str) -> tuple[str, str, str]:
    """A compose-style project: service db with the named volume PROJECT_data, service cache with an
    anonymous volume on /cache. Returns (named volume, anonymous volume, db container)."""
    labels = {PROJECT_LABEL: project, "com.docker.compose.volume": "data"}
    data = res.volume(name=f"{project}_data", labels=labels)
    db = res.run(
        image,
        command=SERVICE,
        volumes={data: "/data"},
        labels={PROJECT_LABEL: project, "com.docker.compose.service": "db"},
    )
    cache = res.run(
        image,
        command=SERVICE,
        mounts=[{"Type": "volume", "Target": "/cache"}],
        labels={PROJECT_LABEL: project, "com.docker.compose.service": "cache"},
    )
    fill = "echo rows > /data/table && mkdir /data/wal && head -c 300000 /dev/urandom > /data/wal/0001"
    assert docker.exec(db, ["sh", "-c", fill]).exit_code == 0
    assert docker.exec(cache, ["sh", "-c", "echo warm > /cache/entry && echo x > /cache/table"]).exit_code == 0
    [mount] = [m for m in docker.inspect_container(cache).mounts if m.destination == "/cache"]
    return data, res.track_volume(mount.name), db


def test_copy_and_project_move_through_the_remote_repository(
    remote_repo: RemoteRepo,
    docker_port: SdkDocker,
    resources: Resources,
    busybox_image: str,
    second_engine: str,
    second_docker_port: SdkDocker,
    second_resources: Resources,
) -> None:
    r = remote_repo
    r.cli("init")
    vol, ctr = filled_volume(docker_port, resources, busybox_image, "rcp", team="a")
    target = second_resources.track_volume(resources.name("rcp-copy"))
    first = js(r.cli("copy", vol, "--to-engine", second_engine, "--as", target, "--json"))
    [v] = first["volumes"]
    assert v["method"] == "full" and v["verified"] is True and v["created"] is True, v
    assert second_docker_port.inspect_volume(target).labels == docker_port.inspect_volume(vol).labels
    assert listing(second_docker_port, target) == listing(docker_port, vol)

    assert docker_port.exec(ctr, ["sh", "-c", CHANGE]).exit_code == 0
    second = js(r.cli("copy", vol, "--to-engine", second_engine, "--as", target, "--stop", "--json"))
    [v] = second["volumes"]
    assert v["method"] == "delta" and v["verified"] is True and v["deleted"] == 1, v
    assert v["bytes_written"] < 100 and second["added_bytes"] < 50_000  # big stayed where it was
    assert set(second["downtime_seconds"]) == {ctr} and docker_port.inspect_container(ctr).state == "running"
    assert listing(second_docker_port, target) == listing(docker_port, vol)

    # the same target through the Engine archive API (as for a remote engine): the delta as a tar
    assert docker_port.exec(ctr, ["sh", "-c", "echo api > /data/sub/f3 && rm /data/sub/f2"]).exit_code == 0
    third = js(r.cli("copy", vol, "--to-engine", second_engine, "--as", target, "--via", "api", "--json"))
    [v] = third["volumes"]
    assert (v["method"], v["via"], v["verified"], v["deleted"]) == ("delta", "api", True, 1), v
    assert listing(second_docker_port, target, seconds=True) == listing(docker_port, vol, seconds=True)

    project = resources.name("rmv")
    data, anon, db = _project(docker_port, resources, busybox_image, project)
    new = resources.name("rmv-new")
    for key in ("data", "anon-cache-1"):
        second_resources.track_volume(f"{new}_{key}")
    moved = js(r.cli("project", "move", project, "--to-engine", second_engine, "--as", new, "--json"))
    assert sorted(v["volume"] for v in moved["volumes"]) == [f"{new}_anon-cache-1", f"{new}_data"]
    assert all(v["method"] == "full" and v["verified"] is True for v in moved["volumes"]), moved
    assert moved["renamed"] == {data: f"{new}_data", anon: f"{new}_anon-cache-1"}
    assert second_docker_port.inspect_volume(f"{new}_data").labels[PROJECT_LABEL] == new
    assert listing(second_docker_port, f"{new}_data") == listing(docker_port, data)
    assert listing(second_docker_port, f"{new}_anon-cache-1") == listing(docker_port, anon)

    assert docker_port.exec(db, ["sh", "-c", "echo more >> /data/table"]).exit_code == 0
    final = js(r.cli("project", "move", project, "--to-engine", second_engine, "--as", new, "--stop", "--json"))
    by_name = {v["volume"]: v for v in final["volumes"]}
    assert by_name[f"{new}_data"]["method"] == "delta" and by_name[f"{new}_data"]["bytes_written"] == len(
        "rows\nmore\n"
    )
    assert by_name[f"{new}_anon-cache-1"]["method"] == "unchanged"
    assert listing(second_docker_port, f"{new}_data") == listing(docker_port, data)

    # the first move's run, restored from the remote repository onto the second engine under a third name
    third_name = resources.name("rmv-third")
    for key in ("data", "anon-cache-1"):
        second_resources.track_volume(f"{third_name}_{key}")
    restored = js(
        r.cli(
            "project",
            "restore",
            project,
            "--as",
            third_name,
            "--engine",
            second_engine,
            "--run",
            moved["run_id"],
            "--json",
        )
    )
    assert restored["run_id"] == moved["run_id"] and len(restored["volumes"]) == 2, restored
    assert Path(second_docker_port.inspect_volume(f"{third_name}_data").mountpoint, "table").read_text() == "rows\n"
    assert listing(second_docker_port, f"{third_name}_anon-cache-1") == listing(docker_port, anon)
    check = js(r.cli("check", "--read-data", "--json"))
    assert check["ok"] is True and check["snapshots"] == 7, check  # 3 copies, 2 moves of 2 volumes


def test_postgres_dump_backup_restore_verify(
    remote_repo: RemoteRepo, docker_port: SdkDocker, resources: Resources, postgres_image: str
) -> None:
    r = remote_repo
    r.cli("init")
    vol = resources.volume("rpg")
    pg = resources.run(postgres_image, prefix="rpg", volumes={vol: PGDATA}, environment={"PGPORT": "5434"})
    wait_ready(docker_port, pg, POSTGRES)
    sql = (
        "CREATE TABLE t(id int primary key, v text); INSERT INTO t SELECT g, md5(g::text) FROM generate_series(1,500) g"
    )
    res = docker_port.exec(pg, ["psql", "-U", "postgres", "-v", "ON_ERROR_STOP=1", "-c", sql])
    assert res.exit_code == 0, res.stderr.decode()

    out = js(r.cli("backup", vol, "--json"))
    [result] = out["results"]
    assert result["error"] is None and result["consistency"] == "dump", result  # the default for PostgreSQL
    [dump] = result["dumps"]
    assert dump["kind"] == "postgres" and dump["size"] > 10_000
    snap = result["snapshot"]["id"]
    assert docker_port.inspect_container(pg).state == "running"

    target = resources.track_volume(resources.name("rpg-restored"))
    loaded = js(r.cli("restore", snap, "--to", target, "--from-dump", "--json"))
    assert loaded["created"] is True and loaded["dump"]["ok"] is True, loaded
    assert "500 rows match the dump" in loaded["dump"]["detail"], loaded["dump"]
    verified = js(r.cli("verify", snap, "--json"))
    assert verified["ok"] is True and [(d["kind"], d["ok"]) for d in verified["dumps"]] == [("postgres", True)]


def test_a_locked_remote_repository_stops_nothing(
    remote_repo: RemoteRepo, docker_port: SdkDocker, resources: Resources, busybox_image: str
) -> None:
    """Another host holds the exclusive lock: a backup of a volume whose container is to be stopped
    refuses before it stops anything; with CARGOHOLD_LOCK_WAIT it waits with the container running,
    and stops it only once it has the lock."""
    r = remote_repo
    r.cli("init")
    vol = resources.volume("rlk")
    ctr = resources.run(
        busybox_image, command=SERVICE, volumes={vol: "/data"}, labels={"cargohold.consistency": "stop"}
    )
    assert docker_port.exec(ctr, ["sh", "-c", "echo x > /data/x"]).exit_code == 0
    started = docker_port.inspect_container(ctr).started_at
    store = r.backend()
    doc = {"version": 1, "kind": "exclusive", "operation": "key add", "host": "ch-other-host.example", "pid": 99,
           "user": "ops", "token": "0123456789abcdef", "created": _now(), "refreshed": _now()}  # fmt: skip
    store.create("locks/exclusive", json.dumps(doc).encode())
    try:
        refused = r.cli("backup", vol, code=8)
        assert refused.stderr.count("\n") == 1 and "ch-other-host.example" in refused.stderr, refused.stderr
        assert docker_port.inspect_container(ctr).started_at == started  # never stopped
        release = threading.Timer(4.0, lambda: store.delete("locks/exclusive"))
        release.start()
        t0 = time.monotonic()
        out = js(r.cli("backup", vol, "--json", env=r.env(CARGOHOLD_LOCK_WAIT="60")))
        release.join()
    finally:
        store.close()
    [res] = out["results"]
    assert time.monotonic() - t0 >= 4.0 and res["error"] is None and res["consistency"] == "stop", res
    assert res["downtime_seconds"][ctr] < 4.0  # stopped after the wait, not during it
    assert docker_port.inspect_container(ctr).state == "running"


def _now() -> str:
    return datetime.now(UTC).isoformat(timespec="microseconds").replace("+00:00", "Z")


def test_a_restore_from_a_locked_remote_repository_changes_nothing(
    remote_repo: RemoteRepo, docker_port: SdkDocker, resources: Resources, busybox_image: str
) -> None:
    """Another host holds the exclusive lock: `restore --to` a new volume refuses without leaving
    that volume behind, and `restore --to` a volume of a running container with
    --restart-containers refuses before stopping the container; once the lock is gone both work."""
    r = remote_repo
    r.cli("init")
    vol, _ctr = filled_volume(docker_port, resources, busybox_image, "rrl")
    snap = js(r.cli("backup", vol, "--json"))["results"][0]["snapshot"]["id"]
    target = resources.track_volume(resources.name("rrl-new"))
    used = resources.volume("rrl-used")
    user = resources.run(busybox_image, command=SERVICE, volumes={used: "/data"})
    started = docker_port.inspect_container(user).started_at
    store = r.backend()
    doc = {"version": 1, "kind": "exclusive", "operation": "prune", "host": "ch-other-host.example", "pid": 98,
           "user": "ops", "token": "0123456789abcdef", "created": _now(), "refreshed": _now()}  # fmt: skip
    store.create("locks/exclusive", json.dumps(doc).encode())
    try:
        new = r.cli("restore", snap, "--to", target, code=8)
        assert new.stderr.count("\n") == 1 and "ch-other-host.example" in new.stderr, new.stderr
        assert target not in {v.name for v in docker_port.list_volumes()}
        busy = r.cli("restore", snap, "--to", used, "--force", "--restart-containers", code=8)
        assert busy.stderr.count("\n") == 1 and "ch-other-host.example" in busy.stderr, busy.stderr
        assert docker_port.inspect_container(user).started_at == started  # never stopped
        assert len(js(r.cli("snapshots", "--json"))) == 1  # no safety snapshot either
    finally:
        store.delete("locks/exclusive")
        store.close()
    r.cli("restore", snap, "--to", target)
    r.cli("restore", snap, "--to", used, "--force", "--restart-containers")
    assert listing(docker_port, target) == listing(docker_port, vol) == listing(docker_port, used)
    assert docker_port.inspect_container(user).state == "running"


@pytest.mark.parametrize("via", ["direct", "api"])
def test_a_restore_cut_off_from_the_repository_leaves_no_half_volume(
    s3_env: RgwServer, s3_bucket: str, tmp_path: Path, docker_port: SdkDocker, resources: Resources,
    busybox_image: str, remote_repo_type: type[RemoteRepo], via: str,
) -> None:  # fmt: skip
    """The S3 server becomes unreachable in the middle of `restore --to` a new volume: the restore
    fails in one line (exit 12) and removes the volume it created, so that the same command run
    again, once the server is back, restores (no --force, no safety snapshot of half a restore)."""
    host, port = s3_env.endpoint.removeprefix("http://").rsplit(":", 1)
    with FaultProxy((host, int(port))) as proxy:
        url = f"s3://{s3_bucket}/repo?endpoint=http://{proxy.address}"
        r = remote_repo_type("s3", url, url, tmp_path, {**s3_env.env(), "CARGOHOLD_RETRY_BUDGET": "3"})
        r.cli("init")
        vol, _ctr = filled_volume(docker_port, resources, busybox_image, "rcut")
        snap = js(r.cli("backup", vol, "--json"))["results"][0]["snapshot"]["id"]
        target = resources.track_volume(resources.name("rcut-new"))
        proxy.set_bandwidth(down=2 << 20)  # 2 MiB/s: the 12 MB restore takes a few seconds
        proxy.reset_stats()
        restore = r.popen("restore", snap, "--to", target, "--via", via)
        proxy.wait_for(lambda st: st.bytes_down > 3 << 20, timeout=60)
        proxy.refuse(reset_open=True)  # the server is gone
        _out, err = restore.communicate(timeout=120)
        lines = err.strip().splitlines()
        # one error line (a warning that the lock could not be removed may come before it)
        assert restore.returncode == 12 and "Traceback" not in err, err
        assert lines[-1].startswith("cargohold: error:") and all(x.startswith("warning:") for x in lines[:-1]), err
        assert f"volume {target!r}, created for this restore, was removed" in lines[-1], lines[-1]
        assert target not in {v.name for v in docker_port.list_volumes()}, "a half-restored volume was left"
        proxy.refuse(False)
        proxy.pass_through()
        again = js(r.cli("restore", snap, "--to", target, "--via", via, "--json"))
        assert again["created"] is True and again["safety_snapshot"] is None
        exact = via == "direct"
        assert listing(docker_port, target, seconds=not exact) == listing(docker_port, vol, seconds=not exact)
