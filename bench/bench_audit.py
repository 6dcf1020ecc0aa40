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
import shutil
import subprocess
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
    ap.add_argument("--runs", type=int, default=3)
    a = ap.parse_args()
    docker = connect()
    with crowded_engine(
        docker,
        containers=a.containers,
        running=a.running,
        dangling=a.dangling,
        anonymous=a.anonymous,
        writers_every=10,
    ) as crowd:
        total_volumes, total_containers, setup_s = crowd.engine_volumes, crowd.engine_containers, crowd.setup_s
        results: dict[str, object] = {
            "engine_volumes": total_volumes,
            "engine_containers": total_containers,
            "setup_s": setup_s,
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
