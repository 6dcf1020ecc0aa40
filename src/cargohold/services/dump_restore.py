"""Load a snapshot's application dumps back into a server: ``restore --from-dump`` and ``verify``.

A backup in ``dump`` mode stores each dump beside the volume's files (the snapshot's ``dumps``
tree, ``CONTAINER/KIND/FILE``) and records the container that made it: image, image id,
mount path and environment (:mod:`cargohold.services.docker_sources`). Loading one:

1. a fresh *loader* container of the recorded image (by id when the engine has it, else by
   name) is created with the target volume at the recorded mount path, the recorded
   environment and network ``none``; the server initialises the empty volume itself;
2. it is started and waited for until it answers (``pg_isready``, ``mariadb-admin ping``,
   ``redis-cli ping``) *and* its entrypoint has handed over to the server (PID 1 is no longer
   a shell: official images run a temporary server while they initialise);
3. the dump goes in through the Engine archive API (streamed from the repository) and is
   loaded — ``psql -f`` for PostgreSQL, ``mariadb < file`` for MySQL/MariaDB; a Redis RDB is
   placed as the server's ``dbfilename`` in its data directory *before* the server starts;
4. a sanity query checks what was loaded against what the dump says it holds: PostgreSQL's
   databases, tables per database and rows per table (counted from the dump's ``COPY``
   blocks); MariaDB's databases, tables per database and a row count query on every table;
   Redis' ``DBSIZE``;
5. the loader is stopped cleanly (so the server flushes) and removed — always, even on
   failure; the volume keeps the loaded data.

SQLite dumps need no server: the database copies made with the online backup API replace the
files of the same paths on the volume (stale ``-wal``/``-shm``/``-journal`` files of the live
copy are truncated so SQLite never replays them); verify runs ``PRAGMA integrity_check`` on
each copy.
"""

from __future__ import annotations

import os
import re
import sqlite3
import tarfile
import tempfile
import time
import uuid
from abc import ABC, abstractmethod
from collections import Counter
from collections.abc import Iterable, Iterator, Mapping
from concurrent.futures import ThreadPoolExecutor
from contextlib import suppress
from dataclasses import dataclass, field
from pathlib import PurePosixPath
from typing import Any

from cargohold.docker.helper import OWNER_LABEL, helper_container, helper_labels
from cargohold.docker.port import DockerPort
from cargohold.errors import (
    CargoholdError,
    ConsistencyError,
    DockerNotFound,
    ImageNotFound,
    IntegrityError,
    UsageError,
)
from cargohold.model.consistency import DumpKind
from cargohold.model.engine import ExecResult
from cargohold.procinfo import owner_token
from cargohold.repo.repository import Repository
from cargohold.repo.snapshot import Snapshot
from cargohold.repo.tar_writer import Content, file_body
from cargohold.repo.tree import FILE, Node
from cargohold.repo.verifications import DumpCheck
from cargohold.services.dumps import DUMPS_TREE

#: Where a dump file is put inside the loader container.
DUMP_DIR = "/tmp"
#: Seconds a loader's server may take to initialise the volume and answer.
READY_TIMEOUT = 180.0
#: Seconds a loader's server gets to shut down cleanly before it is killed.
STOP_TIMEOUT = 120
#: PID 1 names (/proc/1/comm, 15 characters at most) of entrypoint scripts still initialising.
_SHELLS = frozenset({"sh", "bash", "dash", "ash", "docker-entrypoi", "entrypoint.sh", "cargohold-entry"})
#: Schemas that are not user data.
#: Tables a dump creates with CREATE TABLE: user tables and partitions, not those of extensions.
_PG_TABLES = (
    "SELECT count(*) FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace"
    " WHERE c.relkind IN ('r', 'p') AND c.relpersistence <> 't'"
    " AND n.nspname NOT IN ('pg_catalog', 'information_schema') AND n.nspname NOT LIKE 'pg\\_toast%'"
    " AND NOT EXISTS (SELECT 1 FROM pg_depend d WHERE d.classid = 'pg_class'::regclass"
    " AND d.objid = c.oid AND d.deptype = 'e');"
)
_MY_SYSTEM_DBS = ("mysql", "information_schema", "performance_schema", "sys")
_MAX_DETAIL = 300


# --- what the snapshot recorded ---------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class RecordedDump:
    kind: DumpKind
    container: str
    #: Path in the snapshot's dumps tree: CONTAINER/KIND/FILE.
    path: str
    size: int
    #: SQLite: the database's path relative to the volume root.
    source_path: str = ""


@dataclass(frozen=True, slots=True)
class RecordedContainer:
    name: str
    image: str
    image_id: str
    mount_path: str
    env: tuple[str, ...] = ()

    @property
    def env_map(self) -> dict[str, str]:
        out = {}
        for item in self.env:
            key, _, value = item.partition("=")
            out[key] = value
        return out


@dataclass(frozen=True, slots=True)
class DumpPlan:
    """Everything needed to load the dumps of one container, checked before anything is touched."""

    snapshot: Snapshot
    container: RecordedContainer
    dumps: tuple[RecordedDump, ...]
    #: Image to run the loader from on the target engine ("" for SQLite: no server).
    image: str = ""
    warnings: tuple[str, ...] = ()

    @property
    def kind(self) -> DumpKind:
        return self.dumps[0].kind


@dataclass
class LoadOutcome:
    kind: DumpKind
    container: str
    ok: bool
    detail: str
    seconds: float = 0.0
    warnings: list[str] = field(default_factory=list)

    def to_json(self) -> dict[str, Any]:
        return {
            "kind": self.kind.value,
            "container": self.container,
            "ok": self.ok,
            "detail": self.detail,
            "seconds": round(self.seconds, 3),
        }


def recorded_dumps(snapshot: Snapshot) -> list[RecordedDump]:
    out = []
    for d in snapshot.source.meta.get("dumps") or []:
        out.append(
            RecordedDump(
                DumpKind(str(d["kind"])),
                str(d["container"]),
                str(d["path"]),
                int(d.get("size", 0)),
                str(d.get("source_path") or ""),
            )
        )
    return out


def recorded_container(snapshot: Snapshot, name: str) -> RecordedContainer:
    for c in snapshot.source.meta.get("containers") or []:
        if c.get("name") == name:
            return RecordedContainer(
                name=name,
                image=str(c.get("image") or ""),
                image_id=str(c.get("image_id") or ""),
                mount_path=str(c.get("mount_path") or ""),
                env=tuple(str(e) for e in c.get("env") or ()),
            )
    raise IntegrityError(f"snapshot {snapshot.short_id} has a dump of container {name!r} but no record of it")


def _by_container(snapshot: Snapshot) -> dict[str, list[RecordedDump]]:
    out: dict[str, list[RecordedDump]] = {}
    for d in recorded_dumps(snapshot):
        out.setdefault(d.container, []).append(d)
    return out


def loader_image(docker: DockerPort, rec: RecordedContainer) -> tuple[str, list[str]]:
    """The image to load ``rec``'s dump with on this engine: the recorded one, by id if present."""
    if rec.image_id and docker.image_exists(rec.image_id):
        return rec.image_id, []
    if rec.image and docker.image_exists(rec.image):
        found = docker.inspect_image(rec.image).id
        if rec.image_id and found != rec.image_id:
            return rec.image, [
                f"image {rec.image} is {found[:19]} on this engine, the dump was taken with {rec.image_id[:19]}"
            ]
        return rec.image, []
    raise ImageNotFound(
        f"image {rec.image or rec.image_id} of container {rec.name!r}, needed to load its dump, "
        "is not on the target engine",
        hint=f"pull or build it there (docker pull {rec.image}, or docker save | docker load), then try again",
    )


def plan(docker: DockerPort, snapshot: Snapshot, container: str | None) -> DumpPlan:
    """Choose the dumps to load (of ``container``, or the only container that has any) and check them."""
    groups = _by_container(snapshot)
    if not groups:
        raise UsageError(
            f"snapshot {snapshot.short_id} of {snapshot.source.kind} {snapshot.source.name} holds no application dump",
            hint="restore its files without --from-dump; take dumps with the label cargohold.consistency=dump",
        )
    if container:
        if container not in groups:
            raise UsageError(
                f"snapshot {snapshot.short_id} has no dump of container {container!r}",
                hint="it has dumps of: " + ", ".join(sorted(groups)),
            )
        name = container
    elif len(groups) > 1:
        raise UsageError(
            f"snapshot {snapshot.short_id} has dumps of several containers: {', '.join(sorted(groups))}",
            hint="name one: --from-dump CONTAINER",
        )
    else:
        [name] = groups
    rec = recorded_container(snapshot, name)
    dumps = tuple(groups[name])
    if dumps[0].kind is DumpKind.SQLITE:
        return DumpPlan(snapshot, rec, dumps)
    if not rec.mount_path:
        raise IntegrityError(f"snapshot {snapshot.short_id} does not record where {name!r} mounted the volume")
    image, warnings = loader_image(docker, rec)
    return DumpPlan(snapshot, rec, dumps, image, tuple(warnings))


# --- reading a dump out of the repository -----------------------------------------------------


def dump_node(repo: Repository, snapshot: Snapshot, path: str) -> Node:
    node = repo.node_at(snapshot.extra_trees.get(DUMPS_TREE), path)
    if node is None:
        raise IntegrityError(f"snapshot {snapshot.short_id} lists dump {path} but its dumps tree lacks it")
    if node.type != FILE:
        raise IntegrityError(f"dump {path} of snapshot {snapshot.short_id} is not a file")
    return node


def dump_body(repo: Repository, node: Node) -> Iterator[bytes]:
    with ThreadPoolExecutor(2, thread_name_prefix="ch-dump") as pool:
        yield from file_body(node, Content(repo, pool))


def tar_member(name: str, size: int, *, mode: int = 0o644, uid: int = 0, gid: int = 0) -> tarfile.TarInfo:
    info = tarfile.TarInfo(name)
    info.size, info.mode, info.uid, info.gid = size, mode, uid, gid
    info.mtime = int(time.time())
    return info


def files_tar(entries: Iterable[tuple[tarfile.TarInfo, Iterable[bytes]]]) -> Iterator[bytes]:
    """A tar stream of regular files, generated on the fly (for ``put_archive``)."""
    for info, body in entries:
        yield info.tobuf(tarfile.PAX_FORMAT)
        written = 0
        for piece in body:
            written += len(piece)
            yield piece
        if written != info.size:
            raise IntegrityError(f"{info.name}: {written} bytes read from the repository, {info.size} expected")
        yield bytes(-info.size % tarfile.BLOCKSIZE)
    yield bytes(2 * tarfile.BLOCKSIZE)


def file_tar(name: str, size: int, body: Iterable[bytes]) -> Iterator[bytes]:
    return files_tar([(tar_member(name, size), body)])


class _Scan(ABC):
    """Watches a dump stream go by and remembers what it says it holds."""

    #: The comment line a complete dump ends with (only comments may follow it).
    END_MARKER = b""

    def __init__(self) -> None:
        self._carry = b""
        self.last_line = b""
        self.complete = False

    def feed(self, chunks: Iterable[bytes]) -> Iterator[bytes]:
        for chunk in chunks:
            lines = (self._carry + chunk).split(b"\n")
            self._carry = lines.pop()
            for line in lines:
                self._take(line)
            yield chunk
        if self._carry:
            self._take(self._carry)
            self._carry = b""

    def _take(self, line: bytes) -> None:
        self.line(line)
        if line.strip():
            self.last_line = line
            if line.startswith(self.END_MARKER):
                self.complete = True
            elif not line.startswith(b"--"):
                self.complete = False

    @abstractmethod
    def line(self, line: bytes) -> None:
        """Take in one line of the dump (without its newline)."""


_PG_TABLE = re.compile(rb"^CREATE (?:UNLOGGED )?TABLE ")
_PG_COPY = re.compile(rb"^COPY (.+?)(?: \(.*\))? FROM stdin;$")


def _pg_ident(text: str) -> str:
    text = text.strip()
    if text.startswith('"') and text.endswith('"'):
        return text[1:-1].replace('""', '"')
    return text


def pg_connect_target(line: bytes) -> str:
    """The database of a psql ``\\connect`` line as pg_dump writes it."""
    rest = line.decode("utf-8", "replace")[len("\\connect ") :].strip()
    m = re.search(r"dbname='((?:[^'\\]|''|\\.)*)'", rest)
    if m:
        return re.sub(r"\\(.)", r"\1", m.group(1).replace("''", "'"))
    return _pg_ident(rest)


class PgScan(_Scan):
    """Databases, tables and rows of a ``pg_dumpall`` script."""

    END_MARKER = b"-- PostgreSQL database cluster dump complete"

    def __init__(self) -> None:
        super().__init__()
        self.database = ""
        self.databases: set[str] = set()
        self.tables: Counter[str] = Counter()
        #: (database, table as written in COPY) -> rows
        self.rows: dict[tuple[str, str], int] = {}
        self._copy: tuple[str, str] | None = None
        self.header = False

    def line(self, line: bytes) -> None:
        if self._copy is not None:
            if line == b"\\.":
                self._copy = None
            else:
                self.rows[self._copy] += 1
            return
        if line.startswith(b"\\connect "):
            self.database = pg_connect_target(line)
            self.databases.add(self.database)
        elif line.startswith(b"-- PostgreSQL database cluster dump"):
            self.header = True
        elif _PG_TABLE.match(line):
            self.tables[self.database] += 1
        elif m := _PG_COPY.match(line):
            self._copy = (self.database, m.group(1).decode("utf-8", "surrogateescape"))
            self.rows.setdefault(self._copy, 0)


_MY_DB = re.compile(rb"^CREATE DATABASE (?:/\*!32312 IF NOT EXISTS\*/ )?`((?:[^`]|``)+)`")
_MY_USE = re.compile(rb"^USE `((?:[^`]|``)+)`;")
_MY_TABLE = re.compile(rb"^CREATE TABLE `")


class MyScan(_Scan):
    """Databases and tables of a ``mysqldump --all-databases`` script."""

    END_MARKER = b"-- Dump completed"

    def __init__(self) -> None:
        super().__init__()
        self.database = ""
        self.databases: set[str] = set()
        self.tables: Counter[str] = Counter()

    def line(self, line: bytes) -> None:
        if m := _MY_DB.match(line):
            self.databases.add(m.group(1).replace(b"``", b"`").decode("utf-8", "replace"))
        elif m := _MY_USE.match(line):
            self.database = m.group(1).replace(b"``", b"`").decode("utf-8", "replace")
        elif _MY_TABLE.match(line):
            self.tables[self.database] += 1


# --- the loader container ---------------------------------------------------------------------


def _tail(text: str | bytes, limit: int = _MAX_DETAIL) -> str:
    if isinstance(text, bytes):
        text = text.decode("utf-8", "replace")
    one = " | ".join(line.strip() for line in text.strip().splitlines()[-6:] if line.strip())
    return one if len(one) <= limit else "…" + one[-limit:]


class Loader:
    """A fresh container of the recorded image on the target volume; removed on exit."""

    def __init__(self, docker: DockerPort, dump_plan: DumpPlan, volume: str, *, purpose: str) -> None:
        self.docker = docker
        self.plan = dump_plan
        self.rec = dump_plan.container
        self.env = self.rec.env_map
        self.volume = volume
        self.purpose = purpose
        self.cid = ""
        self.warnings: list[str] = list(dump_plan.warnings)

    def __enter__(self) -> Loader:
        self.cid = self.docker.create_container(
            self.plan.image,
            name=f"cargohold-loader-{uuid.uuid4().hex[:12]}",
            mounts=[{"Type": "volume", "Source": self.volume, "Target": self.rec.mount_path, "ReadOnly": False}],
            labels=helper_labels(self.purpose),
            environment=self.env,
            network_mode="none",
        )
        return self

    def __exit__(self, *exc: object) -> None:
        with suppress(DockerNotFound):
            self.docker.remove_container(self.cid, force=True)

    def fail(self, what: str, detail: str | bytes) -> ConsistencyError:
        return ConsistencyError(
            f"{self.plan.kind.value} dump of {self.rec.name!r}: {what}: {_tail(detail)}",
            hint="the dump may be damaged or not fit this image; `cargohold verify` checks it",
        )

    def run(self, command: list[str], env: Mapping[str, str] | None = None) -> ExecResult:
        return self.docker.exec(self.cid, command, environment=env)

    def start_and_wait(self, ready: list[str], *, expect: bytes | None = None) -> None:
        self.docker.start(self.cid)
        deadline = time.monotonic() + READY_TIMEOUT
        last = ""
        while time.monotonic() < deadline:
            state = self.docker.inspect_container(self.cid).state
            if state != "running":
                raise self.fail(
                    f"the server in {self.plan.image} stopped ({state})", self.docker.logs(self.cid, tail=8)
                )
            res = self.run(ready)
            answered = res.exit_code == 0 and (expect is None or res.stdout.strip() == expect)
            if answered and self._pid1() not in _SHELLS:
                return
            last = (res.stderr or res.stdout).decode("utf-8", "replace")
            time.sleep(0.25)
        raise self.fail(f"the server did not answer within {READY_TIMEOUT:.0f} s ({_tail(last, 80)})", self.logs())

    def _pid1(self) -> str:
        res = self.run(["cat", "/proc/1/comm"])
        return res.stdout.decode("utf-8", "replace").strip() if res.exit_code == 0 else ""

    def logs(self) -> str:
        return self.docker.logs(self.cid, tail=8)

    def put_dump(self, repo: Repository, dump: RecordedDump, directory: str, name: str, scan: _Scan | None) -> None:
        node = dump_node(repo, self.plan.snapshot, dump.path)
        body: Iterable[bytes] = dump_body(repo, node)
        if scan is not None:
            body = scan.feed(body)
        self.docker.put_archive(self.cid, directory, file_tar(name, node.size, body))

    def put_text(self, text: str) -> str:
        """Put a script into the container; return its path."""
        data = text.encode()
        path = f"{DUMP_DIR}/cargohold-{uuid.uuid4().hex[:8]}.sql"
        self.docker.put_archive(self.cid, DUMP_DIR, file_tar(path.rsplit("/", 1)[1], len(data), [data]))
        return path

    def stop(self) -> None:
        """Stop the server the way the image says (its stop signal), and make sure it shut down cleanly."""
        self.docker.stop(self.cid, timeout=STOP_TIMEOUT)
        code = self.docker.wait(self.cid, timeout=30)
        if code != 0:
            raise self.fail(
                f"the server did not shut down cleanly (exit {code}), the data may be incomplete", self.logs()
            )


def _sql_lines(res: ExecResult) -> list[list[str]]:
    return [line.split("\t") for line in res.stdout.decode("utf-8", "replace").splitlines() if line]


# --- PostgreSQL ---------------------------------------------------------------------------------


def pg_errors(stderr: bytes, user: str) -> list[str]:
    """psql's errors, less the two that loading ``pg_dumpall --clean`` into a fresh cluster always
    reports about the cluster's own superuser (it cannot drop itself, and exists already)."""
    benign = ("current user cannot be dropped", f'role "{user}" already exists')
    out = []
    for line in stderr.decode("utf-8", "replace").splitlines():
        if "ERROR:" in line and not any(b in line for b in benign):
            out.append(line.strip())
    return out


def _load_postgres(repo: Repository, loader: Loader, dump: RecordedDump) -> str:
    user = loader.env.get("POSTGRES_USER") or "postgres"
    env = {"PGPASSWORD": loader.env["POSTGRES_PASSWORD"]} if loader.env.get("POSTGRES_PASSWORD") else {}
    scan = PgScan()
    name = f"cargohold-{uuid.uuid4().hex[:8]}.sql"
    # in before the server starts: a damaged dump fails before any server time is spent
    loader.put_dump(repo, dump, DUMP_DIR, name, scan)
    if not scan.header:
        raise loader.fail("not a pg_dumpall script", scan.last_line or "empty")
    if not scan.complete:
        raise loader.fail("the dump is truncated (no 'cluster dump complete' line)", scan.last_line)
    loader.start_and_wait(["pg_isready", "-q", "-U", user])
    psql = ["psql", "-X", "-q", "-U", user, "-d", "postgres", "-v", "ON_ERROR_STOP=0"]
    res = loader.run([*psql, "-f", f"{DUMP_DIR}/{name}"], env)
    errors = pg_errors(res.stderr, user)
    if res.exit_code != 0 or errors:
        raise loader.fail(f"psql reported {len(errors)} error(s)", "\n".join(errors[:3]) or res.stderr)
    loader.run(["rm", "-f", f"{DUMP_DIR}/{name}"])
    # sanity: every database answers, with the tables and rows the dump holds
    q = ["psql", "-X", "-At", "-U", user, "-v", "ON_ERROR_STOP=1"]
    listing = loader.run([*q, "-d", "postgres", "-c", "SELECT datname FROM pg_database WHERE datallowconn"], env)
    if listing.exit_code != 0:
        raise loader.fail("listing databases failed", listing.stderr)
    present = {row[0] for row in _sql_lines(listing)}
    missing = sorted(scan.databases - present)
    if missing:
        raise loader.fail("databases missing after the load", ", ".join(missing))
    tables = rows = 0
    for db in sorted(present):
        sql = ["SELECT 1;", _PG_TABLES]
        copies = sorted(t for d, t in scan.rows if d == db)
        sql += [f"SELECT count(*) FROM {t};" for t in copies]
        script = loader.put_text("\n".join(sql) + "\n")  # a file: one argument may hold only 128 KiB
        res = loader.run([*q, "-d", db, "-f", script], env)
        if res.exit_code != 0:
            raise loader.fail(f"sanity query in database {db!r} failed", res.stderr)
        answers = [line[0] for line in _sql_lines(res)]
        if len(answers) != 2 + len(copies) or answers[0] != "1":
            raise loader.fail(f"sanity query in database {db!r} answered oddly", res.stdout)
        if db in scan.databases and int(answers[1]) != scan.tables[db]:
            raise loader.fail(
                f"database {db!r} has {answers[1]} tables, the dump creates {scan.tables[db]}", res.stdout
            )
        for table, got in zip(copies, answers[2:], strict=True):
            if int(got) != scan.rows[(db, table)]:
                raise loader.fail(f"{db}: {table} has {got} rows, the dump holds {scan.rows[(db, table)]}", "")
            rows += int(got)
        tables += int(answers[1])
    return f"{len(present)} databases, {tables} tables, {rows} rows match the dump"


# --- MySQL / MariaDB -------------------------------------------------------------------------------

_MY_CLIENT = 'exec "$(command -v mariadb || command -v mysql)" -uroot'


def _my_env(env: Mapping[str, str]) -> dict[str, str]:
    password = env.get("MARIADB_ROOT_PASSWORD") or env.get("MYSQL_ROOT_PASSWORD") or env.get("MYSQL_PWD") or ""
    return {"MYSQL_PWD": password} if password else {}


def _my_quote(name: str) -> str:
    return "`" + name.replace("`", "``") + "`"


def _load_mysql(repo: Repository, loader: Loader, dump: RecordedDump) -> str:
    env = _my_env(loader.env)
    ping = 'exec "$(command -v mariadb-admin || command -v mysqladmin)" -uroot --connect-timeout=2 ping'
    scan = MyScan()
    name = f"cargohold-{uuid.uuid4().hex[:8]}.sql"
    loader.put_dump(repo, dump, DUMP_DIR, name, scan)
    if not scan.complete:
        raise loader.fail(
            "the dump is truncated or not a mysqldump script (no 'Dump completed' line)", scan.last_line or "empty"
        )
    loader.start_and_wait(["sh", "-c", ping])
    res = loader.run(["sh", "-c", f"{_MY_CLIENT} < {DUMP_DIR}/{name}"], env)
    if res.exit_code != 0:
        raise loader.fail("loading failed", res.stderr)
    loader.run(["rm", "-f", f"{DUMP_DIR}/{name}"])
    system = ", ".join(f"'{s}'" for s in _MY_SYSTEM_DBS)
    res = loader.run(
        [
            "sh",
            "-c",
            f'{_MY_CLIENT} -N -B -e "SHOW DATABASES; SELECT table_schema, table_name FROM information_schema.tables'
            f" WHERE table_type IN ('BASE TABLE', 'SYSTEM VERSIONED') AND table_schema NOT IN ({system})\"",
        ],
        env,
    )
    if res.exit_code != 0:
        raise loader.fail("SHOW DATABASES failed", res.stderr)
    lines = _sql_lines(res)
    present = {r[0] for r in lines if len(r) == 1}
    found = [(r[0], r[1]) for r in lines if len(r) == 2]
    missing = sorted(scan.databases - present)
    if missing:
        raise loader.fail("databases missing after the load", ", ".join(missing))
    per_db = Counter(db for db, _ in found)
    for db in sorted(scan.databases - set(_MY_SYSTEM_DBS)):
        if per_db[db] != scan.tables[db]:
            raise loader.fail(f"database {db!r} has {per_db[db]} tables, the dump creates {scan.tables[db]}", "")
    rows = 0
    if found:
        query = " UNION ALL ".join(f"SELECT COUNT(*) AS n FROM {_my_quote(db)}.{_my_quote(t)}" for db, t in found)
        script = loader.put_text(f"SELECT SUM(n) FROM ({query}) AS c;\n")
        res = loader.run(["sh", "-c", f"{_MY_CLIENT} -N -B < {script}"], env)
        if res.exit_code != 0:
            raise loader.fail("a row count query failed", res.stderr)
        rows = int(res.stdout.strip() or 0)
    user_dbs = len(present - set(_MY_SYSTEM_DBS))
    return f"{user_dbs} databases, {len(found)} tables, {rows} rows readable"


# --- Redis -------------------------------------------------------------------------------------------


def _redis_cli(env: Mapping[str, str], *args: str) -> list[str]:
    auth = ["-a", env["REDIS_PASSWORD"], "--no-auth-warning"] if env.get("REDIS_PASSWORD") else []
    port = ["-p", env["REDIS_PORT"]] if env.get("REDIS_PORT") else []
    return ["redis-cli", *port, *auth, "--raw", *args]


def _redis_get(loader: Loader, key: str) -> str:
    res = loader.run(_redis_cli(loader.env, "CONFIG", "GET", key))
    lines = res.stdout.decode("utf-8", "replace").splitlines()
    if res.exit_code != 0 or len(lines) < 2:
        raise loader.fail(f"CONFIG GET {key} failed", res.stderr or res.stdout)
    return lines[1].strip()


def _load_redis(repo: Repository, loader: Loader, dump: RecordedDump) -> str:
    node = dump_node(repo, loader.plan.snapshot, dump.path)
    if node.size == 0:
        raise loader.fail("the dump is empty", "0 bytes")
    mount = loader.rec.mount_path
    # The RDB must be in place before the server starts: it reads it only then.
    loader.put_dump(repo, dump, mount, "dump.rdb", None)
    ping = _redis_cli(loader.env, "ping")
    loader.start_and_wait(ping, expect=b"PONG")
    where = PurePosixPath(_redis_get(loader, "dir")) / _redis_get(loader, "dbfilename")
    if where != PurePosixPath(mount) / "dump.rdb":
        if not where.is_relative_to(mount):
            raise loader.fail(f"the server keeps its data in {where}, not on the volume at {mount}", "")
        # a configured data dir or file name: put it there and start again
        loader.stop()
        loader.put_dump(repo, dump, str(where.parent), where.name, None)
        loader.start_and_wait(ping, expect=b"PONG")
    if _redis_get(loader, "appendonly") == "yes":
        loader.warnings.append(
            "the server runs with appendonly yes: it read the append-only file, not the RDB, if one existed"
        )
    res = loader.run(_redis_cli(loader.env, "DBSIZE"))
    if res.exit_code != 0 or not res.stdout.strip().isdigit():
        raise loader.fail("DBSIZE failed", res.stderr or res.stdout)
    keys = int(res.stdout.strip())
    info = loader.run(_redis_cli(loader.env, "INFO", "persistence")).stdout.decode("utf-8", "replace")
    fields = dict(line.split(":", 1) for line in info.splitlines() if ":" in line)
    loaded = fields.get("rdb_last_load_keys_loaded", "").strip()
    if loaded.isdigit() and int(loaded) + int(fields.get("rdb_last_load_keys_expired", "0").strip() or 0) < keys:
        raise loader.fail(f"DBSIZE is {keys} but the RDB load reported {loaded} keys", info)
    return f"{keys} keys (DBSIZE)"


# --- SQLite ------------------------------------------------------------------------------------------

SQLITE_HEADER = b"SQLite format 3\x00"
#: Files of a live SQLite database that must not be replayed over its consistent copy.
SQLITE_COMPANIONS = ("-wal", "-shm", "-journal")


def _fetch(repo: Repository, snapshot: Snapshot, dump: RecordedDump, dest: str) -> None:
    node = dump_node(repo, snapshot, dump.path)
    with open(dest, "wb") as f:
        for piece in dump_body(repo, node):
            f.write(piece)


def sqlite_check(path: str) -> str:
    """``PRAGMA integrity_check`` of a database file; its one-line result, or raise."""
    with open(path, "rb") as f:
        head = f.read(len(SQLITE_HEADER))
    if not head:
        raise ConsistencyError("the SQLite copy is empty")
    if head != SQLITE_HEADER:
        raise ConsistencyError("the SQLite copy does not start with the SQLite header")
    try:
        con = sqlite3.connect(f"file:{path}?mode=ro", uri=True)
        try:
            result = [str(r[0]) for r in con.execute("PRAGMA integrity_check")]
            tables = con.execute("SELECT count(*) FROM sqlite_master WHERE type = 'table'").fetchone()[0]
        finally:
            con.close()
    except sqlite3.Error as err:
        raise ConsistencyError(f"SQLite cannot read the copy: {err}") from err
    if result != ["ok"]:
        raise ConsistencyError(f"PRAGMA integrity_check: {_tail(chr(10).join(result[:5]))}")
    return f"integrity_check ok, {tables} tables"


def replace_sqlite(repo: Repository, docker: DockerPort, dump_plan: DumpPlan, volume: str) -> LoadOutcome:
    """Put the consistent SQLite copies over the restored files of the same paths (after the file restore)."""
    started = time.monotonic()
    snapshot = dump_plan.snapshot
    details = []
    with tempfile.TemporaryDirectory(prefix="cargohold-sqlite-") as tmp:
        entries: list[tuple[tarfile.TarInfo, Iterable[bytes]]] = []
        for i, dump in enumerate(dump_plan.dumps):
            local = os.path.join(tmp, str(i))
            _fetch(repo, snapshot, dump, local)
            try:
                details.append(f"{dump.source_path}: {sqlite_check(local)}")
            except ConsistencyError as err:
                raise ConsistencyError(f"SQLite copy of {dump.source_path}: {err.message}") from err
            original = repo.node_at(snapshot.tree, dump.source_path)
            mode, uid, gid = (original.mode, original.uid, original.gid) if original else (0o644, 0, 0)
            size = os.path.getsize(local)
            entries.append((tar_member(f"volume/{dump.source_path}", size, mode=mode, uid=uid, gid=gid), _read(local)))
            for suffix in SQLITE_COMPANIONS:
                companion = repo.node_at(snapshot.tree, dump.source_path + suffix)
                if companion is not None and companion.type == FILE:
                    member = tar_member(
                        f"volume/{dump.source_path}{suffix}",
                        0,
                        mode=companion.mode,
                        uid=companion.uid,
                        gid=companion.gid,
                    )
                    entries.append((member, ()))
        mount = {"Type": "volume", "Source": volume, "Target": "/volume", "ReadOnly": False}
        with helper_container(docker, [mount], purpose=f"sqlite copies into {volume}") as cid:
            docker.put_archive(cid, "/", files_tar(entries))
    return LoadOutcome(DumpKind.SQLITE, dump_plan.container.name, True, "; ".join(details), time.monotonic() - started)


def _read(path: str) -> Iterator[bytes]:
    with open(path, "rb") as f:
        while piece := f.read(1 << 20):
            yield piece


# --- the use cases -----------------------------------------------------------------------------------

_LOADERS = {DumpKind.POSTGRES: _load_postgres, DumpKind.MYSQL: _load_mysql, DumpKind.REDIS: _load_redis}


def load_server_dump(
    repo: Repository, docker: DockerPort, dump_plan: DumpPlan, volume: str, *, keep: bool = True
) -> LoadOutcome:
    """Load the plan's dump into ``volume`` through a loader container, and remove the loader.

    ``keep``: stop the server cleanly so the volume holds the loaded data (a restore); without
    it the loader is just removed (a scratch check). The repository's index must be loaded.
    """
    started = time.monotonic()
    [dump] = dump_plan.dumps
    with Loader(docker, dump_plan, volume, purpose=f"load a dump into {volume}") as loader:
        detail = _LOADERS[dump.kind](repo, loader, dump)
        if keep:
            loader.stop()
    return LoadOutcome(dump.kind, dump.container, True, detail, time.monotonic() - started, loader.warnings)


def check_dumps(
    repo: Repository, docker: DockerPort, snapshot: Snapshot, *, labels: Mapping[str, str] | None = None
) -> list[DumpCheck]:
    """Load every dump of ``snapshot`` into scratch space and run its sanity query; remove the scratch.

    Servers' dumps go into a scratch volume (labelled ``labels``) through a loader container of the
    recorded image; SQLite copies are checked with ``PRAGMA integrity_check``. The repository's
    index must be loaded.
    """
    out: list[DumpCheck] = []
    for name, dumps in sorted(_by_container(snapshot).items()):
        kind = dumps[0].kind
        if kind is DumpKind.SQLITE:
            with tempfile.TemporaryDirectory(prefix="cargohold-sqlite-") as tmp:
                for i, dump in enumerate(dumps):
                    local = os.path.join(tmp, str(i))
                    try:
                        _fetch(repo, snapshot, dump, local)
                        out.append(DumpCheck(kind.value, name, True, f"{dump.source_path}: {sqlite_check(local)}"))
                    except CargoholdError as err:
                        out.append(DumpCheck(kind.value, name, False, f"{dump.source_path}: {err}"))
            continue
        scratch = f"cargohold-verify-dump-{snapshot.id[:8]}-{uuid.uuid4().hex[:6]}"
        try:
            dump_plan = plan(docker, snapshot, name)
            docker.create_volume(scratch, labels={**(labels or {}), OWNER_LABEL: owner_token()})
            outcome = load_server_dump(repo, docker, dump_plan, scratch, keep=False)
            detail = "; ".join([outcome.detail, *outcome.warnings])
            out.append(DumpCheck(kind.value, name, True, detail))
        except CargoholdError as err:
            out.append(DumpCheck(kind.value, name, False, str(err)))
        finally:
            with suppress(DockerNotFound):
                docker.remove_volume(scratch, force=True)
    return out
