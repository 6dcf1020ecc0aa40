"""Restore from application dumps (`restore --from-dump`) and verify them, on the real engine."""

from __future__ import annotations

import dataclasses
import os
import sqlite3
import subprocess
import sys
from pathlib import Path

import pytest

from cargohold.backends import MemoryBackend
from cargohold.docker.sdk import SdkDocker
from cargohold.errors import DockerConflict, ImageNotFound, UsageError
from cargohold.repo.keys import KdfParams
from cargohold.repo.repository import Repository
from cargohold.repo.snapshot import Snapshot, Source
from cargohold.repo.tar_archiver import TarArchiver
from cargohold.repo.tar_writer import directory_tar
from cargohold.services.docker_backup import BackupRequest, DockerBackup
from cargohold.services.docker_restore import VolumeRestoreRequest, restore_volume
from cargohold.services.docker_sources import resolve
from cargohold.services.dump_restore import check_dumps, dump_body, dump_node
from cargohold.services.intents import IntentJournal
from cargohold.services.verify import verify
from cargohold.testbed.recipes import MARIADB, POSTGRES, REDIS
from cargohold.testbed.resources import Resources, wait_ready

PGDATA = "/var/lib/postgresql/data"
CLI = [sys.executable, "-m", "cargohold.cli.app"]


@pytest.fixture
def repo() -> Repository:
    return Repository.init(MemoryBackend(), "pw", kdf=KdfParams.FAST)


@pytest.fixture
def journal(tmp_path: Path) -> IntentJournal:
    return IntentJournal(tmp_path / "intents")


def ok(port: SdkDocker, ctr: str, *cmd: str) -> str:
    res = port.exec(ctr, list(cmd))
    assert res.exit_code == 0, res.stderr.decode()
    return res.stdout.decode().strip()


def backup_one(repo: Repository, docker: SdkDocker, journal: IntentJournal, volume: str) -> Snapshot:
    report = DockerBackup(repo, docker, docker.endpoint, BackupRequest(journal=journal)).run(
        resolve(docker, volumes=[volume])
    )
    [res] = report.results
    assert res.error is None and res.snapshot is not None and res.dumps, res.error
    return res.snapshot


def dump_text(repo: Repository, snap: Snapshot) -> bytes:
    [meta] = snap.source.meta["dumps"]
    return b"".join(dump_body(repo, dump_node(repo, snap, meta["path"])))


def gone(docker: SdkDocker, ctr: str, volume: str) -> None:
    docker.remove_container(ctr, force=True)
    docker.remove_volume(volume)


def with_dump(repo: Repository, snap: Snapshot, content: bytes, tmp: Path) -> Snapshot:
    """The snapshot with its (one) dump replaced by ``content``, as a damaged repository would hold it."""
    [meta] = snap.source.meta["dumps"]
    target = tmp / "dumps" / meta["path"]
    target.parent.mkdir(parents=True)
    target.write_bytes(content)
    tree = TarArchiver(repo).build_tree(directory_tar(tmp / "dumps"), name="damaged dumps")
    repo.flush()
    source = Source(snap.source.kind, snap.source.name, {**snap.source.meta, "dumps": [{**meta, "size": len(content)}]})
    return dataclasses.replace(snap, extra_trees={"dumps": tree}, source=source)


def test_postgres_restore_from_dump_and_verify(
    docker_port: SdkDocker,
    resources: Resources,
    repo: Repository,
    journal: IntentJournal,
    postgres_image: str,
    tmp_path: Path,
) -> None:
    vol = resources.volume("pgfd")
    pg = resources.run(postgres_image, prefix="pgfd", volumes={vol: PGDATA}, environment={"PGPORT": "5433"})
    wait_ready(docker_port, pg, POSTGRES)
    psql = ["psql", "-U", "postgres", "-d", "postgres", "-v", "ON_ERROR_STOP=1", "-At", "-c"]
    ok(docker_port, pg, *psql, "CREATE DATABASE shop")
    ok(
        docker_port,
        pg,
        "psql", "-U", "postgres", "-d", "shop", "-v", "ON_ERROR_STOP=1", "-c",
        "CREATE TABLE t(id int primary key, v text); CREATE TABLE e(id int);"
        " INSERT INTO t SELECT g, md5(g::text) FROM generate_series(1,2000) g;"
        " CREATE SCHEMA s; CREATE TABLE s.m(k int) PARTITION BY RANGE (k);"
        " CREATE TABLE s.m1 PARTITION OF s.m FOR VALUES FROM (0) TO (10); INSERT INTO s.m VALUES (1), (2);"
        ' CREATE UNLOGGED TABLE "Odd Name"(x int); INSERT INTO "Odd Name" VALUES (7)',
    )  # fmt: skip
    snap = backup_one(repo, docker_port, journal, vol)
    gone(docker_port, pg, vol)

    target = resources.track_volume(resources.name("pgfd-restored"))
    report = restore_volume(
        repo, docker_port, docker_port.endpoint, snap, VolumeRestoreRequest(to=target, from_dump="", journal=journal)
    )
    assert report.created and report.dump is not None and report.dump.ok
    # template1, postgres, shop; t, e, s.m, s.m1, "Odd Name"; rows as the dump's COPY blocks hold them
    assert report.dump.detail == "3 databases, 5 tables, 2003 rows match the dump", report.dump.detail
    assert not [c for c in docker_port.list_containers() if target in {m.name for m in c.mounts}]  # loader removed

    pg2 = resources.run(postgres_image, prefix="pgfd2", volumes={target: PGDATA}, environment={"PGPORT": "5433"})
    wait_ready(docker_port, pg2, POSTGRES)
    got = ok(docker_port, pg2, "psql", "-U", "postgres", "-d", "shop", "-At", "-c", "SELECT count(*), sum(id) FROM t")
    assert got == "2000|2001000"

    record = verify(repo, snap, docker=docker_port, endpoint=docker_port.endpoint)
    [check] = record.dumps
    assert check.ok and check.kind == "postgres" and "2003 rows" in check.detail, check.detail
    assert record.ok, record.problems

    # what verify runs on the dumps (the files part is proven above)
    [bad] = check_dumps(repo, docker_port, with_dump(repo, snap, b"", tmp_path))
    assert not bad.ok and "not a pg_dumpall script" in bad.detail, bad.detail
    [cut] = check_dumps(repo, docker_port, with_dump(repo, snap, dump_text(repo, snap)[:-3000], tmp_path / "2"))
    assert not cut.ok and "the dump is truncated" in cut.detail, cut.detail


def test_mariadb_restore_from_dump_and_verify(
    docker_port: SdkDocker,
    resources: Resources,
    repo: Repository,
    journal: IntentJournal,
    mariadb_image: str,
    tmp_path: Path,
) -> None:
    vol = resources.volume("myfd")
    my = resources.run(mariadb_image, prefix="myfd", volumes={vol: "/var/lib/mysql"})
    wait_ready(docker_port, my, MARIADB)
    ok(
        docker_port,
        my,
        "mariadb", "-uroot", "-e",
        "CREATE DATABASE shop; CREATE TABLE shop.t(id int primary key, v varchar(20));"
        " INSERT INTO shop.t VALUES (1,'a'),(2,'b'),(3,'c'); CREATE TABLE shop.empty(id int)",
    )  # fmt: skip
    snap = backup_one(repo, docker_port, journal, vol)
    gone(docker_port, my, vol)

    target = resources.track_volume(resources.name("myfd-restored"))
    report = restore_volume(
        repo, docker_port, docker_port.endpoint, snap, VolumeRestoreRequest(to=target, from_dump=my, journal=journal)
    )
    assert report.dump is not None
    assert "2 tables, 3 rows" in report.dump.detail, report.dump.detail
    my2 = resources.run(mariadb_image, prefix="myfd2", volumes={target: "/var/lib/mysql"})
    wait_ready(docker_port, my2, MARIADB)
    assert ok(docker_port, my2, "mariadb", "-uroot", "-N", "-e", "SELECT group_concat(v) FROM shop.t") == "a,b,c"

    # what verify runs on the dumps (verify itself, files included, is proven with the other servers)
    [good] = check_dumps(repo, docker_port, snap)
    assert good.ok and good.detail == "1 databases, 2 tables, 3 rows readable", good.detail

    garbage = b"CREATE DATABASE broken;\nTHIS IS NOT SQL;\n-- Dump completed on 2026-01-01\n"
    [bad] = check_dumps(repo, docker_port, with_dump(repo, snap, garbage, tmp_path))
    assert not bad.ok and "loading failed" in bad.detail and "syntax" in bad.detail, bad.detail


def test_redis_restore_from_dump_and_verify(
    docker_port: SdkDocker,
    resources: Resources,
    repo: Repository,
    journal: IntentJournal,
    redis_image: str,
    tmp_path: Path,
) -> None:
    vol = resources.volume("rdfd")
    rd = resources.run(redis_image, prefix="rdfd", volumes={vol: "/data"})
    wait_ready(docker_port, rd, REDIS)
    for i in range(50):
        ok(docker_port, rd, "redis-cli", "SET", f"k{i}", f"v{i}")
    snap = backup_one(repo, docker_port, journal, vol)
    gone(docker_port, rd, vol)

    target = resources.track_volume(resources.name("rdfd-restored"))
    report = restore_volume(
        repo, docker_port, docker_port.endpoint, snap, VolumeRestoreRequest(to=target, from_dump="", journal=journal)
    )
    assert report.dump is not None
    assert report.dump.detail.startswith("50 keys"), report.dump.detail
    rd2 = resources.run(redis_image, prefix="rdfd2", volumes={target: "/data"})
    wait_ready(docker_port, rd2, REDIS)
    assert ok(docker_port, rd2, "redis-cli", "GET", "k42") == "v42"
    ok(docker_port, rd2, "redis-cli", "SET", "k42", "changed")
    with pytest.raises(DockerConflict, match="used by running container"):
        restore_volume(repo, docker_port, docker_port.endpoint, snap, VolumeRestoreRequest(to=target, from_dump=""))
    again = restore_volume(
        repo,
        docker_port,
        docker_port.endpoint,
        snap,
        VolumeRestoreRequest(to=target, from_dump="", force=True, restart_containers=True, journal=journal),
    )
    assert again.safety_snapshot is not None and again.restarted == [rd2] and not again.created
    wait_ready(docker_port, rd2, REDIS)
    assert ok(docker_port, rd2, "redis-cli", "GET", "k42") == "v42"

    record = verify(repo, snap, docker=docker_port, endpoint=docker_port.endpoint)
    assert record.ok and record.dumps[0].detail.startswith("50 keys"), (record.problems, record.dumps)

    bad = verify(repo, with_dump(repo, snap, b"REDIS0011garbage", tmp_path), docker=docker_port,
                 endpoint=docker_port.endpoint)  # fmt: skip
    assert not bad.ok and "stopped" in bad.dumps[0].detail, bad.dumps[0].detail
    assert f"redis dump of {snap.source.meta['dumps'][0]['container']}: " in bad.problems[-1]
    # every scratch resource is gone, failed or not
    assert not [v.name for v in docker_port.list_volumes() if v.labels.get("cargohold.verify") == snap.id]
    scratch = f"cargohold-verify-dump-{snap.id[:8]}"  # (other sessions may use the engine meanwhile)
    assert not [c.name for c in docker_port.list_containers() if scratch in c.labels.get("cargohold.helper", "")]


def test_sqlite_copies_replace_the_live_files(
    docker_port: SdkDocker,
    resources: Resources,
    repo: Repository,
    journal: IntentJournal,
    busybox_image: str,
    tmp_path: Path,
) -> None:
    vol = resources.volume("sqfd")
    mp = Path(docker_port.inspect_volume(vol).mountpoint)
    con = sqlite3.connect(mp / "app.db")
    con.execute("PRAGMA journal_mode=WAL")
    con.execute("CREATE TABLE e(id integer primary key)")
    con.executemany("INSERT INTO e VALUES (?)", [(i,) for i in range(100)])
    con.commit()  # the WAL holds the rows; the copy must not need it
    app = resources.run(
        busybox_image, prefix="sqfd", volumes={vol: "/srv"}, labels={"cargohold.consistency": "dump",
        "cargohold.dump": "sqlite"}, command=["sh", "-c", "trap 'exit 0' TERM; sleep 600 & wait"],
    )  # fmt: skip
    snap = backup_one(repo, docker_port, journal, vol)
    con.close()
    gone(docker_port, app, vol)

    target = resources.track_volume(resources.name("sqfd-restored"))
    report = restore_volume(
        repo, docker_port, docker_port.endpoint, snap, VolumeRestoreRequest(to=target, from_dump="", journal=journal)
    )
    assert report.dump is not None and "app.db: integrity_check ok" in report.dump.detail
    restored = Path(docker_port.inspect_volume(target).mountpoint)
    wal = restored / "app.db-wal"
    assert not wal.exists() or wal.stat().st_size == 0
    check = sqlite3.connect(restored / "app.db")
    assert check.execute("SELECT count(*) FROM e").fetchone() == (100,)
    check.close()
    record = verify(repo, snap, docker=docker_port, endpoint=docker_port.endpoint)
    assert record.dumps and all(d.ok for d in record.dumps), record.dumps


def test_bad_input_creates_nothing(
    docker_port: SdkDocker, resources: Resources, repo: Repository, journal: IntentJournal, busybox_image: str
) -> None:
    vol = resources.volume("nofd")
    snap = backup_one_files(repo, docker_port, journal, vol)
    target = resources.name("nofd-target")
    with pytest.raises(UsageError, match="holds no application dump"):
        restore_volume(repo, docker_port, docker_port.endpoint, snap, VolumeRestoreRequest(to=target, from_dump=""))
    assert target not in {v.name for v in docker_port.list_volumes()}

    meta = snap.source.meta
    fake = dataclasses.replace(
        snap,
        source=Source(
            "volume",
            vol,
            {
                **meta,
                "dumps": [{"kind": "postgres", "container": "db", "path": "db/postgres/dumpall.sql", "size": 1}],
                "containers": [{"name": "db", "image": "cargohold-test/nothing:here", "image_id": "sha256:" + "0" * 64,
                                "mount_path": PGDATA}],
            },
        ),
    )  # fmt: skip
    with pytest.raises(ImageNotFound, match="pull or build"):
        restore_volume(repo, docker_port, docker_port.endpoint, fake, VolumeRestoreRequest(to=target, from_dump=""))
    with pytest.raises(UsageError, match="no dump of container 'other'"):
        restore_volume(
            repo, docker_port, docker_port.endpoint, fake, VolumeRestoreRequest(to=target, from_dump="other")
        )
    assert target not in {v.name for v in docker_port.list_volumes()}

    image = docker_port.inspect_image(busybox_image).id
    runnable = dataclasses.replace(
        fake,
        source=Source("volume", vol, {**fake.source.meta, "containers": [
            {"name": "db", "image": busybox_image, "image_id": image, "mount_path": PGDATA}]}),
    )  # fmt: skip
    full = resources.volume("nofd-full")
    filler = resources.container(busybox_image, volumes={full: "/v"})
    docker_port.put_archive(filler, "/v", _one_file_tar())
    with pytest.raises(DockerConflict, match="not empty"):
        restore_volume(repo, docker_port, docker_port.endpoint, runnable, VolumeRestoreRequest(to=full, from_dump=""))
    assert [c.name for c in docker_port.list_containers() if full in {m.name for m in c.mounts}] == [filler]


def backup_one_files(repo: Repository, docker: SdkDocker, journal: IntentJournal, volume: str) -> Snapshot:
    report = DockerBackup(repo, docker, docker.endpoint, BackupRequest(journal=journal)).run(
        resolve(docker, volumes=[volume])
    )
    [res] = report.results
    assert res.snapshot is not None
    return res.snapshot


def _one_file_tar() -> bytes:
    import io
    import tarfile

    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w") as tar:
        info = tarfile.TarInfo("x")
        info.size = 1
        tar.addfile(info, io.BytesIO(b"x"))
    return buf.getvalue()


def test_cli_restore_from_dump_and_verify(
    docker_port: SdkDocker, resources: Resources, redis_image: str, tmp_path: Path
) -> None:
    env = {
        **os.environ,
        "CARGOHOLD_REPO": str(tmp_path / "repo"),
        "CARGOHOLD_PASSWORD": "pw",
        "CARGOHOLD_KDF": "fast",
        "CARGOHOLD_STATE_DIR": str(tmp_path / "state"),
    }

    def cli(*args: str, code: int = 0) -> subprocess.CompletedProcess[str]:
        res = subprocess.run([*CLI, *args], env=env, capture_output=True, text=True, timeout=300)
        assert res.returncode == code, (args, res.returncode, res.stdout, res.stderr)
        return res

    cli("init")
    vol = resources.volume("clifd")
    rd = resources.run(redis_image, prefix="clifd", volumes={vol: "/data"})
    wait_ready(docker_port, rd, REDIS)
    ok(docker_port, rd, "redis-cli", "SET", "answer", "42")
    cli("backup", vol)
    gone(docker_port, rd, vol)

    missing = cli("restore", "latest", "--source", vol, "--from-dump", code=2)
    assert "give --to VOLUME" in missing.stderr
    target = resources.track_volume(resources.name("clifd-restored"))
    out = cli("restore", "latest", "--source", vol, "--to", target, "--from-dump").stdout
    assert f"loaded the redis dump of {rd}" in out and "1 keys (DBSIZE)" in out, out
    named = cli(
        "restore", "latest", "--source", vol, "--to", target, "--from-dump", "--dump-container", "nobody", code=2
    )
    assert "has no dump of container 'nobody'" in named.stderr and len(named.stderr.strip().splitlines()) == 1

    rd2 = resources.run(redis_image, prefix="clifd2", volumes={target: "/data"})
    wait_ready(docker_port, rd2, REDIS)
    assert ok(docker_port, rd2, "redis-cli", "GET", "answer") == "42"

    text = cli("verify", "--latest", "--source", vol).stdout
    assert f"redis dump of {rd}: OK — 1 keys (DBSIZE)" in text, text
