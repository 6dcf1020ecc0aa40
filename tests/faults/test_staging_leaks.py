"""Backups SIGKILLed while they write packs leave temporary files (issue 16, item 1): check
tells how many and how many bytes, prune removes them all, and the repository stays
healthy. The killed backups' locks expire at the next command (item 5c).

``CARGOHOLD_FAULT_KILLS`` sets how many backups are killed (default 3).
"""

from __future__ import annotations

import hashlib
import os
import random
import signal
import subprocess
import sys
import time
from pathlib import Path

from cargohold.backends import LocalBackend, leftovers_of
from cargohold.procinfo import process_gone
from cargohold.repo.repository import Repository
from cargohold.services import repository as svc

CLI = [sys.executable, "-m", "cargohold.cli.app"]


def _env() -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("CARGOHOLD_")}
    env.update({"CARGOHOLD_KDF": "fast", "CARGOHOLD_PASSWORD": "pw", "CARGOHOLD_LOCK_WAIT": "60"})
    return env


def _temp_files(root: Path) -> dict[Path, int]:
    out = {}
    for p in root.rglob("*"):
        if "~tmp~" in p.name:
            try:
                out[p] = p.stat().st_size
            except FileNotFoundError:
                continue
    return out


def _digests(root: Path) -> dict[str, str]:
    return {str(p.relative_to(root)): hashlib.sha256(p.read_bytes()).hexdigest() for p in sorted(root.rglob("*.bin"))}


def _kill_mid_pack(repo: Path, src: Path, delay: float) -> bool:
    """Start a backup and SIGKILL it ``delay`` seconds after a pack is being written; True if
    it was killed (not finished by then)."""
    proc = subprocess.Popen(
        [*CLI, "backup", "--repo", str(repo), "--path", str(src)],
        env=_env(),
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    before = set(_temp_files(repo))
    deadline = time.monotonic() + 120
    killed = False
    while proc.poll() is None and time.monotonic() < deadline:
        if any(size > 0 for p, size in _temp_files(repo / "data").items() if p not in before):
            time.sleep(delay)
            if proc.poll() is None:
                proc.send_signal(signal.SIGKILL)
                killed = True
            break
        time.sleep(0.005)
    proc.wait()
    return killed


def _wait_writers_gone(backend: LocalBackend) -> None:
    """The workers die with the backup (parent-death signal), a moment later."""
    deadline = time.monotonic() + 30
    for lo in leftovers_of(backend):
        assert lo.writer is not None
        while not process_gone(lo.writer.pid, lo.writer.start):
            assert time.monotonic() < deadline, f"worker {lo.writer.pid} outlived its backup"
            time.sleep(0.01)


def test_sigkilled_backups_leave_temp_files_that_check_reports_and_prune_removes(tmp_path: Path) -> None:
    rng = random.Random(int(os.environ.get("CARGOHOLD_FAULT_SEED", "16")))
    kills = int(os.environ.get("CARGOHOLD_FAULT_KILLS", "3"))
    repo, src = tmp_path / "repo", tmp_path / "src"
    src.mkdir()
    subprocess.run([*CLI, "init", "--repo", str(repo)], check=True, env=_env(), capture_output=True)
    backend = LocalBackend(repo)
    killed = 0
    for round_ in range(kills * 5):
        if killed == kills:
            break
        # new data each round (more than 4 MiB: the workers are processes, writing staged packs)
        (src / f"big{round_}.bin").write_bytes(rng.randbytes(24 * 1024 * 1024))
        killed += _kill_mid_pack(repo, src, rng.uniform(0.0, 0.08))
        (src / f"big{round_}.bin").unlink()
    assert killed == kills, f"only {killed} backups were killed while writing a pack"
    _wait_writers_gone(backend)
    left = _temp_files(repo)
    assert left and sum(left.values()) > 0
    dead_locks = [i.name for i in backend.list("locks/")]  # of the last killed backup, if it had one still

    rep = svc.check(Repository.open(backend, "pw", load_index=False), read_data=True)
    assert rep.ok, rep.damage
    assert len(rep.leftovers) == len(left) and rep.leftover_bytes == sum(left.values())
    assert all(v.removable for v in rep.leftovers), [v.reason for v in rep.leftovers]
    assert [i.name for i in backend.list("locks/")] == [], f"taking check's lock expired {dead_locks}"

    pr = svc.prune(Repository.open(backend, "pw", load_index=False))
    assert (pr.leftovers_removed, pr.leftover_bytes_removed) == (len(left), sum(left.values()))
    assert _temp_files(repo) == {}
    print(f"\n{killed} kills left {len(left)} temporary files, {sum(left.values())} bytes; after prune: 0")

    # still healthy: a new backup and its restore are exact
    (src / "last.bin").write_bytes(rng.randbytes(300_000))
    r = Repository.open(backend, "pw", load_index=False)
    snap = svc.backup(r, src).snapshot
    assert snap is not None
    svc.restore(Repository.open(backend, "pw", load_index=False), snap.id, tmp_path / "out")
    assert _digests(tmp_path / "out") == _digests(src)
    final = svc.check(Repository.open(backend, "pw", load_index=False), read_data=True)
    assert final.ok and final.leftovers == []
