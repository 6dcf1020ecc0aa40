#!/usr/bin/env python3
"""`make demo`: start a sample stateful app on the local engine and show what cargohold sees.

The app is a small compose-style project ``cargohold-demo`` (labels as compose sets them):
  * ``db``    — PostgreSQL 15 (local test image) with its data in the named volume
                ``cargohold-demo_pgdata``; a table with a few rows is written into it;
  * ``cache`` — busybox with an anonymous volume on /cache, a bind mount of ./.demo/uploads on
                /uploads and a tmpfs on /run/cache.
Re-running replaces the previous demo app. ``python scripts/demo.py --down`` removes it.
"""

from __future__ import annotations

import argparse
import contextlib
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
    pgdata = f"{PROJECT}_pgdata"
    docker.create_volume(
        pgdata,
        labels={
            "com.docker.compose.project": PROJECT,
            "com.docker.compose.volume": "pgdata",
            DEMO_LABEL: "1",
        },
    )
    db = docker.create_container(
        POSTGRES_IMAGE,
        name=f"{PROJECT}-db-1",
        mounts=[{"Type": "volume", "Source": pgdata, "Target": "/var/lib/postgresql/data"}],
        labels=compose_labels("db"),
    )
    docker.start(db)
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


def run(argv: list[str]) -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--down", action="store_true", help="remove the demo app and its volumes")
    args = parser.parse_args(argv)
    docker = connect()
    try:
        if args.down:
            down(docker)
            print("demo: removed")
            return 0
        up(docker)
    except CargoholdError as err:
        print(f"demo: {err}", file=sys.stderr)
        return 1
    print(f"$ cargohold volumes --project {PROJECT}")
    code = cargohold(["volumes", "--project", PROJECT])
    print(f"\n$ cargohold mounts --project {PROJECT}")
    return code or cargohold(["mounts", "--project", PROJECT])


if __name__ == "__main__":
    sys.exit(run(sys.argv[1:]))
