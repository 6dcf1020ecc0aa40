"""Application dumps taken through the running container: consistent without stopping it.

* PostgreSQL: ``pg_dumpall`` (roles, every database), streamed out of ``docker exec``;
* MySQL / MariaDB: ``mariadb-dump``/``mysqldump --single-transaction --all-databases`` with
  routines, events and triggers;
* Redis: ``BGSAVE``, wait until it has finished and succeeded, then copy the RDB file out
  through the archive API;
* SQLite: every file on the volume that starts with the SQLite header is copied with the
  online backup API (the host's ``sqlite3`` module on the volume's mountpoint when it is
  readable, otherwise ``sqlite3 .backup`` inside the container).

Each dump is written to a spool directory as ``<kind>/<file>`` with a small JSON manifest
(:class:`DumpFile`) so restore and verify know how to load it.
"""

from __future__ import annotations

import io
import os
import shlex
import sqlite3
import tarfile
import time
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path, PurePosixPath

from cargohold.docker.port import DockerPort
from cargohold.errors import ConsistencyError, DockerError
from cargohold.model.consistency import DumpKind
from cargohold.model.engine import ContainerInfo

#: Role of the tree of application dumps in :attr:`Snapshot.extra_trees` (written by
#: docker_backup, read by dump_restore).
DUMPS_TREE = "dumps"
SQLITE_HEADER = b"SQLite format 3\x00"
REDIS_BGSAVE_TIMEOUT = 600.0


@dataclass(frozen=True, slots=True)
class DumpFile:
    kind: DumpKind
    container: str
    #: Path relative to the spool directory, e.g. "postgres/dumpall.sql".
    path: str
    size: int
    #: For SQLite: the database's path relative to the volume root.
    source_path: str = ""
    #: Seconds the dump took.
    seconds: float = 0.0

    def to_json(self) -> dict[str, object]:
        return {
            "kind": self.kind.value,
            "container": self.container,
            "path": self.path,
            "size": self.size,
            "source_path": self.source_path,
            "seconds": round(self.seconds, 3),
        }


def _env(container_env: Iterable[str]) -> dict[str, str]:
    out = {}
    for item in container_env:
        key, _, value = item.partition("=")
        out[key] = value
    return out


def _write_stream(chunks: Iterable[bytes], dest: Path) -> int:
    dest.parent.mkdir(parents=True, exist_ok=True)
    size = 0
    with open(dest, "wb") as f:
        for chunk in chunks:
            f.write(chunk)
            size += len(chunk)
        f.flush()
        os.fsync(f.fileno())
    return size


def _extract_single(tar_bytes: bytes, dest: Path, what: str) -> int:
    """Write the one file of a tar (as the archive API returns a single path) to ``dest``."""
    with tarfile.open(fileobj=io.BytesIO(tar_bytes)) as tar:
        member = tar.next()
        data = tar.extractfile(member) if member is not None else None
        if data is None:
            raise ConsistencyError(f"{what} is not a regular file")
        return _write_stream(iter(lambda: data.read(1 << 20), b""), dest)


def _fail(container: ContainerInfo, kind: str, err: Exception) -> ConsistencyError:
    return ConsistencyError(
        f"{kind} dump of container {container.name!r} failed: {err}",
        hint="check that the server runs and the dump tool is in the image, or choose stop",
    )


def dump_postgres(docker: DockerPort, container: ContainerInfo, spool: Path, env: dict[str, str]) -> DumpFile:
    user = env.get("POSTGRES_USER") or "postgres"
    start = time.monotonic()
    rel = "postgres/dumpall.sql"
    try:
        size = _write_stream(
            docker.exec_stream(container.id, ["pg_dumpall", "-U", user, "--clean", "--if-exists"]),
            spool / rel,
        )
    except DockerError as err:
        raise _fail(container, "PostgreSQL", err) from err
    return DumpFile(DumpKind.POSTGRES, container.name, rel, size, seconds=time.monotonic() - start)


def dump_mysql(docker: DockerPort, container: ContainerInfo, spool: Path, env: dict[str, str]) -> DumpFile:
    password = env.get("MARIADB_ROOT_PASSWORD") or env.get("MYSQL_ROOT_PASSWORD") or env.get("MYSQL_PWD") or ""
    script = (
        'tool=$(command -v mariadb-dump || command -v mysqldump) || { echo "no mysqldump" >&2; exit 127; }; '
        'exec "$tool" -uroot --single-transaction --all-databases --routines --events --triggers '
        "--hex-blob --default-character-set=utf8mb4"
    )
    start = time.monotonic()
    rel = "mysql/all-databases.sql"
    try:
        size = _write_stream(
            docker.exec_stream(
                container.id, ["sh", "-c", script], environment={"MYSQL_PWD": password} if password else None
            ),
            spool / rel,
        )
    except DockerError as err:
        raise _fail(container, "MySQL", err) from err
    return DumpFile(DumpKind.MYSQL, container.name, rel, size, seconds=time.monotonic() - start)


def _redis_cli(docker: DockerPort, container: ContainerInfo, env: dict[str, str], *args: str) -> str:
    auth = ["-a", env["REDIS_PASSWORD"], "--no-auth-warning"] if env.get("REDIS_PASSWORD") else []
    port = ["-p", env["REDIS_PORT"]] if env.get("REDIS_PORT") else []
    result = docker.exec(container.id, ["redis-cli", *port, *auth, "--raw", *args])
    if result.exit_code != 0:
        raise ConsistencyError(
            f"redis-cli {' '.join(args)} in {container.name!r} failed: {result.stderr.decode(errors='replace').strip()}"
        )
    return result.stdout.decode(errors="replace")


def dump_redis(docker: DockerPort, container: ContainerInfo, spool: Path, env: dict[str, str]) -> DumpFile:
    start = time.monotonic()
    try:
        before = int(_redis_cli(docker, container, env, "LASTSAVE").strip() or 0)
        _redis_cli(docker, container, env, "BGSAVE")
        deadline = time.monotonic() + REDIS_BGSAVE_TIMEOUT
        while True:
            info = _redis_cli(docker, container, env, "INFO", "persistence")
            fields = dict(line.split(":", 1) for line in info.splitlines() if ":" in line)
            done = fields.get("rdb_bgsave_in_progress", "1").strip() == "0"
            last = int(fields.get("rdb_last_save_time", "0").strip() or 0)
            if done and last >= before and fields.get("rdb_last_bgsave_status", "").strip() == "ok":
                # LASTSAVE has one-second resolution: a save in the same second counts.
                break
            if done and fields.get("rdb_last_bgsave_status", "").strip() == "err":
                raise ConsistencyError(f"Redis BGSAVE in {container.name!r} failed (see its log)")
            if time.monotonic() > deadline:
                raise ConsistencyError(f"Redis BGSAVE in {container.name!r} did not finish in time")
            time.sleep(0.1)
        directory = _redis_cli(docker, container, env, "CONFIG", "GET", "dir").splitlines()[1].strip()
        filename = _redis_cli(docker, container, env, "CONFIG", "GET", "dbfilename").splitlines()[1].strip()
        rdb = str(PurePosixPath(directory) / filename)
        tar_bytes = b"".join(docker.get_archive(container.id, rdb))
    except (DockerError, IndexError, ValueError) as err:
        raise _fail(container, "Redis", err) from err
    rel = "redis/dump.rdb"
    size = _extract_single(tar_bytes, spool / rel, f"Redis dump of {container.name!r}: {rdb}")
    return DumpFile(DumpKind.REDIS, container.name, rel, size, seconds=time.monotonic() - start)


def find_sqlite_files(root: Path) -> list[Path]:
    """Files under ``root`` that begin with the SQLite header (journals and WAL files do not)."""
    found = []
    for dirpath, _dirs, files in os.walk(root):
        for name in files:
            path = Path(dirpath, name)
            try:
                if path.is_symlink() or path.stat().st_size < 512:
                    continue
                with open(path, "rb") as f:
                    if f.read(16) == SQLITE_HEADER:
                        found.append(path)
            except OSError:
                continue
    return sorted(found)


def dump_sqlite_local(container: str, volume_root: Path, spool: Path) -> list[DumpFile]:
    """Online-backup every SQLite database under a readable volume root."""
    out = []
    for db in find_sqlite_files(volume_root):
        rel_src = db.relative_to(volume_root).as_posix()
        rel = f"sqlite/{rel_src}"
        dest = spool / rel
        dest.parent.mkdir(parents=True, exist_ok=True)
        start = time.monotonic()
        try:
            src = sqlite3.connect(f"file:{db}?mode=ro", uri=True, timeout=30)
            try:
                dst = sqlite3.connect(dest)
                try:
                    src.backup(dst, pages=1024)
                finally:
                    dst.close()
            finally:
                src.close()
        except sqlite3.Error as err:
            raise ConsistencyError(f"SQLite online backup of {rel_src} failed: {err}") from err
        out.append(
            DumpFile(
                DumpKind.SQLITE,
                container,
                rel,
                dest.stat().st_size,
                source_path=rel_src,
                seconds=time.monotonic() - start,
            )
        )
    return out


def dump_sqlite_exec(docker: DockerPort, container: ContainerInfo, mount_path: str, spool: Path) -> list[DumpFile]:
    """Online-backup SQLite databases with the ``sqlite3`` tool inside the container."""
    root = shlex.quote(mount_path)
    find = (
        f"cd {root} && find . -type f -size +0 | while read -r f; do "
        f'h=$(head -c 15 "$f" 2>/dev/null); if [ "$h" = "SQLite format 3" ]; then echo "$f"; fi; done'
    )
    listing = docker.exec(container.id, ["sh", "-c", find])
    if listing.exit_code != 0:  # no databases found must mean none, not that looking failed
        raise ConsistencyError(
            f"cannot list the files of {mount_path} in {container.name!r}: "
            f"{listing.stderr.decode(errors='replace').strip() or f'exit code {listing.exit_code}'}",
            hint="the image needs sh, find and head; or back this volume up with --via direct",
        )
    out = []
    for line in listing.stdout.decode(errors="replace").splitlines():
        rel_src = line.strip().removeprefix("./")
        if not rel_src:
            continue
        tmp = f"/tmp/cargohold-sqlite-{os.getpid()}.db"
        src = shlex.quote(str(PurePosixPath(mount_path) / rel_src))
        start = time.monotonic()
        res = docker.exec(container.id, ["sh", "-c", f"sqlite3 {src} \".backup '{tmp}'\""])
        if res.exit_code != 0:
            raise ConsistencyError(
                f"SQLite online backup of {rel_src} in {container.name!r} failed: "
                f"{res.stderr.decode(errors='replace').strip()}",
                hint="install sqlite3 in the image, or back this volume up with --via direct or stop",
            )
        try:
            tar_bytes = b"".join(docker.get_archive(container.id, tmp))
        finally:
            docker.exec(container.id, ["rm", "-f", tmp])
        rel = f"sqlite/{rel_src}"
        size = _extract_single(tar_bytes, spool / rel, f"SQLite backup of {rel_src}")
        out.append(
            DumpFile(
                DumpKind.SQLITE,
                container.name,
                rel,
                size,
                source_path=rel_src,
                seconds=time.monotonic() - start,
            )
        )
    return out


def dump(
    docker: DockerPort,
    container: ContainerInfo,
    kind: DumpKind,
    spool: Path,
    *,
    volume_root: Path | None = None,
    mount_path: str = "",
) -> list[DumpFile]:
    """Take the ``kind`` dump of a running container into ``spool``."""
    if container.state != "running":
        raise ConsistencyError(
            f"cannot dump container {container.name!r}: it is {container.state}",
            hint="start it, or use cargohold.consistency=stop for a stopped container's files",
        )
    env = _env(container.env)
    if kind is DumpKind.POSTGRES:
        return [dump_postgres(docker, container, spool, env)]
    if kind is DumpKind.MYSQL:
        return [dump_mysql(docker, container, spool, env)]
    if kind is DumpKind.REDIS:
        return [dump_redis(docker, container, spool, env)]
    if volume_root is not None and os.access(volume_root, os.R_OK):
        return dump_sqlite_local(container.name, volume_root, spool)
    return dump_sqlite_exec(docker, container, mount_path, spool)
