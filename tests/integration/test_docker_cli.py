"""The Docker commands as a user runs them: backup, volumes with backups, verify, restore --to, kill -9."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from cargohold.docker.sdk import SdkDocker
from cargohold.testbed.resources import Resources

CLI = [sys.executable, "-m", "cargohold.cli.app"]
SERVICE = ["sh", "-c", "trap 'exit 0' TERM; sleep 600 & wait"]


@pytest.fixture
def env(tmp_path: Path) -> dict[str, str]:
    e = {
        **os.environ,
        "CARGOHOLD_REPO": str(tmp_path / "repo"),
        "CARGOHOLD_PASSWORD": "pw",
        "CARGOHOLD_KDF": "fast",
        "CARGOHOLD_STATE_DIR": str(tmp_path / "state"),
    }
    run(e, "init")
    return e


def run(env: dict[str, str], *args: str, code: int = 0) -> subprocess.CompletedProcess[str]:
    res = subprocess.run([*CLI, *args], env=env, capture_output=True, text=True, timeout=300)
    assert res.returncode == code, (args, res.returncode, res.stdout, res.stderr)
    return res


def test_backup_inventory_verify_restore(
    env: dict[str, str], docker_port: SdkDocker, resources: Resources, busybox_image: str
) -> None:
    vol = resources.volume("cli")
    ctr = resources.run(
        busybox_image, command=SERVICE, volumes={vol: "/data"}, labels={"cargohold.consistency": "pause"}
    )
    assert (
        docker_port.exec(ctr, ["sh", "-c", "echo one > /data/a && mkdir /data/d && echo two > /data/d/b"]).exit_code
        == 0
    )

    out = json.loads(run(env, "backup", vol, "--json").stdout)
    [res] = out["results"]
    assert out["requests"]["store"] >= 2 and out["requests"]["bytes_up"] > 0  # packs, index, snapshot
    assert res["source"] == {"kind": "volume", "name": vol} and res["consistency"] == "pause"
    assert res["error"] is None and res["downtime_seconds"][ctr] > 0 and res["snapshot"]["stats"]["files"] == 2
    assert docker_port.inspect_container(ctr).state == "running"

    # container environments are kept in the repository but never printed
    ctr_meta = res["snapshot"]["source"]["meta"]["containers"][0]
    assert ctr_meta["env"] and all(e.endswith("=<redacted>") for e in ctr_meta["env"])
    inv = json.loads(run(env, "volumes", "--json").stdout)
    assert inv["backups_read"] is True
    [entry] = [v for v in inv["volumes"] if v["name"] == vol]
    assert entry["backup"]["snapshot"] == res["snapshot"]["id"] and entry["backup"]["last_verify"] is None

    verified = json.loads(run(env, "verify", "--latest", "--source", vol, "--json").stdout)
    assert verified["ok"] is True and verified["files"] == 2
    inv = json.loads(run(env, "volumes", "--json").stdout)
    [entry] = [v for v in inv["volumes"] if v["name"] == vol]
    assert entry["backup"]["last_verify_ok"] is True
    table = run(env, "volumes").stdout
    assert "LAST BACKUP" in table and "ok " in next(line for line in table.splitlines() if line.startswith(vol))

    target = resources.track_volume(resources.name("cli-restored"))
    restored = json.loads(run(env, "restore", "latest", "--source", vol, "--to", target, "--json").stdout)
    assert restored["created"] is True and restored["files"] == 2
    assert Path(docker_port.inspect_volume(target).mountpoint, "d", "b").read_text() == "two\n"
    # again: the volume is not empty now
    res2 = run(env, "restore", "latest", "--source", vol, "--to", target, code=10)
    assert "is not empty" in res2.stderr and "--force" in res2.stderr and "Traceback" not in res2.stderr


def test_bad_input_is_one_line(env: dict[str, str]) -> None:
    assert "not found" in run(env, "backup", "chtest-no-such-volume", code=5).stderr
    assert "say what to back up" in run(env, "backup", code=2).stderr
    assert "exactly one of" in run(env, "restore", "latest", code=2).stderr
    bad_engine = {**env, "DOCKER_HOST": "tcp://127.0.0.1:9"}
    res = run(bad_engine, "backup", "x", code=3)
    assert res.stderr.count("\n") == 1 and "cannot reach the Docker engine" in res.stderr
    directory = Path(env["CARGOHOLD_REPO"]).parent / "plain"
    directory.mkdir()
    run(env, "backup", "--path", str(directory))
    res = run(env, "restore", "latest", "--to", "chtest-x", code=2)
    assert "not of a volume" in res.stderr


def test_unreachable_target_engine(env: dict[str, str], resources: Resources) -> None:
    vol = resources.volume("unreach")
    run(env, "backup", vol)
    res = run(env, "restore", "latest", "--source", vol, "--to", "chtest-x", "--engine", "tcp://127.0.0.1:9", code=3)
    assert res.stderr.count("\n") == 1 and "cannot reach the Docker engine at tcp://127.0.0.1:9" in res.stderr


def test_sigkill_during_stop_backup_then_any_command_restarts(
    env: dict[str, str], docker_port: SdkDocker, resources: Resources, busybox_image: str
) -> None:
    vol = resources.volume("kill")
    ctr = resources.run(
        busybox_image, command=SERVICE, volumes={vol: "/data"}, labels={"cargohold.consistency": "stop"}
    )
    # enough data that the read takes a while: we kill cargohold while the container is stopped
    fill = "for i in 1 2 3 4 5 6; do head -c 60000000 /dev/urandom > /data/blob$i; done"
    assert docker_port.exec(ctr, ["sh", "-c", fill]).exit_code == 0
    # --via api: the whole volume is read while the container is stopped (no pre-pass), which
    # leaves time to kill cargohold at that moment even on a loaded machine
    proc = subprocess.Popen(
        [*CLI, "backup", vol, "--via", "api"], env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE
    )
    try:
        deadline = time.monotonic() + 60
        while docker_port.inspect_container(ctr).state == "running":
            assert time.monotonic() < deadline, "the backup never stopped the container"
            assert proc.poll() is None, proc.communicate()
            time.sleep(0.02)
        proc.send_signal(signal.SIGKILL)
    finally:
        proc.wait()
    assert docker_port.inspect_container(ctr).state == "exited"
    res = run(env, "snapshots")  # any command
    assert "recovered container" in res.stderr and ctr in res.stderr
    assert docker_port.inspect_container(ctr).state == "running"
    assert json.loads(run(env, "snapshots", "--json").stdout) == []  # no half-written snapshot
    run(env, "check")
