"""Application dumps from real database containers, loaded back to prove they are whole."""

from __future__ import annotations

import sqlite3
import threading
from pathlib import Path

from cargohold.docker.sdk import SdkDocker
from cargohold.model.consistency import DumpKind
from cargohold.services.dumps import dump, dump_sqlite_local, find_sqlite_files
from cargohold.testbed.recipes import MARIADB, POSTGRES, REDIS
from cargohold.testbed.resources import Resources, wait_ready


def sql(port: SdkDocker, ctr: str, *cmd: str) -> str:
    res = port.exec(ctr, list(cmd))
    assert res.exit_code == 0, res.stderr.decode()
    return res.stdout.decode().strip()


def test_postgres_dumpall_loads_into_a_new_server(
    docker_port: SdkDocker, resources: Resources, postgres_image: str, tmp_path: Path
) -> None:
    vol = resources.volume("pgd")
    src = resources.run(postgres_image, prefix="pgsrc", volumes={vol: "/var/lib/postgresql/data"})
    wait_ready(docker_port, src, POSTGRES)
    sql(docker_port, src, "psql", "-U", "postgres", "-c", "CREATE DATABASE shop")
    sql(
        docker_port,
        src,
        "psql",
        "-U",
        "postgres",
        "-d",
        "shop",
        "-c",
        "CREATE TABLE t(id int primary key, v text);"
        " INSERT INTO t SELECT g, md5(g::text) FROM generate_series(1,5000) g",
    )
    info = docker_port.inspect_container(src)
    [out] = dump(docker_port, info, DumpKind.POSTGRES, tmp_path)
    assert out.path == "postgres/dumpall.sql" and out.size == (tmp_path / out.path).stat().st_size > 0

    dst = resources.run(postgres_image, prefix="pgdst", volumes={resources.volume("pgd2"): "/var/lib/postgresql/data"})
    wait_ready(docker_port, dst, POSTGRES)
    docker_port.put_archive(dst, "/tmp", _tar_of(tmp_path / out.path, "dump.sql"))
    sql(docker_port, dst, "psql", "-U", "postgres", "-q", "-v", "ON_ERROR_STOP=0", "-f", "/tmp/dump.sql")
    assert (
        sql(docker_port, dst, "psql", "-U", "postgres", "-d", "shop", "-At", "-c", "SELECT count(*), sum(id) FROM t")
        == "5000|12502500"
    )


def test_mariadb_dump(docker_port: SdkDocker, resources: Resources, mariadb_image: str, tmp_path: Path) -> None:
    ctr = resources.run(mariadb_image, prefix="my", volumes={resources.volume("myd"): "/var/lib/mysql"})
    wait_ready(docker_port, ctr, MARIADB)
    sql(
        docker_port,
        ctr,
        "mariadb",
        "-uroot",
        "-e",
        "CREATE DATABASE shop; CREATE TABLE shop.t(id int primary key); INSERT INTO shop.t VALUES (1),(2),(3)",
    )
    [out] = dump(docker_port, docker_port.inspect_container(ctr), DumpKind.MYSQL, tmp_path)
    text = (tmp_path / out.path).read_text()
    assert "CREATE DATABASE /*!32312 IF NOT EXISTS*/ `shop`" in text and "INSERT INTO `t` VALUES" in text
    # load it back into the same server under a wiped database
    sql(docker_port, ctr, "mariadb", "-uroot", "-e", "DROP DATABASE shop")
    docker_port.put_archive(ctr, "/tmp", _tar_of(tmp_path / out.path, "all.sql"))
    sql(docker_port, ctr, "sh", "-c", "mariadb -uroot < /tmp/all.sql")
    assert sql(docker_port, ctr, "mariadb", "-uroot", "-N", "-e", "SELECT count(*) FROM shop.t") == "3"


def test_redis_bgsave_dump(docker_port: SdkDocker, resources: Resources, redis_image: str, tmp_path: Path) -> None:
    ctr = resources.run(redis_image, prefix="rd", volumes={resources.volume("rdd"): "/data"})
    wait_ready(docker_port, ctr, REDIS)
    sql(docker_port, ctr, "redis-cli", "SET", "answer", "42")
    [out] = dump(docker_port, docker_port.inspect_container(ctr), DumpKind.REDIS, tmp_path)
    data = (tmp_path / out.path).read_bytes()
    assert data.startswith(b"REDIS") and b"answer" in data


def test_sqlite_online_backup_while_writing(tmp_path: Path) -> None:
    root = tmp_path / "vol"
    (root / "app").mkdir(parents=True)
    db = root / "app" / "app.db"
    con = sqlite3.connect(db)
    con.execute("PRAGMA journal_mode=WAL")
    con.execute("CREATE TABLE e(id integer primary key, body text)")
    con.commit()
    (root / "notes.txt").write_text("not a database " * 100)
    stop = threading.Event()

    def writer() -> None:
        w = sqlite3.connect(db, timeout=30)
        while not stop.is_set():
            w.executemany("INSERT INTO e(body) VALUES (?)", [("x" * 200,)] * 50)
            w.commit()
        w.close()

    thread = threading.Thread(target=writer)
    thread.start()
    try:
        assert find_sqlite_files(root) == [db]
        outs = dump_sqlite_local("app", root, tmp_path / "spool")
    finally:
        stop.set()
        thread.join()
    [out] = outs
    assert out.source_path == "app/app.db"
    copy = sqlite3.connect(tmp_path / "spool" / out.path)
    assert copy.execute("PRAGMA integrity_check").fetchone() == ("ok",)
    assert copy.execute("SELECT count(*) FROM e").fetchone()[0] % 50 == 0  # whole transactions only


def _tar_of(path: Path, name: str) -> bytes:
    import io
    import tarfile

    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w") as tar:
        tar.add(path, arcname=name)
    return buf.getvalue()
