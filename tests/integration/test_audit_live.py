"""`cargohold audit` against the real engine: each hazard is created for real, then reported."""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import subprocess
import sys
import time
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from cargohold.audit.findings import Finding, Severity
from cargohold.docker.sdk import SdkDocker
from cargohold.errors import CargoholdError
from cargohold.services import audit as svc
from cargohold.testbed.resources import Resources

CLI = [sys.executable, "-m", "cargohold.cli.app"]
LABELS = {"cargohold.test": "1"}


@pytest.fixture
def made(docker_port: SdkDocker, resources: Resources) -> Iterator[Callable[[str], str]]:
    """Track a container so it goes with its anonymous volumes (resources keeps those)."""
    names: list[str] = []
    yield names.append  # type: ignore[misc]
    for name in names:
        with contextlib.suppress(CargoholdError):
            docker_port.remove_container(name, force=True, volumes=True)


def _by(findings: list[Finding], rule: str, container: str) -> list[Finding]:
    return [f for f in findings if f.rule == rule and f.container == container]


def test_live_hazards_are_reported(
    docker_port: SdkDocker,
    resources: Resources,
    made: Callable[[str], str],
    busybox_image: str,
    postgres_image: str,
    redis_image: str,
    tmp_path: Path,
) -> None:
    tag = uuid.uuid4().hex[:8]
    # 1. a database whose image VOLUME becomes an anonymous volume (created is enough)
    pg = resources.container(postgres_image, prefix="audit-pg", labels=LABELS)
    made(pg)
    # 2. an unknown image with a VOLUME of its own
    api: Any = docker_port.api
    base = api.create_container(busybox_image, command=["true"], labels=LABELS)
    image = f"chtest-audit-volimg-{tag}"
    try:
        api.commit(base["Id"], repository=image, tag="1", changes=["VOLUME /var/lib/app"])
    finally:
        api.remove_container(base["Id"], force=True)
    try:
        app = resources.container(f"{image}:1", prefix="audit-app", command=["sleep", "600"], labels=LABELS)
        made(app)
        # 3. uploads written into the writable layer (2 MiB) of a running container
        writer = resources.run(
            busybox_image,
            prefix="audit-writer",
            command=["sh", "-c", "mkdir -p /srv/uploads && head -c 2097152 /dev/urandom > /srv/uploads/photo.jpg "
                     "&& echo x > /srv/uploads/note.txt && exec sleep 600"],
            labels=LABELS,
        )  # fmt: skip
        made(writer)
        # 4. redis with its data dir on a tmpfs
        rtmp = resources.container(
            redis_image, prefix="audit-redis", mounts=[{"Type": "tmpfs", "Target": "/data"}], labels=LABELS
        )
        made(rtmp)
        # 5. a bind mount whose source disappears under a running container
        src = tmp_path / "gone"
        src.mkdir()
        binder = resources.run(
            busybox_image,
            prefix="audit-bind",
            command=["sleep", "600"],
            mounts=[{"Type": "bind", "Source": str(src), "Target": "/srv/data"}],
            labels=LABELS,
        )
        made(binder)
        shutil.rmtree(src)
        # 6. the Docker socket handed to a container
        sock = "/var/run/docker.sock"
        sockc = None
        if os.path.exists(sock):
            sockc = resources.container(
                busybox_image,
                prefix="audit-sock",
                mounts=[{"Type": "bind", "Source": sock, "Target": sock}],
                labels=LABELS,
            )
            made(sockc)
        # 7. a dangling volume holding data
        dangling = resources.volume("audit-dangling")
        mountpoint = docker_port.inspect_volume(dangling).mountpoint
        Path(mountpoint, "left-behind.bin").write_bytes(b"x" * 8192)

        for _ in range(50):  # the writer has written once its file is complete
            res = docker_port.exec(writer, ["sh", "-c", "test -f /srv/uploads/note.txt"])
            if res.exit_code == 0:
                break
            time.sleep(0.1)

        report = svc.audit_live(docker_port)
        f = report.findings

        [pg_f] = _by(f, "stateful-data-anonymous-volume", pg)
        assert pg_f.severity is Severity.HIGH and pg_f.path == "/var/lib/postgresql/data" and pg_f.volume
        assert "cargohold adopt" in pg_f.fix
        [app_f] = _by(f, "anonymous-volume", app)
        assert app_f.path == "/var/lib/app"

        uploads = [x for x in _by(f, "writable-layer-data", writer) if x.path == "/srv/uploads"]
        assert len(uploads) == 1 and uploads[0].severity is Severity.HIGH
        assert uploads[0].size is not None and uploads[0].size >= 2 << 20

        [tmpfs_f] = _by(f, "tmpfs-data-path", rtmp)
        assert tmpfs_f.path == "/data" and tmpfs_f.severity is Severity.HIGH

        [bind_f] = _by(f, "bind-source-missing", binder)
        assert bind_f.path == "/srv/data" and str(src) in bind_f.message

        if sockc is not None:
            assert _by(f, "docker-socket-mounted", sockc)

        [dang] = [x for x in f if x.rule == "dangling-volume-data" and x.volume == dangling]
        assert dang.size == 8192 and dang.severity is Severity.HIGH  # API 1.41 prunes named volumes too

        assert [x for x in f if x.rule == "backups-unknown"]
    finally:
        api.remove_image(f"{image}:1", force=True)


def test_cli_live_json_and_exit_code(
    docker_port: SdkDocker, resources: Resources, made: Callable[[str], str], postgres_image: str
) -> None:
    pg = resources.container(postgres_image, prefix="audit-cli-pg", labels=LABELS)
    made(pg)
    res = subprocess.run([*CLI, "audit", "--json"], capture_output=True, text=True, check=False, timeout=120)
    assert res.returncode == 1, res.stderr
    doc = json.loads(res.stdout)
    mine = [x for x in doc["findings"] if x["container"] == pg]
    assert {x["rule"] for x in mine} >= {"stateful-data-anonymous-volume", "consistency-label-missing"}
    sarif = subprocess.run(
        [*CLI, "audit", "--sarif", "--fail-on", "none"], capture_output=True, text=True, check=False, timeout=120
    )
    assert sarif.returncode == 0, sarif.stderr
    assert json.loads(sarif.stdout)["runs"][0]["results"]


def test_files_with_live_show_drift_and_missing_external(
    docker_port: SdkDocker,
    resources: Resources,
    made: Callable[[str], str],
    busybox_image: str,
    tmp_path: Path,
) -> None:
    project = f"chtest-drift-{uuid.uuid4().hex[:8]}"
    compose = tmp_path / "compose.yaml"
    compose.write_text(
        f"name: {project}\n"
        "services:\n"
        "  app:\n"
        "    image: busybox\n"
        "    volumes:\n"
        "      - data:/srv/data\n"
        "      - ext:/srv/ext\n"
        "volumes:\n"
        "  data:\n"
        "  ext:\n"
        "    external: true\n"
        f"    name: {project}-missing\n"
    )
    # The running container was started from an older file: anonymous volume at /srv/data.
    c = resources.run(
        busybox_image,
        name=f"{project}-app-1",
        command=["sleep", "600"],
        mounts=[{"Type": "volume", "Target": "/srv/data"}],
        labels={**LABELS, "com.docker.compose.project": project, "com.docker.compose.service": "app"},
    )
    made(c)
    report = svc.audit_files([compose], docker=docker_port)
    assert report.source == "files+live"
    drift = [f for f in report.findings if f.rule == "drift-anonymous-instead-of-named"]
    assert len(drift) == 1 and drift[0].container == c and drift[0].path == "/srv/data" and drift[0].line == 6
    assert [f for f in report.findings if f.rule == "drift-volume-mismatch" and f.path == "/srv/ext"]
    assert [f for f in report.findings if f.rule == "external-volume-missing" and f.volume == f"{project}-missing"]
    offline = svc.audit_files([compose])
    assert not [f for f in offline.findings if f.rule.startswith("drift") or f.rule == "external-volume-missing"]
