"""Back up and restore Docker state on the real engine: every source kind, both read paths."""

from __future__ import annotations

import os
import re
import subprocess
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from cargohold.backends import MemoryBackend
from cargohold.docker.sdk import SdkDocker
from cargohold.errors import DockerConflict, DockerError, UsageError, VolumeNotFound
from cargohold.repo.archiver import Archiver
from cargohold.repo.format import BlobType
from cargohold.repo.keys import KdfParams
from cargohold.repo.repository import Repository
from cargohold.repo.tree import Node
from cargohold.services.docker_backup import BackupRequest, DockerBackup, RunReport
from cargohold.services.docker_restore import VolumeRestoreRequest, restore_volume
from cargohold.services.docker_sources import StateSource, Via, resolve
from cargohold.services.intents import IntentJournal
from cargohold.testbed.recipes import POSTGRES
from cargohold.testbed.resources import Resources, wait_ready

SERVICE = ["sh", "-c", "trap 'exit 0' TERM; sleep 600 & wait"]
FILL = (
    "mkdir -p /data/sub/deep && echo hello > /data/sub/f && head -c 3000000 /dev/urandom > /data/big"
    " && ln /data/sub/f /data/hard && ln -s sub/f /data/link && mkfifo /data/fifo"
    " && chown -R 33:44 /data/sub && chmod 640 /data/sub/f && chmod 4750 /data/big && chmod 710 /data"
    " && touch -d '2020-02-03 04:05:06' /data/sub/f"
)


def file_in(repo: Repository, tree_id: bytes, path: str) -> Node:
    node: Node | None = None
    for part in path.split("/"):
        node = repo.load_tree(tree_id).find(part.encode())
        assert node is not None, path
        tree_id = node.subtree or b""
    assert node is not None
    return node


@pytest.fixture
def repo() -> Repository:
    return Repository.init(MemoryBackend(), "pw", kdf=KdfParams.FAST)


@pytest.fixture
def journal(tmp_path: Path) -> IntentJournal:
    return IntentJournal(tmp_path / "intents")


def listing(docker: SdkDocker, volume: str, *, seconds: bool = False) -> str:
    """Everything a restore must keep (type, mode, owner, size, links, target, mtime, content),
    read from the volume's mountpoint (the test engine is local). ``seconds``: mtimes to the
    second, all the Engine archive API carries."""
    mp = docker.inspect_volume(volume).mountpoint
    out = subprocess.run(
        f"cd {mp} && find . -printf '%p %y %m %U %G %s %n %l %TY-%Tm-%Td %TH:%TM:%TS\\n' | sort"
        " && find . -type f -exec md5sum {} + | sort",
        shell=True,
        capture_output=True,
        text=True,
        check=True,
    ).stdout
    return re.sub(r"(\d\d:\d\d:\d\d)\.\d+", r"\1", out) if seconds else out


def backup(
    repo: Repository, docker: SdkDocker, journal: IntentJournal, sources: list[StateSource], **kw: object
) -> RunReport:
    report = DockerBackup(repo, docker, docker.endpoint, BackupRequest(journal=journal, **kw)).run(sources)  # type: ignore[arg-type]
    assert not report.failed, [r.error for r in report.failed]
    return report


@pytest.fixture
def filled(docker_port: SdkDocker, resources: Resources, busybox_image: str) -> Iterator[tuple[str, str]]:
    vol = resources.volume("src", labels={"app": "shop", "tier": "db"})
    ctr = resources.run(busybox_image, command=SERVICE, volumes={vol: "/data"})
    res = docker_port.exec(ctr, ["sh", "-c", FILL])
    assert res.exit_code == 0, res.stderr
    yield vol, ctr


@pytest.mark.parametrize("via", [Via.DIRECT, Via.API])
def test_named_volume_round_trip(
    docker_port: SdkDocker,
    resources: Resources,
    repo: Repository,
    journal: IntentJournal,
    filled: tuple[str, str],
    via: Via,
) -> None:
    vol, ctr = filled
    report = backup(repo, docker_port, journal, resolve(docker_port, volumes=[vol]), via=via)
    [res] = report.results
    assert res.via is via and res.snapshot is not None
    meta = res.snapshot.source.meta
    assert res.snapshot.source.kind == "volume" and res.snapshot.source.name == vol
    assert meta["volume"]["labels"]["app"] == "shop" and meta["run_id"] == report.run_id
    assert meta["containers"][0]["name"] == ctr and meta["containers"][0]["mount_path"] == "/data"
    target = resources.track_volume(resources.name("restored"))
    out = restore_volume(
        repo, docker_port, docker_port.endpoint, res.snapshot, VolumeRestoreRequest(to=target, via=via, journal=journal)
    )
    assert out.created and not out.damaged and out.files == 3  # big, sub/f and its hard link
    assert docker_port.inspect_volume(target).labels == docker_port.inspect_volume(vol).labels
    exact = via is Via.DIRECT
    assert listing(docker_port, target, seconds=not exact) == listing(docker_port, vol, seconds=not exact)


def test_api_path_keeps_seconds_and_direct_keeps_nanoseconds(
    docker_port: SdkDocker, resources: Resources, repo: Repository, journal: IntentJournal, filled: tuple[str, str]
) -> None:
    vol, _ = filled
    mp = Path(docker_port.inspect_volume(vol).mountpoint)
    os.utime(mp / "big", ns=(0, 1_600_000_000_123_456_789))
    direct = backup(repo, docker_port, journal, resolve(docker_port, volumes=[vol]), via=Via.DIRECT).results[0]
    api = backup(repo, docker_port, journal, resolve(docker_port, volumes=[vol]), via=Via.API).results[0]
    assert direct.snapshot is not None and api.snapshot is not None
    big_d = repo.load_tree(direct.snapshot.tree).find(b"big")
    big_a = repo.load_tree(api.snapshot.tree).find(b"big")
    assert big_d is not None and big_a is not None
    assert big_d.mtime_ns == 1_600_000_000_123_456_789 and big_a.mtime_ns == 1_600_000_000_000_000_000
    assert big_d.content == big_a.content  # the same chunks: both paths deduplicate together


def test_driver_options_kept(
    docker_port: SdkDocker,
    resources: Resources,
    repo: Repository,
    journal: IntentJournal,
    busybox_image: str,
    tmp_path: Path,
) -> None:
    """A named volume bound to a host directory (driver options): recreated as it was."""
    device = tmp_path / "device"
    device.mkdir()
    opts = {"type": "none", "o": "bind", "device": str(device)}
    vol = resources.volume("opts", options=opts)
    ctr = resources.run(busybox_image, command=SERVICE, volumes={vol: "/data"})
    assert docker_port.exec(ctr, ["sh", "-c", "echo on-the-device > /data/x"]).exit_code == 0
    [res] = backup(repo, docker_port, journal, resolve(docker_port, volumes=[vol])).results
    assert res.via is Via.API  # mounted only while a container uses it: never read the mountpoint
    assert res.snapshot is not None and res.snapshot.source.meta["volume"]["options"] == opts
    target = resources.track_volume(resources.name("opts-restored"))
    # same options, same directory, which still holds the data: nothing is overwritten
    with pytest.raises(DockerConflict, match="not empty"):
        restore_volume(
            repo, docker_port, docker_port.endpoint, res.snapshot, VolumeRestoreRequest(to=target, journal=journal)
        )
    # the refused restore removed the volume it had made (the directory and its data stay)
    assert target not in {v.name for v in docker_port.list_volumes()}
    assert (device / "x").read_text() == "on-the-device\n"
    (device / "x").unlink()  # the data is lost ...
    restore_volume(
        repo, docker_port, docker_port.endpoint, res.snapshot, VolumeRestoreRequest(to=target, journal=journal)
    )
    assert docker_port.inspect_volume(target).options == opts
    assert (device / "x").read_text() == "on-the-device\n"  # ... and back


@pytest.mark.parametrize("via", [Via.DIRECT, Via.API])
def test_anonymous_volume_and_bind_of_a_container(
    docker_port: SdkDocker,
    resources: Resources,
    repo: Repository,
    journal: IntentJournal,
    busybox_image: str,
    tmp_path: Path,
    via: Via,
) -> None:
    bind = tmp_path / "bind"
    bind.mkdir()
    (bind / "conf.ini").write_text("[x]\ny=1\n")
    ctr = resources.run(
        busybox_image,
        command=SERVICE,
        mounts=[{"Type": "volume", "Target": "/anon"}, {"Type": "bind", "Source": str(bind), "Target": "/etc/app"}],
    )
    assert docker_port.exec(ctr, ["sh", "-c", "echo cache > /anon/state"]).exit_code == 0
    sources = resolve(docker_port, containers=[ctr])
    assert sorted(s.kind.value for s in sources) == ["bind", "volume"]
    report = backup(repo, docker_port, journal, sources, via=via)
    by_kind = {r.source.kind.value: r for r in report.results}
    bind_snap = by_kind["bind"].snapshot
    assert bind_snap is not None and bind_snap.source.name == str(bind)
    anon = by_kind["volume"].snapshot
    assert anon is not None
    target = resources.track_volume(resources.name("anon-restored"))
    restore_volume(
        repo, docker_port, docker_port.endpoint, anon, VolumeRestoreRequest(to=target, via=via, journal=journal)
    )
    assert Path(docker_port.inspect_volume(target).mountpoint, "state").read_text() == "cache\n"


def test_existing_volume_rules(
    docker_port: SdkDocker, resources: Resources, repo: Repository, journal: IntentJournal, filled: tuple[str, str]
) -> None:
    vol, ctr = filled
    [res] = backup(repo, docker_port, journal, resolve(docker_port, volumes=[vol])).results
    assert res.snapshot is not None
    with pytest.raises(DockerConflict, match="used by running container"):
        restore_volume(
            repo,
            docker_port,
            docker_port.endpoint,
            res.snapshot,
            VolumeRestoreRequest(to=vol, force=True, journal=journal),
        )
    other = resources.volume("busy")
    Path(docker_port.inspect_volume(other).mountpoint, "keep.txt").write_text("precious")
    with pytest.raises(DockerConflict, match="not empty"):
        restore_volume(
            repo, docker_port, docker_port.endpoint, res.snapshot, VolumeRestoreRequest(to=other, journal=journal)
        )
    assert Path(docker_port.inspect_volume(other).mountpoint, "keep.txt").read_text() == "precious"
    out = restore_volume(
        repo,
        docker_port,
        docker_port.endpoint,
        res.snapshot,
        VolumeRestoreRequest(to=other, force=True, journal=journal),
    )
    assert out.safety_snapshot is not None
    safety = repo.load_snapshot(out.safety_snapshot)
    assert "safety" in safety.tags and repo.load_tree(safety.tree).find(b"keep.txt") is not None
    assert listing(docker_port, other) == listing(docker_port, vol)
    # into the volume in use, restarting its container
    docker_port.exec(ctr, ["rm", "-rf", "/data/sub"])
    out = restore_volume(
        repo,
        docker_port,
        docker_port.endpoint,
        res.snapshot,
        VolumeRestoreRequest(to=vol, force=True, restart_containers=True, via=Via.API, journal=journal),
    )
    assert out.restarted == [ctr] and docker_port.inspect_container(ctr).state == "running"
    assert docker_port.exec(ctr, ["cat", "/data/sub/f"]).stdout == b"hello\n"
    assert journal.pending() == []


def test_failing_pre_hook_leaves_no_snapshot(
    docker_port: SdkDocker, resources: Resources, repo: Repository, journal: IntentJournal, busybox_image: str
) -> None:
    vol = resources.volume("hook")
    ctr = resources.run(
        busybox_image,
        command=SERVICE,
        volumes={vol: "/data"},
        labels={"cargohold.consistency": "stop", "cargohold.pre": "echo cannot flush >&2; exit 4"},
    )
    report = DockerBackup(repo, docker_port, docker_port.endpoint, BackupRequest(journal=journal)).run(
        resolve(docker_port, volumes=[vol])
    )
    [res] = report.results
    assert res.error is not None and "pre-hook" in res.error and "cannot flush" in res.error
    assert res.snapshot is None and repo.list_snapshot_ids() == []
    assert docker_port.inspect_container(ctr).state == "running"


def test_bad_input(docker_port: SdkDocker, repo: Repository, journal: IntentJournal, tmp_path: Path) -> None:
    with pytest.raises(VolumeNotFound):
        resolve(docker_port, volumes=["chtest-no-such-volume-x"])
    with pytest.raises(UsageError, match="say what to back up"):
        resolve(docker_port)
    (tmp_path / "d").mkdir()
    snap = Archiver(repo).run(tmp_path / "d").snapshot
    assert snap is not None
    with pytest.raises(UsageError, match="not of a volume"):
        restore_volume(
            repo, docker_port, docker_port.endpoint, snap, VolumeRestoreRequest(to="chtest-x", journal=journal)
        )


def test_postgres_under_write_load_with_stop(
    docker_port: SdkDocker, resources: Resources, repo: Repository, journal: IntentJournal, postgres_image: str
) -> None:
    """Rows are only ever inserted in pairs in one transaction: a consistent copy has an even count."""
    vol = resources.volume("pg")
    pg = resources.run(
        postgres_image, volumes={vol: "/var/lib/postgresql/data"}, labels={"cargohold.consistency": "stop"}
    )
    wait_ready(docker_port, pg, POSTGRES)
    psql = ["psql", "-U", "postgres", "-v", "ON_ERROR_STOP=1", "-At", "-c"]
    assert docker_port.exec(pg, [*psql, "CREATE TABLE pairs(id serial primary key, v int)"]).exit_code == 0
    stop = threading.Event()

    def writer() -> None:
        while not stop.is_set():
            try:
                docker_port.exec(
                    pg, [*psql, "BEGIN; INSERT INTO pairs(v) VALUES (1); INSERT INTO pairs(v) VALUES (2); COMMIT"]
                )
            except DockerError:  # stopped for the backup: the load waits for it to come back
                time.sleep(0.05)

    thread = threading.Thread(target=writer)
    thread.start()
    try:
        time.sleep(1.0)
        [res] = backup(repo, docker_port, journal, resolve(docker_port, volumes=[vol])).results
    finally:
        stop.set()
        thread.join(30)
    assert res.snapshot is not None and res.downtime[pg] > 0
    assert docker_port.inspect_container(pg).state == "running"
    target = resources.track_volume(resources.name("pg-restored"))
    restore_volume(
        repo, docker_port, docker_port.endpoint, res.snapshot, VolumeRestoreRequest(to=target, journal=journal)
    )
    check = resources.run(postgres_image, volumes={target: "/var/lib/postgresql/data"})
    wait_ready(docker_port, check, POSTGRES)
    count = int(docker_port.exec(check, [*psql, "SELECT count(*) FROM pairs"]).stdout)
    assert count > 0 and count % 2 == 0
    bad = docker_port.exec(
        check,
        [
            *psql,
            "SELECT count(*) FROM pairs a WHERE v = 1 AND NOT EXISTS "
            "(SELECT 1 FROM pairs b WHERE b.id = a.id + 1 AND b.v = 2)",
        ],
    )
    assert bad.stdout.strip() == b"0"


def test_postgres_dump_is_stored_beside_the_files(
    docker_port: SdkDocker, resources: Resources, repo: Repository, journal: IntentJournal, postgres_image: str
) -> None:
    vol = resources.volume("pgdump")
    pg = resources.run(postgres_image, volumes={vol: "/var/lib/postgresql/data"})  # no label: dump by default
    wait_ready(docker_port, pg, POSTGRES)
    psql = ["psql", "-U", "postgres", "-v", "ON_ERROR_STOP=1", "-At", "-c"]
    assert (
        docker_port.exec(pg, [*psql, "CREATE TABLE t AS SELECT g AS id FROM generate_series(1, 321) g"]).exit_code == 0
    )
    [res] = backup(repo, docker_port, journal, resolve(docker_port, volumes=[vol])).results
    assert res.mode.value == "dump" and any("has no cargohold.consistency label" in w for w in res.warnings)
    assert res.downtime == {} and docker_port.inspect_container(pg).state == "running"
    snap = res.snapshot
    assert snap is not None and set(snap.extra_trees) == {"dumps"}
    [meta_dump] = snap.source.meta["dumps"]
    assert meta_dump["kind"] == "postgres" and meta_dump["path"] == f"{pg}/postgres/dumpall.sql"
    node = file_in(repo, snap.extra_trees["dumps"], meta_dump["path"])
    assert node.size == meta_dump["size"] > 0
    text = b"".join(repo.load_blob(BlobType.DATA, c) for c in node.content)
    assert b"COPY public.t (id) FROM stdin;" in text


def test_postgres_under_write_load_with_dump(
    docker_port: SdkDocker, resources: Resources, repo: Repository, journal: IntentJournal, postgres_image: str
) -> None:
    """The dump of a database under load restores into one that passes the same invariant."""
    vol = resources.volume("pgload")
    pg = resources.run(postgres_image, volumes={vol: "/var/lib/postgresql/data"})  # dump by default
    wait_ready(docker_port, pg, POSTGRES)
    psql = ["psql", "-U", "postgres", "-v", "ON_ERROR_STOP=1", "-At", "-c"]
    assert docker_port.exec(pg, [*psql, "CREATE TABLE pairs(id serial primary key, v int)"]).exit_code == 0
    stop = threading.Event()

    def writer() -> None:
        while not stop.is_set():
            docker_port.exec(
                pg, [*psql, "BEGIN; INSERT INTO pairs(v) VALUES (1); INSERT INTO pairs(v) VALUES (2); COMMIT"]
            )

    thread = threading.Thread(target=writer)
    thread.start()
    try:
        time.sleep(1.0)
        [res] = backup(repo, docker_port, journal, resolve(docker_port, volumes=[vol])).results
    finally:
        stop.set()
        thread.join(30)
    assert res.mode.value == "dump" and res.downtime == {} and res.snapshot is not None
    target = resources.track_volume(resources.name("pgload-restored"))
    out = restore_volume(
        repo,
        docker_port,
        docker_port.endpoint,
        res.snapshot,
        VolumeRestoreRequest(to=target, from_dump="", journal=journal),
    )
    assert out.dump is not None
    check = resources.run(postgres_image, volumes={target: "/var/lib/postgresql/data"})
    wait_ready(docker_port, check, POSTGRES)
    count = int(docker_port.exec(check, [*psql, "SELECT count(*) FROM pairs"]).stdout)
    assert count > 0 and count % 2 == 0
    torn = docker_port.exec(
        check,
        [
            *psql,
            "SELECT count(*) FROM pairs a WHERE v = 1 AND NOT EXISTS (SELECT 1 FROM pairs b WHERE b.id = a.id + 1)",
        ],
    )
    assert torn.stdout.strip() == b"0"


def test_bad_label_fails_only_its_source(
    docker_port: SdkDocker, resources: Resources, repo: Repository, journal: IntentJournal, busybox_image: str
) -> None:
    bad = resources.volume("badlabel")
    good = resources.volume("goodlabel")
    resources.run(busybox_image, command=SERVICE, volumes={bad: "/data"}, labels={"cargohold.consistency": "freeze"})
    report = DockerBackup(repo, docker_port, docker_port.endpoint, BackupRequest(journal=journal)).run(
        resolve(docker_port, volumes=[bad, good])
    )
    by_name = {r.source.name: r for r in report.results}
    assert by_name[bad].error is not None and "cargohold.consistency='freeze'" in by_name[bad].error
    assert by_name[good].error is None and by_name[good].snapshot is not None
    assert [s.source.name for s in repo.snapshots()] == [good]


def test_force_restore_over_a_hooked_container_in_use(
    docker_port: SdkDocker, resources: Resources, repo: Repository, journal: IntentJournal, busybox_image: str
) -> None:
    """The safety snapshot of a restore runs no hooks or dumps in the containers it has stopped."""
    vol = resources.volume("hooked")
    ctr = resources.run(
        busybox_image,
        command=SERVICE,
        mounts=[
            {"Type": "volume", "Source": vol, "Target": "/data"},
            {"Type": "volume", "Source": vol, "Target": "/again"},  # the same volume twice
        ],
        labels={"cargohold.pre": "echo pre >> /data/hooks", "cargohold.dump": "sqlite"},
    )
    assert docker_port.exec(ctr, ["sh", "-c", "echo v1 > /data/f"]).exit_code == 0
    [res] = backup(repo, docker_port, journal, resolve(docker_port, volumes=[vol])).results
    assert res.snapshot is not None
    assert docker_port.exec(ctr, ["sh", "-c", "echo v2 > /data/f"]).exit_code == 0
    out = restore_volume(
        repo,
        docker_port,
        docker_port.endpoint,
        res.snapshot,
        VolumeRestoreRequest(to=vol, force=True, restart_containers=True, journal=journal),
    )
    assert out.safety_snapshot is not None and out.restarted == [ctr]
    assert docker_port.exec(ctr, ["cat", "/data/f"]).stdout == b"v1\n"
    assert journal.pending() == []
