#!/usr/bin/env python3
"""Docker backup benchmark (issue 4): the shared corpus inside a Docker volume.

In one run, on the engine DOCKER_HOST points at (local, readable mountpoints):

1. generate the corpus (../shared/bench/make_corpus.py, --scale) straight into a new volume;
2. time full backups into fresh repositories of the same data three ways:
   `cargohold backup --path MOUNTPOINT` (the directory baseline), `cargohold backup VOL --via direct`,
   `cargohold backup VOL --via api` (tar stream through the Engine archive API);
3. the stop window: a container that uses the volume with `cargohold.consistency=stop`; after the
   full backup, apply one day of change (`--generation 1`) and back up again; the container's
   stop time (as cargohold reports it) is compared with the time it takes to read just the
   changed files (`cat` of every file whose size or mtime changed, page cache as warm as for the
   backup) plus 2 s.

Targets: direct <= 1.1x --path; api <= 1.5x direct; stop window <= read-changed + 2 s.
Prints a table and writes bench/results/docker-<scale>.json. Everything it creates is removed.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
import uuid
from pathlib import Path
from typing import Any

from cargohold.docker.sdk import connect

ROOT = Path(__file__).resolve().parent.parent
CORPUS = ROOT.parent / "shared" / "bench" / "make_corpus.py"
CLI = [sys.executable, "-m", "cargohold.cli.app"]
IMAGE = "cargohold-test/busybox:latest"


def timed(cmd: list[str], env: dict[str, str]) -> tuple[float, str]:
    start = time.perf_counter()
    res = subprocess.run(cmd, env=env, capture_output=True, text=True, check=False)
    took = time.perf_counter() - start
    if res.returncode not in (0, 1):
        raise SystemExit(f"{' '.join(cmd)} failed ({res.returncode}): {res.stderr.strip()}")
    return took, res.stdout


def fresh_repo(work: Path, name: str) -> dict[str, str]:
    env = {
        **os.environ,
        "CARGOHOLD_REPO": str(work / name),
        "CARGOHOLD_PASSWORD": "bench",
        "CARGOHOLD_STATE_DIR": str(work / "state"),
    }
    subprocess.run([*CLI, "init"], env=env, check=True, capture_output=True)
    return env


def snapshot_of(path: Path) -> dict[str, tuple[int, int]]:
    out = {}
    for dirpath, _dirs, files in os.walk(path):
        for f in files:
            st = os.lstat(os.path.join(dirpath, f))
            out[os.path.join(dirpath, f)] = (st.st_size, st.st_mtime_ns)
    return out


def read_files(paths: list[str]) -> float:
    start = time.perf_counter()
    for p in paths:
        with open(p, "rb") as f:
            while f.read(1 << 20):
                pass
    return time.perf_counter() - start


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--scale", type=float, default=1.0)
    ap.add_argument("--workdir", type=Path, default=None, help="where repositories go (default: a temp dir)")
    a = ap.parse_args()
    if not CORPUS.exists():
        raise SystemExit(f"{CORPUS} not found: this benchmark needs the shared corpus generator")
    docker = connect()
    if not docker.engine_info().local:
        raise SystemExit("this benchmark needs a local engine (it writes the corpus into the mountpoint)")
    work = Path(tempfile.mkdtemp(prefix="cargohold-bench-docker-", dir=a.workdir))
    tag = uuid.uuid4().hex[:8]
    vol = f"chbench-docker-{tag}"
    ctr = None
    results: dict[str, Any] = {"scale": a.scale, "load_before": os.getloadavg()}
    try:
        mountpoint = Path(docker.create_volume(vol, labels={"cargohold.bench": tag}).mountpoint)
        os.rmdir(mountpoint)  # make_corpus wants a missing or empty directory
        t = time.perf_counter()
        subprocess.run([sys.executable, str(CORPUS), str(mountpoint), "--scale", str(a.scale)], check=True)
        results["corpus_seconds"] = round(time.perf_counter() - t, 1)
        size = sum(s for s, _ in snapshot_of(mountpoint).values())
        results["corpus_bytes"] = size

        runs = {}
        for label, args in (
            ("backup --path", ["backup", "--path", str(mountpoint)]),
            ("backup VOL --via direct", ["backup", vol, "--via", "direct"]),
            ("backup VOL --via api", ["backup", vol, "--via", "api"]),
        ):
            env = fresh_repo(work, label.replace(" ", "_").replace("-", ""))
            subprocess.run(["sync"], check=False)
            took, _ = timed([*CLI, *args], env)
            runs[label] = round(took, 2)
            shutil.rmtree(env["CARGOHOLD_REPO"])
        results["full_backup_seconds"] = runs
        direct_ratio = runs["backup VOL --via direct"] / runs["backup --path"]
        api_ratio = runs["backup VOL --via api"] / runs["backup VOL --via direct"]
        results["direct_vs_path"] = round(direct_ratio, 3)
        results["api_vs_direct"] = round(api_ratio, 3)

        # stop window for one day of change
        env = fresh_repo(work, "stopwindow")
        ctr = docker.create_container(
            IMAGE,
            name=f"chbench-docker-{tag}",
            command=["sh", "-c", "trap 'exit 0' TERM; sleep 2147483647 & wait"],
            mounts=[{"Type": "volume", "Source": vol, "Target": "/data"}],
            labels={"cargohold.bench": tag, "cargohold.consistency": "stop"},
        )
        docker.start(ctr)
        timed([*CLI, "backup", vol, "--json"], env)
        before = snapshot_of(mountpoint)
        subprocess.run(
            [sys.executable, str(CORPUS), str(mountpoint), "--scale", str(a.scale), "--generation", "1"], check=True
        )
        after = snapshot_of(mountpoint)
        changed = [p for p, v in after.items() if before.get(p) != v]
        changed_bytes = sum(after[p][0] for p in changed)
        took, out = timed([*CLI, "backup", vol, "--json"], env)
        [res] = json.loads(out)["results"]
        window = max(res["downtime_seconds"].values())
        read_changed = read_files(changed)
        results["stop_window"] = {
            "changed_files": len(changed),
            "changed_bytes": changed_bytes,
            "incremental_backup_seconds": round(took, 2),
            "container_stopped_seconds": round(window, 2),
            "read_changed_seconds": round(read_changed, 2),
            "limit_seconds": round(read_changed + 2.0, 2),
        }
        results["load_after"] = os.getloadavg()
    finally:
        if ctr is not None:
            docker.remove_container(ctr, force=True)
        docker.remove_volume(vol, force=True)
        shutil.rmtree(work, ignore_errors=True)

    sw = results["stop_window"]
    print(f"corpus: {results['corpus_bytes'] / 1e9:.2f} GB at scale {a.scale}")
    print(f"{'full backup':32} {'seconds':>8}")
    for k, v in results["full_backup_seconds"].items():
        print(f"{k:32} {v:8.2f}")
    ok = lambda cond: "met" if cond else "MISSED"  # noqa: E731
    print(f"direct / --path = {results['direct_vs_path']:.2f} (target <= 1.1: {ok(results['direct_vs_path'] <= 1.1)})")
    print(f"api / direct    = {results['api_vs_direct']:.2f} (target <= 1.5: {ok(results['api_vs_direct'] <= 1.5)})")
    print(
        f"stop window: {sw['container_stopped_seconds']:.2f} s stopped for {sw['changed_files']} changed files "
        f"({sw['changed_bytes'] / 1e6:.0f} MB; reading them takes {sw['read_changed_seconds']:.2f} s) — "
        f"limit {sw['limit_seconds']:.2f} s: {ok(sw['container_stopped_seconds'] <= sw['limit_seconds'])}"
    )
    out_dir = ROOT / "bench" / "results"
    out_dir.mkdir(parents=True, exist_ok=True)
    (out_dir / f"docker-{a.scale}.json").write_text(json.dumps(results, indent=2) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
