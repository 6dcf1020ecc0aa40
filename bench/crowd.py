"""A crowded engine for the inventory and audit benchmarks, and end-to-end timing of commands.

:func:`crowded_engine` creates (by default) 500 volumes and 200 containers on the engine
DOCKER_HOST points at — 400 named volumes used two per container, 50 anonymous volumes,
50 dangling volumes (a quarter of them holding data), 50 containers running, compose labels —
and removes everything it made on exit, even on failure (all of it carries ``cargohold.bench``).
"""

from __future__ import annotations

import os
import statistics
import subprocess
import sys
import time
import uuid
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager, suppress
from dataclasses import dataclass
from pathlib import Path

from cargohold.docker.port import DockerPort
from cargohold.errors import DockerNotFound

IMAGE = os.environ.get("CARGOHOLD_BENCH_IMAGE", "cargohold-test/busybox:latest")
CARGOHOLD = [sys.executable, "-m", "cargohold.cli.app"]
WRITER = "mkdir -p /srv/up && head -c 65536 /dev/urandom > /srv/up/f && exec sleep 2147483647"


@dataclass
class Crowd:
    setup_s: float
    engine_volumes: int
    engine_containers: int


def timed(cmd: list[str], runs: int) -> dict[str, float]:
    """Run ``cmd`` ``runs`` times as a fresh process; min/median/max wall seconds."""
    times = []
    for _ in range(runs):
        start = time.perf_counter()
        out = subprocess.run(cmd, capture_output=True, check=False)
        times.append(time.perf_counter() - start)
        if out.returncode != 0:
            raise SystemExit(f"{' '.join(cmd)} failed: {out.stderr.decode().strip()}")
    return {"min_s": min(times), "median_s": statistics.median(times), "max_s": max(times)}


@contextmanager
def crowded_engine(
    docker: DockerPort,
    *,
    containers: int = 200,
    running: int = 50,
    dangling: int = 50,
    anonymous: int = 50,
    writers_every: int = 0,
) -> Iterator[Crowd]:
    """``writers_every=N``: every Nth running container writes 64 KiB into its writable layer."""
    if not docker.image_exists(IMAGE):
        raise SystemExit(f"image {IMAGE} missing: run `make images`")
    tag = uuid.uuid4().hex[:8]
    label = {"cargohold.bench": tag}
    made: dict[str, list[str]] = {"containers": [], "volumes": []}

    def make_container(i: int) -> None:
        vols: list[dict[str, object]] = []
        for j in range(2):
            name = f"chbench-{tag}-v{i:03d}-{j}"
            docker.create_volume(name, labels={**label, "com.docker.compose.project": f"p{i % 20}"})
            made["volumes"].append(name)
            vols.append({"Type": "volume", "Source": name, "Target": f"/data{j}"})
        if i < anonymous:
            vols.append({"Type": "volume", "Target": "/anon"})
        writes = writers_every > 0 and i < running and i % writers_every == 0
        cid = docker.create_container(
            IMAGE,
            name=f"chbench-{tag}-c{i:03d}",
            command=["sh", "-c", WRITER] if writes else ["sleep", "2147483647"],
            mounts=vols,
            labels={**label, "com.docker.compose.project": f"p{i % 20}", "com.docker.compose.service": "s"},
        )
        made["containers"].append(cid)
        if i < running:
            docker.start(cid)

    def make_dangling(i: int) -> None:
        name = f"chbench-{tag}-d{i:03d}"
        info = docker.create_volume(name, labels=label)
        made["volumes"].append(name)
        if i % 4 == 0 and info.mountpoint and os.access(info.mountpoint, os.W_OK):
            Path(info.mountpoint, "blob.bin").write_bytes(os.urandom(64 << 10))

    t0 = time.perf_counter()
    try:
        with ThreadPoolExecutor(8) as pool:
            list(pool.map(make_container, range(containers)))
            list(pool.map(make_dangling, range(dangling)))
        yield Crowd(
            setup_s=round(time.perf_counter() - t0, 1),
            engine_volumes=len(docker.list_volumes()),
            engine_containers=len(docker.list_containers(all=True)),
        )
    finally:  # in parallel (700 objects); one already gone must not stop the rest

        def remove_container(cid: str) -> None:
            with suppress(DockerNotFound):
                docker.remove_container(cid, force=True, volumes=True)

        def remove_volume(name: str) -> None:
            with suppress(DockerNotFound):
                docker.remove_volume(name, force=True)

        with ThreadPoolExecutor(8) as pool:
            list(pool.map(remove_container, made["containers"]))
            list(pool.map(remove_volume, made["volumes"]))
