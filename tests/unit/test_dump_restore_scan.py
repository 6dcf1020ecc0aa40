"""What restore --from-dump and verify read out of a dump before loading it, and how they choose it."""

from __future__ import annotations

import io
import sqlite3
import tarfile
from datetime import UTC, datetime
from pathlib import Path
from typing import cast

import pytest

from cargohold.docker.port import DockerPort
from cargohold.errors import ConsistencyError, ImageNotFound, IntegrityError, UsageError
from cargohold.model.engine import ImageInfo
from cargohold.repo.snapshot import Snapshot, Source
from cargohold.services.dump_restore import (
    MyScan,
    PgScan,
    files_tar,
    pg_connect_target,
    pg_errors,
    plan,
    sqlite_check,
    tar_member,
)

PG_DUMP = b"""--
-- PostgreSQL database cluster dump
--

SET default_transaction_read_only = off;
CREATE ROLE app;
\\connect template1

--
-- PostgreSQL database dump
--
\\connect postgres
CREATE TABLE public.notes (
    id integer
);
COPY public.notes (id) FROM stdin;
1
2
\\.

DROP DATABASE IF EXISTS "Shop Floor";
CREATE DATABASE "Shop Floor" WITH TEMPLATE = template0;
\\connect -reuse-previous=on "dbname='Shop Floor'"
CREATE UNLOGGED TABLE public.cache (k text);
CREATE TABLE public."Orders" (id integer, body text);
COPY public."Orders" (id, body) FROM stdin;
1\tCREATE TABLE inside the data
2\t-- not a comment either
3\tx
\\.
COPY public.cache (k) FROM stdin;
\\.

--
-- PostgreSQL database cluster dump complete
--

"""


def scan(scanner: PgScan | MyScan, data: bytes, piece: int) -> None:
    chunks = [data[i : i + piece] for i in range(0, len(data), piece)]
    assert b"".join(scanner.feed(chunks)) == data


@pytest.mark.parametrize("piece", [1, 7, 64, 1 << 20])
def test_pg_scan_counts_databases_tables_and_rows_whatever_the_chunking(piece: int) -> None:
    s = PgScan()
    scan(s, PG_DUMP, piece)
    assert s.header and s.complete
    assert s.databases == {"template1", "postgres", "Shop Floor"}
    assert dict(s.tables) == {"postgres": 1, "Shop Floor": 2}
    assert s.rows == {
        ("postgres", "public.notes"): 2,
        ("Shop Floor", 'public."Orders"'): 3,
        ("Shop Floor", "public.cache"): 0,
    }


def test_pg_scan_sees_a_truncated_dump() -> None:
    s = PgScan()
    scan(s, PG_DUMP[: PG_DUMP.index(b"COPY public.cache")], 100)
    assert s.header and not s.complete
    s = PgScan()
    scan(s, PG_DUMP + b"SELECT 1;\n", 100)  # statements after the end marker: not what pg_dumpall writes
    assert not s.complete
    s = PgScan()
    scan(s, b"", 1)
    assert not s.header and not s.complete


@pytest.mark.parametrize(
    ("line", "db"),
    [
        (b"\\connect shop", "shop"),
        (b'\\connect "Shop"', "Shop"),
        (b'\\connect "a""b"', 'a"b'),
        (b"\\connect -reuse-previous=on \"dbname='it''s'\"", "it's"),
        (b"\\connect -reuse-previous=on \"dbname='back\\\\slash'\"", "back\\slash"),
    ],
)
def test_pg_connect_target(line: bytes, db: str) -> None:
    assert pg_connect_target(line) == db


MY_DUMP = b"""-- MariaDB dump 10.19
/*!40101 SET NAMES utf8mb4 */;
CREATE DATABASE /*!32312 IF NOT EXISTS*/ `shop` /*!40100 DEFAULT CHARACTER SET latin1 */;
USE `shop`;
DROP TABLE IF EXISTS `t`;
CREATE TABLE `t` (
  `id` int(11) NOT NULL
);
INSERT INTO `t` VALUES (1),(2);
/*!50001 CREATE VIEW `v` AS SELECT 1 AS `id` */;
CREATE DATABASE /*!32312 IF NOT EXISTS*/ `we``ird`;
USE `we``ird`;
CREATE TABLE `a` (x int);
CREATE TABLE `b` (x int);
-- Dump completed on 2026-11-24 09:00:00
"""


def test_my_scan() -> None:
    s = MyScan()
    scan(s, MY_DUMP, 13)
    assert s.complete and s.databases == {"shop", "we`ird"}
    assert dict(s.tables) == {"shop": 1, "we`ird": 2}
    cut = MyScan()
    scan(cut, MY_DUMP[:-45], 13)
    assert not cut.complete


def test_files_tar_streams_a_readable_tar_and_checks_sizes() -> None:
    data = b"x" * 1000
    stream = b"".join(
        files_tar(
            [
                (tar_member("volume/a.db", 1000, mode=0o600, uid=70, gid=71), [data[:300], data[300:]]),
                (tar_member("volume/a.db-wal", 0), ()),
            ]
        )
    )
    with tarfile.open(fileobj=io.BytesIO(stream)) as tar:
        a, wal = tar.getmembers()
        assert (a.name, a.size, a.mode, a.uid, a.gid) == ("volume/a.db", 1000, 0o600, 70, 71)
        assert (wal.name, wal.size) == ("volume/a.db-wal", 0)
        f = tar.extractfile(a)
        assert f is not None and f.read() == data
    with pytest.raises(IntegrityError, match="999 bytes read"):
        b"".join(files_tar([(tar_member("short", 1000), [data[:999]])]))


class _FakeDocker:
    def __init__(self, images: dict[str, str]) -> None:
        self.images = images  # ref -> id

    def image_exists(self, ref: str) -> bool:
        return ref in self.images or ref in self.images.values()

    def inspect_image(self, ref: str) -> ImageInfo:
        return ImageInfo(id=self.images[ref], tags=(ref,), volumes=())


def FakeDocker(images: dict[str, str]) -> DockerPort:
    """Just the image look-ups plan() makes."""
    return cast(DockerPort, _FakeDocker(images))


def snapshot(dumps: list[dict[str, object]], containers: list[dict[str, object]]) -> Snapshot:
    meta = {"dumps": dumps, "containers": containers}
    return Snapshot(tree=b"", time=datetime.now(UTC), source=Source("volume", "data", meta), id="ab" * 32)


PG: dict[str, object] = {"kind": "postgres", "container": "db", "path": "db/postgres/dumpall.sql", "size": 10}
DB: dict[str, object] = {
    "name": "db",
    "image": "postgres:15",
    "image_id": "sha256:aaa",
    "mount_path": "/pg",
    "env": ["A=1", "B=x=y"],
}


def test_plan_picks_the_recorded_image_by_id_then_by_name() -> None:
    p = plan(FakeDocker({"postgres:15": "sha256:aaa"}), snapshot([PG], [DB]), None)
    assert p.image == "sha256:aaa" and p.container.env_map == {"A": "1", "B": "x=y"} and not p.warnings
    p = plan(FakeDocker({"postgres:15": "sha256:bbb"}), snapshot([PG], [DB]), "db")
    assert p.image == "postgres:15" and "the dump was taken with sha256:aaa" in p.warnings[0]
    with pytest.raises(ImageNotFound, match="needed to load its dump, is not on the target engine") as err:
        plan(FakeDocker({}), snapshot([PG], [DB]), None)
    assert "docker pull postgres:15" in err.value.hint


def test_plan_says_what_is_wrong_with_the_choice() -> None:
    docker = FakeDocker({"postgres:15": "sha256:aaa"})
    with pytest.raises(UsageError, match="holds no application dump"):
        plan(docker, snapshot([], [DB]), None)
    other = {**PG, "container": "db2", "path": "db2/postgres/dumpall.sql"}
    two = snapshot([PG, other], [DB, {**DB, "name": "db2"}])
    with pytest.raises(UsageError, match="dumps of several containers: db, db2"):
        plan(docker, two, None)
    assert plan(docker, two, "db2").container.name == "db2"
    with pytest.raises(UsageError, match="no dump of container 'db3'"):
        plan(docker, two, "db3")
    with pytest.raises(IntegrityError, match="no record of it"):
        plan(docker, snapshot([PG], []), None)


def test_sqlite_plan_needs_no_image() -> None:
    lite: dict[str, object] = {
        "kind": "sqlite",
        "container": "app",
        "path": "app/sqlite/x.db",
        "size": 4096,
        "source_path": "x.db",
    }
    p = plan(FakeDocker({}), snapshot([lite], [{**DB, "name": "app"}]), None)
    assert p.image == "" and p.dumps[0].source_path == "x.db"


def test_sqlite_check(tmp_path: Path) -> None:
    good = tmp_path / "good.db"
    con = sqlite3.connect(good)
    con.execute("CREATE TABLE t(x)")
    con.executemany("INSERT INTO t VALUES (?)", [(str(i) * 50,) for i in range(2000)])
    con.commit()
    con.close()
    assert sqlite_check(str(good)) == "integrity_check ok, 1 tables"
    empty = tmp_path / "empty.db"
    empty.write_bytes(b"")
    with pytest.raises(ConsistencyError, match="empty"):
        sqlite_check(str(empty))
    text = tmp_path / "text.db"
    text.write_text("hello")
    with pytest.raises(ConsistencyError, match="SQLite header"):
        sqlite_check(str(text))
    broken = tmp_path / "broken.db"
    raw = bytearray(good.read_bytes())
    raw[4096 + 100 : 4096 + 3000] = b"\xff" * 2900  # a b-tree page overwritten
    broken.write_bytes(bytes(raw))
    with pytest.raises(ConsistencyError):
        sqlite_check(str(broken))


def test_pg_errors_ignores_only_what_a_fresh_cluster_always_says() -> None:
    stderr = (
        b"psql:/tmp/d.sql:14: ERROR:  current user cannot be dropped\n"
        b'psql:/tmp/d.sql:22: ERROR:  role "postgres" already exists\n'
        b'psql:/tmp/d.sql:23: NOTICE:  database "shop" does not exist, skipping\n'
    )
    assert pg_errors(stderr, "postgres") == []
    other = b'psql:/tmp/d.sql:30: ERROR:  role "app" already exists\npsql:/tmp/d.sql:31: ERROR:  syntax error\n'
    assert pg_errors(other, "postgres") == [
        'psql:/tmp/d.sql:30: ERROR:  role "app" already exists',
        "psql:/tmp/d.sql:31: ERROR:  syntax error",
    ]
