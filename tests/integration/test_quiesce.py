"""Stop/pause/hooks against the real engine, and recovery after cargohold is killed mid-backup."""

from __future__ import annotations

import contextlib
import os
import signal
import subprocess
import sys
import textwrap
import time
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from cargohold.docker.sdk import SdkDocker
from cargohold.errors import CargoholdError, ConsistencyError
from cargohold.model.consistency import Mode, decide
from cargohold.services.intents import IntentJournal
from cargohold.services.quiesce import Participant, Quiescer

CLI = [sys.executable, "-m", "cargohold.cli.app"]


@pytest.fixture
def state_dir(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    d = tmp_path / "state"
    monkeypatch.setenv("CARGOHOLD_STATE_DIR", str(d))
    return d


@pytest.fixture
def sleepers(docker_port: SdkDocker, busybox_image: str) -> Iterator[list[str]]:
    """Two running containers sharing a volume, started one after the other."""
    tag = uuid.uuid4().hex[:8]
    vol = f"chtest-q-{tag}"
    docker_port.create_volume(vol, labels={"cargohold.test": "1"})
    ids = []
    try:
        for i in range(2):
            cid = docker_port.create_container(
                busybox_image,
                name=f"chtest-q-{tag}-{i}",
                # a PID 1 that exits on SIGTERM, as a real service does (plain `sleep` ignores it)
                command=["sh", "-c", "trap 'exit 0' TERM; sleep 600 & wait"],
                mounts=[{"Type": "volume", "Source": vol, "Target": "/data"}],
                labels={
                    "cargohold.test": "1",
                    "cargohold.pre": "echo pre >> /data/hooks",
                    "cargohold.post": "echo post >> /data/hooks",
                },
            )
            ids.append(cid)
            docker_port.start(cid)
            time.sleep(1.1)  # distinct StartedAt
        yield ids
    finally:
        for cid in ids:
            docker_port.remove_container(cid, force=True)
        docker_port.remove_volume(vol, force=True)


def participants(docker: SdkDocker, ids: list[str]) -> list[Participant]:
    out = []
    for cid in ids:
        info = docker.inspect_container(cid)
        out.append(Participant(info, decide(info.name, info.image, info.labels)))
    return out


def quiescer(docker: SdkDocker, journal: IntentJournal) -> Quiescer:
    engine = docker.engine_info()
    return Quiescer(docker, journal, endpoint=docker.endpoint, engine_id=engine.id)


@pytest.mark.parametrize(("mode", "held_state"), [(Mode.STOP, "exited"), (Mode.PAUSE, "paused")])
def test_hold_stops_and_restores_in_order(
    docker_port: SdkDocker, sleepers: list[str], state_dir: Path, mode: Mode, held_state: str
) -> None:
    journal = IntentJournal()
    with quiescer(docker_port, journal).hold(participants(docker_port, sleepers), purpose="t", mode=mode) as w:
        states = [docker_port.inspect_container(c).state for c in sleepers]
        assert states == [held_state, held_state]
        [intent] = journal.pending()
        # the later-started container is stopped first
        assert [a.container_id for a in intent.actions] == list(reversed(sleepers))
    after = [docker_port.inspect_container(c) for c in sleepers]
    assert [c.state for c in after] == ["running", "running"]
    if mode is Mode.STOP:
        assert after[0].started_at < after[1].started_at  # started again in the original order
    assert journal.pending() == []
    assert set(w.downtime) == {c.name for c in after} and all(v > 0 for v in w.downtime.values())
    hooks = docker_port.exec(sleepers[0], ["cat", "/data/hooks"]).stdout.decode().split()
    assert hooks == ["pre", "pre", "post", "post"]


def test_failing_pre_hook_aborts_and_leaves_everything_running(
    docker_port: SdkDocker, sleepers: list[str], state_dir: Path
) -> None:
    parts = participants(docker_port, sleepers)
    bad = Participant(
        parts[1].container,
        decide(parts[1].container.name, "x", {"cargohold.pre": "echo nope >&2; exit 3"}),
    )
    ran = False
    q = quiescer(docker_port, IntentJournal())
    with (
        pytest.raises(ConsistencyError, match=r"pre-hook .* exit code 3: nope"),
        q.hold([parts[0], bad], purpose="t", mode=Mode.STOP),
    ):
        ran = True
    assert not ran
    assert [docker_port.inspect_container(c).state for c in sleepers] == ["running", "running"]
    # the first container's pre-hook ran, so its post-hook ran too
    assert docker_port.exec(sleepers[0], ["cat", "/data/hooks"]).stdout.decode().split() == ["pre", "post"]


def test_error_in_body_still_restores(docker_port: SdkDocker, sleepers: list[str], state_dir: Path) -> None:
    with (
        pytest.raises(RuntimeError),
        quiescer(docker_port, IntentJournal()).hold(participants(docker_port, sleepers), purpose="t", mode=Mode.STOP),
    ):
        raise RuntimeError("read failed")
    assert [docker_port.inspect_container(c).state for c in sleepers] == ["running", "running"]
    assert IntentJournal().pending() == []


KILLED_SCRIPT = textwrap.dedent(
    """
    import sys, time
    from cargohold.docker.sdk import SdkDocker
    from cargohold.model.consistency import Mode, decide
    from cargohold.services.intents import IntentJournal
    from cargohold.services.quiesce import Participant, Quiescer
    d = SdkDocker()
    parts = []
    for cid in sys.argv[2:]:
        info = d.inspect_container(cid)
        parts.append(Participant(info, decide(info.name, info.image, {})))
    q = Quiescer(d, IntentJournal(), endpoint=d.endpoint, engine_id=d.engine_info().id)
    with q.hold(parts, purpose="killed backup", mode=Mode(sys.argv[1])):
        print("held", flush=True)
        time.sleep(600)
    """
)


@pytest.mark.parametrize("mode", ["stop", "pause"])
def test_sigkill_then_any_command_recovers(
    docker_port: SdkDocker, sleepers: list[str], state_dir: Path, mode: str
) -> None:
    env = {**os.environ, "CARGOHOLD_STATE_DIR": str(state_dir)}
    proc = subprocess.Popen(
        [sys.executable, "-c", KILLED_SCRIPT, mode, *sleepers], stdout=subprocess.PIPE, env=env, text=True
    )
    try:
        assert proc.stdout is not None and proc.stdout.readline().strip() == "held"
        held = "exited" if mode == "stop" else "paused"
        assert [docker_port.inspect_container(c).state for c in sleepers] == [held, held]
    finally:
        proc.send_signal(signal.SIGKILL)
        proc.wait()
    # still stopped: nobody has put them back yet
    assert docker_port.inspect_container(sleepers[0]).state != "running"
    res = subprocess.run([*CLI, "volumes"], env=env, capture_output=True, text=True, timeout=120)
    assert res.returncode == 0, res.stderr
    assert res.stderr.count("recovered container") == 2
    assert [docker_port.inspect_container(c).state for c in sleepers] == ["running", "running"]
    assert IntentJournal(state_dir / "intents").pending() == []


def test_recover_command_reports(docker_port: SdkDocker, sleepers: list[str], state_dir: Path) -> None:
    journal = IntentJournal()
    parts = participants(docker_port, sleepers)
    q = quiescer(docker_port, journal)
    gen: Any = q.hold(parts, purpose="abandoned", mode=Mode.STOP)
    gen.__enter__()  # held, never exited: like a process that died
    intent = journal.pending()[0]
    intent.pid = 2**22 + 12345  # a pid that does not exist
    journal.write(intent)
    res = subprocess.run([*CLI, "recover", "--json"], capture_output=True, text=True, timeout=120)
    assert res.returncode == 0, res.stderr
    assert '"outcome": "started"' in res.stdout
    assert [docker_port.inspect_container(c).state for c in sleepers] == ["running", "running"]


def test_recover_removes_what_a_killed_run_left(docker_port: SdkDocker, busybox_image: str, state_dir: Path) -> None:
    """Helper containers and scratch volumes of a dead cargohold process are removed; live ones stay."""
    from cargohold.docker.helper import OWNER_LABEL, helper_labels

    tag = uuid.uuid4().hex[:8]
    dead = {**helper_labels("read"), OWNER_LABEL: f"{os.uname().nodename}:{2**22 + 4321}:1", "cargohold.test": "1"}
    live = {**helper_labels("read"), "cargohold.test": "1"}
    c_dead = docker_port.create_container(busybox_image, name=f"chtest-helper-dead-{tag}", labels=dead)
    c_live = docker_port.create_container(busybox_image, name=f"chtest-helper-live-{tag}", labels=live)
    docker_port.create_volume(
        f"chtest-scratch-dead-{tag}", labels={OWNER_LABEL: dead[OWNER_LABEL], "cargohold.test": "1"}
    )
    try:
        res = subprocess.run([*CLI, "recover", "--json"], capture_output=True, text=True, timeout=120)
        assert res.returncode == 0, res.stderr
        assert f"chtest-helper-dead-{tag}" in res.stdout and f"chtest-scratch-dead-{tag}" in res.stdout
        assert f"chtest-helper-live-{tag}" not in res.stdout
        names = {c.name for c in docker_port.list_containers(all=True)}
        assert f"chtest-helper-live-{tag}" in names and f"chtest-helper-dead-{tag}" not in names
    finally:
        for cid in (c_dead, c_live):
            with contextlib.suppress(CargoholdError):
                docker_port.remove_container(cid, force=True)
        with contextlib.suppress(CargoholdError):
            docker_port.remove_volume(f"chtest-scratch-dead-{tag}", force=True)
