#!/usr/bin/env python3
"""`make demo`: the main job of cargohold, end to end, on the local engine.

1. Start a small compose-style project ``cargohold-demo`` (labels as compose sets them):
   * ``db``    — PostgreSQL 15 (local test image), data in the named volume ``cargohold-demo_pgdata``,
                 labelled ``cargohold.consistency=stop`` and ``cargohold.dump=postgres``; 1000 rows;
   * ``cache`` — busybox with an anonymous volume on /cache, a bind mount of ./.demo/uploads on
                 /uploads and a tmpfs on /run/cache.
2. Show the inventory (``cargohold volumes`` / ``mounts``).
3. Back the project up into the demo repository (./.demo/repo): the database stopped while its
   files are read, plus a pg_dumpall taken just before.
4. Lose everything: remove the containers and their volumes (``docker compose down -v``).
5. Restore the volume from the repository, start PostgreSQL on it, and check the rows.
6. Verify the snapshot (restore into a scratch volume and compare every file).

Re-running starts over. ``python scripts/demo.py --down`` removes the app (the repository stays).
The demo repository's password is ``demo`` — for this demo only.
"""

from __future__ import annotations

import argparse
import contextlib
import os
import shutil
import sys
import time
from pathlib import Path

from cargohold.cli.app import main as cargohold
from cargohold.docker.port import DockerPort
from cargohold.docker.sdk import connect
from cargohold.errors import CargoholdError, ContainerNotFound, VolumeNotFound

PROJECT = "cargohold-demo"
DEMO_LABEL = "cargohold.demo"
POSTGRES_IMAGE = "cargohold-test/postgres:latest"
BUSYBOX_IMAGE = "cargohold-test/busybox:latest"
ROOT = Path(__file__).resolve().parent.parent
WORKDIR = ROOT / ".demo"
REPO = WORKDIR / "repo"
PGDATA = f"{PROJECT}_pgdata"


def compose_labels(service: str) -> dict[str, str]:
    return {
        "com.docker.compose.project": PROJECT,
        "com.docker.compose.service": service,
        "com.docker.compose.container-number": "1",
        "com.docker.compose.project.working_dir": str(WORKDIR),
        "com.docker.compose.project.config_files": str(WORKDIR / "compose.yaml"),
        DEMO_LABEL: "1",
    }


def down(docker: DockerPort) -> None:
    for c in docker.list_containers(all=True):
        if c.labels.get(DEMO_LABEL) == "1":
            with contextlib.suppress(ContainerNotFound):
                docker.remove_container(c.id, force=True, volumes=True)
    for v in docker.list_volumes():
        if v.labels.get(DEMO_LABEL) == "1":
            with contextlib.suppress(VolumeNotFound):
                docker.remove_volume(v.name, force=True)


def psql(docker: DockerPort, container: str, sql: str) -> str:
    res = docker.exec(container, ["psql", "-U", "postgres", "-At", "-c", sql])
    if res.exit_code != 0:
        raise SystemExit(f"demo: psql failed: {res.stderr.decode(errors='replace').strip()}")
    return res.stdout.decode().strip()


def wait_for_postgres(docker: DockerPort, container: str, timeout: float = 60.0) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if docker.exec(container, ["pg_isready", "-U", "postgres", "-q"]).exit_code == 0:
            return
        time.sleep(0.3)
    raise SystemExit("demo: PostgreSQL did not become ready:\n" + docker.logs(container))


def start_db(docker: DockerPort) -> str:
    labels = {**compose_labels("db"), "cargohold.consistency": "stop", "cargohold.dump": "postgres"}
    db = docker.create_container(
        POSTGRES_IMAGE,
        name=f"{PROJECT}-db-1",
        mounts=[{"Type": "volume", "Source": PGDATA, "Target": "/var/lib/postgresql/data"}],
        labels=labels,
    )
    docker.start(db)
    return db


def step(text: str) -> None:
    print(f"\n=== {text}", flush=True)


def cli(*args: str) -> None:
    print(f"$ cargohold {' '.join(args)}", flush=True)
    code = cargohold(list(args))
    if code != 0:
        raise SystemExit(f"demo: `cargohold {' '.join(args)}` failed with exit code {code}")


def up(docker: DockerPort) -> None:
    for image in (POSTGRES_IMAGE, BUSYBOX_IMAGE):
        if not docker.image_exists(image):
            raise SystemExit(f"demo: image {image} is missing — run `make images` first")
    down(docker)
    (WORKDIR / "uploads").mkdir(parents=True, exist_ok=True)
    (WORKDIR / "uploads" / "avatar.png").write_bytes(b"\x89PNG demo upload\n")
    (WORKDIR / "compose.yaml").write_text(
        "# what the demo app would look like as a compose file\n"
        "services:\n"
        "  db:\n"
        f"    image: {POSTGRES_IMAGE}\n"
        "    network_mode: none\n"
        "    volumes: [pgdata:/var/lib/postgresql/data]\n"
        "  cache:\n"
        f"    image: {BUSYBOX_IMAGE}\n"
        "    network_mode: none\n"
        "    volumes: [/cache, ./uploads:/uploads]\n"
        "    tmpfs: [/run/cache]\n"
        "volumes:\n"
        "  pgdata: {}\n"
    )
    pgdata = PGDATA
    docker.create_volume(
        pgdata,
        labels={
            "com.docker.compose.project": PROJECT,
            "com.docker.compose.volume": "pgdata",
            DEMO_LABEL: "1",
        },
    )
    db = start_db(docker)
    cache = docker.create_container(
        BUSYBOX_IMAGE,
        name=f"{PROJECT}-cache-1",
        command=["sh", "-c", "echo warm > /cache/state && exec sleep 2147483647"],
        mounts=[
            {"Type": "volume", "Target": "/cache"},
            {"Type": "bind", "Source": str(WORKDIR / "uploads"), "Target": "/uploads"},
            {"Type": "tmpfs", "Target": "/run/cache"},
        ],
        labels=compose_labels("cache"),
    )
    docker.start(cache)
    wait_for_postgres(docker, db)
    psql(docker, db, "CREATE TABLE orders(id serial PRIMARY KEY, item text NOT NULL)")
    psql(docker, db, "INSERT INTO orders(item) SELECT 'item-' || g FROM generate_series(1, 1000) g")
    rows = psql(docker, db, "SELECT count(*) FROM orders")
    print(f"demo: PostgreSQL is up in {PROJECT}-db-1 with {rows} rows in volume {pgdata}")
    print(f"demo: {PROJECT}-cache-1 keeps /cache in an anonymous volume, /uploads on a bind mount\n")


def main_job(docker: DockerPort) -> None:
    step("1. the sample app: PostgreSQL with a named volume, a cache with an anonymous volume and a bind mount")
    up(docker)
    step("2. where its state lives")
    cli("volumes", "--project", PROJECT)
    cli("mounts", "--project", PROJECT)
    step("3. back the project up (PostgreSQL stopped while its files are read, plus a pg_dumpall)")
    if REPO.exists():
        shutil.rmtree(REPO)
    before = psql(docker, f"{PROJECT}-db-1", "SELECT count(*), sum(id) FROM orders")
    cli("init")
    cli("backup", "--project", PROJECT)
    step("4. lose it: containers and volumes removed (like `docker compose down -v`)")
    down(docker)
    print(f"volume {PGDATA} exists: {any(v.name == PGDATA for v in docker.list_volumes())}")
    step("5. restore the database volume and start PostgreSQL on it")
    cli("restore", "latest", "--source", PGDATA, "--to", PGDATA)
    db = start_db(docker)
    wait_for_postgres(docker, db)
    after = psql(docker, db, "SELECT count(*), sum(id) FROM orders")
    verdict = "MATCH" if after == before else "DIFFER"
    print(f"rows before: {before}  after restore: {after}  -> {verdict}")
    if after != before:
        raise SystemExit("demo: the restored rows differ")
    step("6. prove the snapshot restores: restore into a scratch volume and compare every file")
    cli("verify", "--latest", "--source", PGDATA)
    cli("snapshots")


def run(argv: list[str]) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--down", action="store_true", help="remove the demo app and its volumes")
    args = parser.parse_args(argv)
    docker = connect()
    os.environ["CARGOHOLD_REPO"] = str(REPO)
    os.environ["CARGOHOLD_PASSWORD"] = "demo"
    started = time.monotonic()
    try:
        if args.down:
            down(docker)
            print("demo: removed")
            return 0
        main_job(docker)
    except CargoholdError as err:
        print(f"demo: {err}", file=sys.stderr)
        return 1
    print(f"\ndemo: done in {time.monotonic() - started:.0f} s — the app runs again from its restored volume")
    return 0


if __name__ == "__main__":
    sys.exit(run(sys.argv[1:]))
