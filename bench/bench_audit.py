#!/usr/bin/env python3
"""Audit benchmark: `cargohold audit --json` (live engine) on a crowded engine.

Creates (by default) 500 volumes and 200 containers on the engine DOCKER_HOST points at
(400 named volumes used two per container by 200 containers, 50 anonymous volumes, 50
dangling volumes, a quarter of them holding data; 50 containers running), times the
commands end to end as a user runs them (a fresh process each time), prints a table
and writes bench/results/audit.json. Everything it creates carries the label
cargohold.bench and is removed at the end, even on failure. A tenth of the running
containers write a few files into their writable layer, so the scan has work to do.

Target (issue 5): `cargohold audit` of 200 containers and 500 volumes under 5 s.
"""

from __future__ import annotations

import argparse
import collections
import json
import os
import shutil
import statistics
import subprocess
import sys
import time
import uuid
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

from cargohold.docker.sdk import connect

ROOT = Path(__file__).resolve().parent.parent
IMAGE = os.environ.get("CARGOHOLD_BENCH_IMAGE", "cargohold-test/busybox:latest")
CARGOHOLD = [sys.executable, "-m", "cargohold.cli.app"]


def timed(cmd: list[str], runs: int) -> dict[str, float]:
    times = []
    for _ in range(runs):
        start = time.perf_counter()
        out = subprocess.run(cmd, capture_output=True, check=False)
        times.append(time.perf_counter() - start)
        if out.returncode != 0:
            raise SystemExit(f"{' '.join(cmd)} failed: {out.stderr.decode().strip()}")
    return {"min_s": min(times), "median_s": statistics.median(times), "max_s": max(times)}


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--containers", type=int, default=200)
    ap.add_argument("--running", type=int, default=50)
    ap.add_argument("--dangling", type=int, default=50)
    ap.add_argument("--anonymous", type=int, default=50)
    ap.add_argument("--runs", type=int, default=3)
    a = ap.parse_args()

    docker = connect()
    if not docker.image_exists(IMAGE):
        raise SystemExit(f"image {IMAGE} missing: run `make images`")
    tag = uuid.uuid4().hex[:8]
    label = {"cargohold.bench": tag}
    names: dict[str, list[str]] = {"containers": [], "volumes": []}

    def make_container(i: int) -> None:
        vols = []
        for j in range(2):
            name = f"chbench-{tag}-v{i:03d}-{j}"
            docker.create_volume(name, labels={**label, "com.docker.compose.project": f"p{i % 20}"})
            names["volumes"].append(name)
            vols.append({"Type": "volume", "Source": name, "Target": f"/data{j}"})
        if i < a.anonymous:
            vols.append({"Type": "volume", "Target": "/anon"})
        writes = i < a.running and i % 10 == 0
        cid = docker.create_container(
            IMAGE,
            name=f"chbench-{tag}-c{i:03d}",
            command=(
                ["sh", "-c", "mkdir -p /srv/up && head -c 65536 /dev/urandom > /srv/up/f && exec sleep 2147483647"]
                if writes
                else ["sleep", "2147483647"]
            ),
            mounts=vols,
            labels={**label, "com.docker.compose.project": f"p{i % 20}", "com.docker.compose.service": "s"},
        )
        names["containers"].append(cid)
        if i < a.running:
            docker.start(cid)

    def make_dangling(i: int) -> None:
        name = f"chbench-{tag}-d{i:03d}"
        info = docker.create_volume(name, labels=label)
        names["volumes"].append(name)
        if i % 4 == 0 and info.mountpoint and os.access(info.mountpoint, os.W_OK):
            Path(info.mountpoint, "blob.bin").write_bytes(os.urandom(64 << 10))

    t0 = time.perf_counter()
    try:
        with ThreadPoolExecutor(8) as pool:
            list(pool.map(make_container, range(a.containers)))
            list(pool.map(make_dangling, range(a.dangling)))
        setup_s = time.perf_counter() - t0
        total_volumes = len(docker.list_volumes())
        total_containers = len(docker.list_containers(all=True))
        results = {
            "engine_volumes": total_volumes,
            "engine_containers": total_containers,
            "setup_s": round(setup_s, 1),
            "cargohold audit --json": timed([*CARGOHOLD, "audit", "--json", "--fail-on", "none"], a.runs),
            "cargohold audit --json --no-writable-layer": timed(
                [*CARGOHOLD, "audit", "--json", "--fail-on", "none", "--no-writable-layer"], a.runs
            ),
            "cargohold --version (process start)": timed([*CARGOHOLD, "--version"], a.runs),
        }
        out = subprocess.run([*CARGOHOLD, "audit", "--json", "--fail-on", "none"], capture_output=True, check=True)
        findings = json.loads(out.stdout)["findings"]
        results["findings"] = len(findings)
        results["findings_by_rule"] = dict(sorted(collections.Counter(str(f["rule"]) for f in findings).items()))
        docker_cli = shutil.which("docker")
        if docker_cli:
            results["docker system df -v (peer reference)"] = timed([docker_cli, "system", "df", "-v"], a.runs)
    finally:
        with ThreadPoolExecutor(8) as pool:
            list(pool.map(lambda c: docker.remove_container(c, force=True, volumes=True), names["containers"]))
            list(pool.map(lambda v: docker.remove_volume(v, force=True), names["volumes"]))

    print(f"engine: {total_volumes} volumes, {total_containers} containers (setup {setup_s:.1f} s)")
    print(f"{'command':45} {'min':>8} {'median':>8} {'max':>8}")
    for key, val in results.items():
        if isinstance(val, dict) and "min_s" in val:
            print(f"{key:45} {val['min_s']:7.2f}s {val['median_s']:7.2f}s {val['max_s']:7.2f}s")
    out = ROOT / "bench" / "results"
    out.mkdir(parents=True, exist_ok=True)
    (out / "audit.json").write_text(json.dumps(results, indent=2) + "\n")
    print(f"findings: {results['findings']} {results['findings_by_rule']}")
    target = results["cargohold audit --json"]
    assert isinstance(target, dict)
    verdict = "meets" if target["median_s"] < 5.0 else "MISSES"
    print(f"`cargohold audit --json` median {target['median_s']:.2f} s: {verdict} the 5 s target")
    return 0


if __name__ == "__main__":
    sys.exit(main())
