"""The RGW and sshd test beds' bookkeeping (no Ceph, no sshd needed): the servers of a test run that
died without stopping them are stopped by pid."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys

from cargohold.procinfo import owner_token
from cargohold.testbed import rgw, sshd


def test_sweep_stops_the_daemons_of_a_dead_owner_only() -> None:
    dead = subprocess.Popen([sys.executable, "-c", "pass"])
    dead.wait()
    daemon = subprocess.Popen(["sleep", "60"])  # stands in for ceph-mon
    orphan = rgw.temp_base()
    alive = rgw.temp_base()  # owned by this (living) process
    try:
        (orphan / "owner").write_text(f"{owner_token().rsplit(':', 2)[0]}:{dead.pid}:")
        (orphan / "run").mkdir()
        (orphan / "run" / "pid.mon").write_text(f"{daemon.pid}\n")
        (orphan / "ceph.conf").write_text("")
        swept = rgw.sweep_orphans()
        assert orphan in swept and alive not in swept
        assert daemon.wait(timeout=15) is not None  # stopped (SIGTERM)
        assert not orphan.exists() and alive.exists()
    finally:
        daemon.kill()
        rgw.stop_rgw(alive)
        shutil.rmtree(alive, ignore_errors=True)
        shutil.rmtree(orphan, ignore_errors=True)


def test_sshd_sweep_stops_the_server_of_a_dead_owner_only() -> None:
    dead = subprocess.Popen([sys.executable, "-c", "pass"])
    dead.wait()
    daemon = subprocess.Popen(["sleep", "60"])  # stands in for sshd -D
    orphan = sshd.temp_base()
    alive = sshd.temp_base()  # owned by this (living) process
    try:
        (orphan / "owner").write_text(f"{owner_token().rsplit(':', 2)[0]}:{dead.pid}:")
        (orphan / "sshd.json").write_text(json.dumps({"port": 1, "pid": daemon.pid, "user": "nobody"}))
        swept = sshd.sweep_orphans()
        assert orphan in swept and alive not in swept
        assert daemon.wait(timeout=15) is not None  # stopped (SIGTERM)
        assert not orphan.exists() and alive.exists()
    finally:
        daemon.kill()
        shutil.rmtree(alive, ignore_errors=True)
        shutil.rmtree(orphan, ignore_errors=True)
