"""A unix socket on a volume: recreated by a restore into the mountpoint, named in a warning by a
restore through the archive API (a tar cannot hold one), and no difference for verify either way."""

from __future__ import annotations

import os
import socket
import stat
from pathlib import Path

import pytest

from cargohold.backends import MemoryBackend
from cargohold.docker.sdk import SdkDocker
from cargohold.repo.keys import KdfParams
from cargohold.repo.repository import Repository
from cargohold.services.docker_backup import BackupRequest, DockerBackup
from cargohold.services.docker_restore import VolumeRestoreRequest, restore_volume
from cargohold.services.docker_sources import Via, resolve
from cargohold.services.intents import IntentJournal
from cargohold.services.verify import VerifyRequest, verify
from cargohold.testbed.resources import Resources


def test_a_socket_on_a_volume_is_restored_or_named(
    docker_port: SdkDocker, resources: Resources, tmp_path: Path
) -> None:
    if not docker_port.engine_info().local:
        pytest.skip("needs a local engine: the socket is made in the volume's mountpoint")
    repo = Repository.init(MemoryBackend(), "pw", kdf=KdfParams.FAST)
    journal = IntentJournal(tmp_path / "intents")
    vol = resources.volume("sockets")
    mp = Path(docker_port.inspect_volume(vol).mountpoint)
    (mp / "run").mkdir()
    (mp / "data.txt").write_text("data\n")
    s = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    s.bind(str(mp / "run" / "server.sock"))
    s.close()
    os.chmod(mp / "run" / "server.sock", 0o660)

    report = DockerBackup(repo, docker_port, docker_port.endpoint, BackupRequest(via=Via.DIRECT, journal=journal)).run(
        resolve(docker_port, volumes=[vol])
    )
    assert not report.failed
    snap = report.results[0].snapshot
    assert snap is not None

    direct = resources.track_volume(resources.name("sockets-direct"))
    out = restore_volume(
        repo, docker_port, docker_port.endpoint, snap, VolumeRestoreRequest(to=direct, via=Via.DIRECT, journal=journal)
    )
    assert out.warnings == []
    st = os.lstat(Path(docker_port.inspect_volume(direct).mountpoint, "run", "server.sock"))
    assert stat.S_ISSOCK(st.st_mode) and stat.S_IMODE(st.st_mode) == 0o660

    api = resources.track_volume(resources.name("sockets-api"))
    out = restore_volume(
        repo, docker_port, docker_port.endpoint, snap, VolumeRestoreRequest(to=api, via=Via.API, journal=journal)
    )
    assert out.warnings == [
        "run/server.sock: a unix socket, not restored: a tar cannot carry it (its server recreates it when it starts)"
    ]
    assert not os.path.lexists(Path(docker_port.inspect_volume(api).mountpoint, "run", "server.sock"))

    for via in (Via.DIRECT, Via.API):
        record = verify(
            repo,
            snap,
            docker=docker_port,
            endpoint=docker_port.endpoint,
            request=VerifyRequest(via=via, journal=journal),
        )
        assert record.ok, (via, record.problems)
