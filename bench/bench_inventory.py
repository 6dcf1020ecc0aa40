#!/usr/bin/env python3
"""Inventory benchmark: `cargohold volumes --json` / `mounts --json` on a crowded engine.

On the engine DOCKER_HOST points at, bench/crowd.py sets up (by default) 500 volumes and 200
containers; the commands are timed end to end as a user runs them (a fresh process each time).
Prints a table and writes bench/results/inventory.json; everything created is removed.

Target (issue 2): `cargohold volumes --json` under 3 s.
"""

from __future__ import annotations

import argparse
import json
import shutil
import sys
from pathlib import Path

from crowd import CARGOHOLD, crowded_engine, timed

from cargohold.docker.sdk import connect

ROOT = Path(__file__).resolve().parent.parent


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--containers", type=int, default=200)
    ap.add_argument("--running", type=int, default=50)
    ap.add_argument("--dangling", type=int, default=50)
    ap.add_argument("--anonymous", type=int, default=50)
    ap.add_argument("--runs", type=int, default=5)
    a = ap.parse_args()
    docker = connect()
    with crowded_engine(
        docker, containers=a.containers, running=a.running, dangling=a.dangling, anonymous=a.anonymous
    ) as crowd:
        results: dict[str, object] = {
            "engine_volumes": crowd.engine_volumes,
            "engine_containers": crowd.engine_containers,
            "setup_s": crowd.setup_s,
            "cargohold volumes --json": timed([*CARGOHOLD, "volumes", "--json", "--no-backups"], a.runs),
            "cargohold mounts --json": timed([*CARGOHOLD, "mounts", "--json"], a.runs),
            "cargohold --version (process start)": timed([*CARGOHOLD, "--version"], a.runs),
        }
        docker_cli = shutil.which("docker")
        if docker_cli:
            results["docker system df -v (peer reference)"] = timed([docker_cli, "system", "df", "-v"], a.runs)

    print(f"engine: {crowd.engine_volumes} volumes, {crowd.engine_containers} containers (setup {crowd.setup_s} s)")
    print(f"{'command':45} {'min':>8} {'median':>8} {'max':>8}")
    for key, val in results.items():
        if isinstance(val, dict):
            print(f"{key:45} {val['min_s']:7.2f}s {val['median_s']:7.2f}s {val['max_s']:7.2f}s")
    out = ROOT / "bench" / "results"
    out.mkdir(parents=True, exist_ok=True)
    (out / "inventory.json").write_text(json.dumps(results, indent=2) + "\n")
    target = results["cargohold volumes --json"]
    assert isinstance(target, dict)
    verdict = "meets" if target["median_s"] < 3.0 else "MISSES"
    print(f"`cargohold volumes --json` median {target['median_s']:.2f} s: {verdict} the 3 s target")
    return 0


if __name__ == "__main__":
    sys.exit(main())
