"""Migration on the real engines: copy a volume to the second engine (then only the delta), move a
compose project there, restore a project under a new name, and bad input."""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path

import pytest

from cargohold.backends import MemoryBackend
from cargohold.docker.connect import Endpoint
from cargohold.docker.helper import ensure_helper_image, helper_container, volume_mount
from cargohold.docker.sdk import SdkDocker
from cargohold.errors import DockerConflict, EngineUnreachable, VolumeNotFound
from cargohold.repo.keys import KdfParams
from cargohold.repo.repository import Repository
from cargohold.repo.snapshot import Snapshot
from cargohold.repo.tar_writer import TarStats
from cargohold.services.docker_backup import BackupRequest, DockerBackup
from cargohold.services.docker_restore import VolumeRestoreRequest, restore_volume
from cargohold.services.docker_sources import Via, resolve
from cargohold.services.intents import IntentJournal
from cargohold.services.migrate import (
    CopyRequest,
    MoveRequest,
    ProjectRestoreRequest,
    copy_volume,
    move_project,
    restore_project,
)
from cargohold.services.volume_sync import (
    SyncState,
    _delete_api,
    check_volume,
    deletions_by_replacement,
    delta_tar,
    tree_delta,
)
from cargohold.testbed.resources import Resources

SERVICE = ["sh", "-c", "trap 'exit 0' TERM; sleep 600 & wait"]
FILL = (
    "mkdir -p /data/sub/deep && echo hello > /data/sub/f && head -c 3000000 /dev/urandom > /data/big"
    " && ln /data/sub/f /data/hard && ln -s sub/f /data/link && echo bye > /data/sub/deep/gone"
    " && chown -R 33:44 /data/sub && chmod 640 /data/sub/f && chmod 710 /data"
    " && touch -d '2020-02-03 04:05:06' /data/sub/f"
)
PROJECT_LABEL = "com.docker.compose.project"


@pytest.fixture
def repo() -> Repository:
    return Repository.init(MemoryBackend(), "pw", kdf=KdfParams.FAST)


@pytest.fixture
def journal(tmp_path: Path) -> IntentJournal:
    return IntentJournal(tmp_path / "intents")


@pytest.fixture
def synced(tmp_path: Path) -> SyncState:
    return SyncState(tmp_path / "synced.json")


def listing(docker: SdkDocker, volume: str, *, seconds: bool = False) -> str:
    """Type, mode, owner, size, links, link target, mtime and content of every entry (local engines)."""
    mp = docker.inspect_volume(volume).mountpoint
    out = subprocess.run(
        f"cd {mp} && find . -printf '%p %y %m %U %G %s %n %l %TY-%Tm-%Td %TH:%TM:%TS\\n' | sort"
        " && find . -type f -exec md5sum {} + | sort",
        shell=True,
        capture_output=True,
        text=True,
        check=True,
    ).stdout
    # a directory's own mtime is not what a copy is about when only seconds survive
    return re.sub(r"(\d\d:\d\d:\d\d)\.\d+", r"\1", out) if seconds else out


@pytest.mark.parametrize("via", [Via.DIRECT, Via.API])
def test_copy_to_second_engine_then_only_the_delta(
    docker_port: SdkDocker,
    resources: Resources,
    second_docker_port: SdkDocker,
    second_resources: Resources,
    second_engine_image: Callable[[str], str],
    busybox_image: str,
    repo: Repository,
    journal: IntentJournal,
    synced: SyncState,
    via: Via,
) -> None:
    second_engine_image("busybox")  # a shell image on the target, to delete through the API
    vol = resources.volume("mig", labels={"app": "shop", "tier": "db"})
    ctr = resources.run(busybox_image, command=SERVICE, volumes={vol: "/data"})
    assert docker_port.exec(ctr, ["sh", "-c", FILL]).exit_code == 0
    target = second_resources.track_volume(vol)
    req = CopyRequest(vol, via=via, journal=journal, state=synced)

    first = copy_volume(repo, docker_port, docker_port.endpoint, second_docker_port, second_docker_port.endpoint, req)
    [out] = first.volumes
    assert out.method == "full" and out.created and out.verified is True, out.problems
    made = second_docker_port.inspect_volume(target)
    src = docker_port.inspect_volume(vol)
    assert (made.labels, made.driver, made.options) == (src.labels, src.driver, src.options)
    exact = via is Via.DIRECT
    assert listing(second_docker_port, target, seconds=not exact) == listing(docker_port, vol, seconds=not exact)

    # one file changes, one is deleted, one changes mode: only that moves
    change = "echo changed > /data/sub/f2 && rm /data/sub/deep/gone && chmod 600 /data/big && echo x >> /data/sub/f"
    assert docker_port.exec(ctr, ["sh", "-c", change]).exit_code == 0
    second = copy_volume(repo, docker_port, docker_port.endpoint, second_docker_port, second_docker_port.endpoint, req)
    [out] = second.volumes
    assert out.method == "delta" and out.verified is True and out.deleted == 1, (out.method, out.problems)
    if via is Via.DIRECT:
        assert out.bytes < 100  # sub/f (+ its hard link) and sub/f2; big only changed its mode
    else:
        assert out.bytes < 3_100_000  # the archive API cannot change a file's mode without sending it
    assert second.added_bytes < 50_000
    assert listing(second_docker_port, target, seconds=not exact) == listing(docker_port, vol, seconds=not exact)

    # nothing changed: nothing written
    third = copy_volume(repo, docker_port, docker_port.endpoint, second_docker_port, second_docker_port.endpoint, req)
    assert third.volumes[0].method == "unchanged" and third.volumes[0].bytes == 0


def test_cut_over_with_stop_is_short_and_leaves_the_source_running(
    docker_port: SdkDocker,
    resources: Resources,
    second_docker_port: SdkDocker,
    second_resources: Resources,
    busybox_image: str,
    repo: Repository,
    journal: IntentJournal,
    synced: SyncState,
) -> None:
    vol = resources.volume("cut")
    ctr = resources.run(busybox_image, command=SERVICE, volumes={vol: "/data"})
    assert docker_port.exec(ctr, ["sh", "-c", "head -c 5000000 /dev/urandom > /data/bulk"]).exit_code == 0
    target = second_resources.track_volume(resources.name("cut-target"))
    req = CopyRequest(vol, to=target, journal=journal, state=synced)
    copy_volume(repo, docker_port, docker_port.endpoint, second_docker_port, second_docker_port.endpoint, req)
    assert docker_port.exec(ctr, ["sh", "-c", "echo last > /data/last"]).exit_code == 0
    req.stop = True
    final = copy_volume(repo, docker_port, docker_port.endpoint, second_docker_port, second_docker_port.endpoint, req)
    assert final.volumes[0].method == "delta" and final.volumes[0].bytes == 5
    assert 0 < final.downtime[ctr] < 15  # docker stop of a shell that traps TERM, plus the read
    assert docker_port.inspect_container(ctr).state == "running"
    assert journal.pending() == []
    assert Path(second_docker_port.inspect_volume(target).mountpoint, "last").read_text() == "last\n"


def test_target_changed_behind_cargoholds_back_is_refused(
    docker_port: SdkDocker,
    resources: Resources,
    second_docker_port: SdkDocker,
    second_resources: Resources,
    repo: Repository,
    journal: IntentJournal,
    synced: SyncState,
) -> None:
    vol = resources.volume("own")
    Path(docker_port.inspect_volume(vol).mountpoint, "a").write_text("1")
    target = second_resources.track_volume(resources.name("own-target"))
    req = CopyRequest(vol, to=target, journal=journal, state=synced)
    copy_volume(repo, docker_port, docker_port.endpoint, second_docker_port, second_docker_port.endpoint, req)
    Path(second_docker_port.inspect_volume(target).mountpoint, "written-on-target").write_text("new data")
    with pytest.raises(DockerConflict, match="changed since cargohold copied"):
        copy_volume(repo, docker_port, docker_port.endpoint, second_docker_port, second_docker_port.endpoint, req)
    assert Path(second_docker_port.inspect_volume(target).mountpoint, "written-on-target").exists()
    req.force = True
    forced = copy_volume(repo, docker_port, docker_port.endpoint, second_docker_port, second_docker_port.endpoint, req)
    assert forced.volumes[0].method == "full" and forced.volumes[0].safety_snapshot is not None
    assert not Path(second_docker_port.inspect_volume(target).mountpoint, "written-on-target").exists()


def test_bad_input_leaves_nothing_behind(
    docker_port: SdkDocker,
    resources: Resources,
    second_docker_port: SdkDocker,
    repo: Repository,
    journal: IntentJournal,
    synced: SyncState,
    tmp_path: Path,
) -> None:
    ghost = "chtest-no-such-volume-mig"
    with pytest.raises(VolumeNotFound):
        copy_volume(
            repo,
            docker_port,
            docker_port.endpoint,
            second_docker_port,
            second_docker_port.endpoint,
            CopyRequest(ghost, journal=journal, state=synced),
        )
    vol = resources.volume("unreach")
    nowhere = SdkDocker(Endpoint(f"unix://{tmp_path}/no-engine.sock", "test"))
    with pytest.raises(EngineUnreachable):
        copy_volume(
            repo, docker_port, docker_port.endpoint, nowhere, nowhere.endpoint, CopyRequest(vol, journal=journal)
        )
    assert repo.list_snapshot_ids() == []  # failed before anything was read
    with pytest.raises(VolumeNotFound):
        second_docker_port.inspect_volume(ghost)


def test_driver_options_are_kept_and_a_non_empty_device_is_not_overwritten(
    docker_port: SdkDocker,
    resources: Resources,
    second_docker_port: SdkDocker,
    repo: Repository,
    journal: IntentJournal,
    synced: SyncState,
    tmp_path: Path,
) -> None:
    """Both test engines run on this machine: the copy's options name the source's directory,
    which holds data — the copy refuses and removes the volume it made."""
    device = tmp_path / "device"
    device.mkdir()
    (device / "x").write_text("on the device")
    opts = {"type": "none", "o": "bind", "device": str(device)}
    vol = resources.volume("devopts", options=opts)
    target = resources.name("devopts-target")
    with pytest.raises(DockerConflict, match="not empty"):
        copy_volume(
            repo,
            docker_port,
            docker_port.endpoint,
            second_docker_port,
            second_docker_port.endpoint,
            CopyRequest(vol, to=target, journal=journal, state=synced),
        )
    with pytest.raises(VolumeNotFound):
        second_docker_port.inspect_volume(target)
    assert (device / "x").read_text() == "on the device"
    [snap] = repo.snapshots()
    assert snap.source.meta["volume"]["options"] == opts


def _project(docker: SdkDocker, res: Resources, image: str, project: str) -> tuple[str, str, str]:
    """A compose-style project: service db with the named volume PROJECT_data, service cache with an
    anonymous volume on /cache. Returns (named volume, db container, cache container)."""
    labels = {PROJECT_LABEL: project, "com.docker.compose.volume": "data"}
    data = res.volume(name=f"{project}_data", labels=labels)
    db = res.run(
        image,
        command=SERVICE,
        volumes={data: "/data"},
        labels={PROJECT_LABEL: project, "com.docker.compose.service": "db"},
    )
    cache = res.run(
        image,
        command=SERVICE,
        mounts=[{"Type": "volume", "Target": "/cache"}],
        labels={PROJECT_LABEL: project, "com.docker.compose.service": "cache"},
    )
    assert docker.exec(db, ["sh", "-c", "echo rows > /data/table && mkdir /data/wal"]).exit_code == 0
    assert docker.exec(cache, ["sh", "-c", "echo warm > /cache/entry"]).exit_code == 0
    return data, db, cache


def _anonymous_of(docker: SdkDocker, container: str) -> str:
    [mount] = [m for m in docker.inspect_container(container).mounts if m.destination == "/cache"]
    return mount.name


def test_project_restore_under_a_new_name(
    docker_port: SdkDocker,
    resources: Resources,
    busybox_image: str,
    repo: Repository,
    journal: IntentJournal,
) -> None:
    project = resources.name("proj")
    data, _db, cache = _project(docker_port, resources, busybox_image, project)
    anon = resources.track_volume(_anonymous_of(docker_port, cache))
    run = DockerBackup(repo, docker_port, docker_port.endpoint, BackupRequest(journal=journal)).run(
        resolve(docker_port, project=project)
    )
    assert not run.failed
    new = resources.name("proj-new")
    resources.track_volume(f"{new}_data")
    resources.track_volume(f"{new}_anon-cache-1")
    # a target that holds data stops the whole restore before anything is written
    squatter = resources.volume(name=f"{new}_anon-cache-1")
    Path(docker_port.inspect_volume(squatter).mountpoint, "mine").write_text("keep")
    with pytest.raises(DockerConflict, match="not empty"):
        restore_project(repo, docker_port, docker_port.endpoint, ProjectRestoreRequest(project, new_name=new))
    with pytest.raises(VolumeNotFound):
        docker_port.inspect_volume(f"{new}_data")
    docker_port.remove_volume(squatter)

    report = restore_project(
        repo, docker_port, docker_port.endpoint, ProjectRestoreRequest(project, new_name=new, journal=journal)
    )
    assert report.run_id == run.run_id
    assert {p.source: p.target for p, _ in report.volumes} == {data: f"{new}_data", anon: f"{new}_anon-cache-1"}
    named = docker_port.inspect_volume(f"{new}_data")
    assert named.labels[PROJECT_LABEL] == new and named.labels["com.docker.compose.volume"] == "data"
    assert Path(named.mountpoint, "table").read_text() == "rows\n"
    cached = docker_port.inspect_volume(f"{new}_anon-cache-1")
    assert cached.labels[PROJECT_LABEL] == new and cached.labels["com.docker.compose.volume"] == "anon-cache-1"
    assert Path(cached.mountpoint, "entry").read_text() == "warm\n"
    assert any("anon-cache-1:/cache" in line for line in report.compose_changes)
    assert f"docker compose -p {new} up -d" in report.compose_changes[-1]


def test_project_move_to_the_second_engine(
    docker_port: SdkDocker,
    resources: Resources,
    second_docker_port: SdkDocker,
    second_resources: Resources,
    busybox_image: str,
    repo: Repository,
    journal: IntentJournal,
    synced: SyncState,
) -> None:
    project = resources.name("mv")
    data, db, cache = _project(docker_port, resources, busybox_image, project)
    resources.track_volume(_anonymous_of(docker_port, cache))
    new = resources.name("mv-new")
    for key in ("data", "anon-cache-1"):
        second_resources.track_volume(f"{new}_{key}")
    req = MoveRequest(project, new_name=new, journal=journal, state=synced)
    first = move_project(repo, docker_port, docker_port.endpoint, second_docker_port, second_docker_port.endpoint, req)
    assert sorted(v.volume for v in first.volumes) == [f"{new}_anon-cache-1", f"{new}_data"]
    assert all(v.method == "full" and v.verified for v in first.volumes)
    moved = second_docker_port.inspect_volume(f"{new}_data")
    assert moved.labels[PROJECT_LABEL] == new
    assert listing(second_docker_port, f"{new}_data") == listing(docker_port, data)

    assert docker_port.exec(db, ["sh", "-c", "echo more >> /data/table"]).exit_code == 0
    req.stop = True
    final = move_project(repo, docker_port, docker_port.endpoint, second_docker_port, second_docker_port.endpoint, req)
    by_name = {v.volume: v for v in final.volumes}
    assert by_name[f"{new}_data"].method == "delta" and by_name[f"{new}_data"].bytes == len("rows\nmore\n")
    assert by_name[f"{new}_anon-cache-1"].method == "unchanged"
    assert set(final.downtime) == {db, cache}
    assert docker_port.inspect_container(db).state == "running"
    assert listing(second_docker_port, f"{new}_data") == listing(docker_port, data)

    # the first move's run, restored onto the second engine under a third name
    third = resources.name("mv-third")
    for key in ("data", "anon-cache-1"):
        second_resources.track_volume(f"{third}_{key}")
    restored = restore_project(
        repo,
        second_docker_port,
        second_docker_port.endpoint,
        ProjectRestoreRequest(project, new_name=third, run_id=first.run_id[:6], journal=journal),
    )
    assert restored.run_id == first.run_id and len(restored.volumes) == 2
    assert Path(second_docker_port.inspect_volume(f"{third}_data").mountpoint, "table").read_text() == "rows\n"


def test_cli_errors_are_one_line(tmp_path: Path, resources: Resources) -> None:
    env = {
        **os.environ,
        "CARGOHOLD_REPO": str(tmp_path / "repo"),
        "CARGOHOLD_PASSWORD": "pw",
        "CARGOHOLD_KDF": "fast",
        "CARGOHOLD_STATE_DIR": str(tmp_path / "state"),
    }
    cli = [sys.executable, "-m", "cargohold.cli.app"]
    subprocess.run([*cli, "init"], env=env, check=True, capture_output=True)
    vol = resources.volume("cli-mig")
    cases = [
        (["copy", "chtest-no-such-volume-cli", "--to-engine", f"unix://{tmp_path}/x.sock"], 3),
        (["copy", vol, "--to-engine", f"unix://{tmp_path}/x.sock"], 3),
        (["copy", vol, "--to-engine", "nonsense"], 2),
        (["project", "restore", "chtest-no-such-project"], 5),
    ]
    for args, code in cases:
        res = subprocess.run([*cli, *args], env=env, capture_output=True, text=True, timeout=120)
        assert res.returncode == code, (args, res.stdout, res.stderr)
        assert len(res.stderr.strip().splitlines()) == 1 and res.stderr.startswith("cargohold: error:"), res.stderr


def test_cli_copy_twice_moves_only_the_change(
    tmp_path: Path,
    docker_port: SdkDocker,
    resources: Resources,
    second_engine: str,
    second_docker_port: SdkDocker,
    second_resources: Resources,
) -> None:
    env = {
        **os.environ,
        "CARGOHOLD_REPO": str(tmp_path / "repo"),
        "CARGOHOLD_PASSWORD": "pw",
        "CARGOHOLD_KDF": "fast",
        "CARGOHOLD_STATE_DIR": str(tmp_path / "state"),
    }
    cli = [sys.executable, "-m", "cargohold.cli.app"]
    subprocess.run([*cli, "init"], env=env, check=True, capture_output=True)
    vol = resources.volume("cli-copy", labels={"team": "a"})
    mp = Path(docker_port.inspect_volume(vol).mountpoint)
    (mp / "a").write_bytes(os.urandom(200_000))
    (mp / "b").write_text("small")
    target = second_resources.track_volume(resources.name("cli-copy-target"))

    def copy(*extra: str) -> dict[str, object]:
        res = subprocess.run(
            [*cli, "copy", vol, "--to-engine", second_engine, "--as", target, "--json", *extra],
            env=env,
            capture_output=True,
            text=True,
            timeout=300,
        )
        assert res.returncode == 0, res.stderr
        return dict(json.loads(res.stdout))

    first = copy()
    [v] = first["volumes"]  # type: ignore[misc]
    assert v["method"] == "full" and v["verified"] is True and v["bytes_written"] == 200_005
    assert second_docker_port.inspect_volume(target).labels == docker_port.inspect_volume(vol).labels
    (mp / "b").write_text("changed")
    second = copy("--stop")
    [v] = second["volumes"]  # type: ignore[misc]
    assert v["method"] == "delta" and v["bytes_written"] == len("changed") and second["written_bytes"] == 7
    table = subprocess.run(
        [*cli, "copy", vol, "--to-engine", second_engine, "--as", target],
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert table.returncode == 0 and "unchanged" in table.stdout and "identical" in table.stdout, table.stdout
    print(table.stdout)


def test_archive_api_deletes_by_replacing_the_directory(
    docker_port: SdkDocker, resources: Resources, repo: Repository, journal: IntentJournal
) -> None:
    """With no image that has a shell, deletions below the root go as 'file, then directory' entries."""
    source = resources.volume("replace-src")
    src = Path(docker_port.inspect_volume(source).mountpoint)
    (src / "up" / "a").mkdir(parents=True)
    (src / "up" / "a" / "old.bin").write_bytes(os.urandom(10_000))
    (src / "up" / "a" / "keep.txt").write_text("keep")
    (src / "up" / "b").mkdir()
    (src / "up" / "b" / "other").write_text("untouched")
    (src / "top.txt").write_text("top")

    def backup() -> Snapshot:
        run = DockerBackup(repo, docker_port, docker_port.endpoint, BackupRequest(journal=journal))
        snap = run.run(resolve(docker_port, volumes=[source])).results[0].snapshot
        assert snap is not None
        return snap

    old = backup()
    (src / "up" / "a" / "old.bin").unlink()
    (src / "up" / "a" / "new.txt").write_text("new")
    new = backup()
    vol = resources.track_volume(resources.name("replace"))
    restore_volume(
        repo, docker_port, docker_port.endpoint, old, VolumeRestoreRequest(to=vol, via=Via.API, journal=journal)
    )
    delta = tree_delta(repo, old, new)
    assert delta.delete == ["up/a/old.bin"] and deletions_by_replacement(repo, new, delta)
    assert delta.replace == {"up/a"} and delta.delete == []
    stats = TarStats()
    with helper_container(docker_port, [volume_mount(vol)], purpose="test") as cid:
        docker_port.put_archive(cid, "/", delta_tar(repo, new, delta, prefix="volume", stats=stats))
    assert stats.files == 2  # up/a sent whole: keep.txt and new.txt; up/b and top.txt not
    volume = docker_port.inspect_volume(vol)
    assert check_volume(repo, docker_port, volume, new, direct=None, exact=False).problems == []


def test_archive_api_deletes_with_rm_from_an_image_with_a_shell(
    docker_port: SdkDocker, resources: Resources, busybox_image: str
) -> None:
    vol = resources.volume("rm")
    root = Path(docker_port.inspect_volume(vol).mountpoint)
    (root / "d").mkdir()
    for name in ("-rf", "a b", "keep"):
        (root / "d" / name).write_text(name)
    helper = ensure_helper_image(docker_port)  # no shell in it: skipped
    assert not _delete_api(docker_port, vol, ["d/-rf", "d/a b"], [helper])
    assert _delete_api(docker_port, vol, ["d/-rf", "d/a b"], [helper, busybox_image])
    assert sorted(os.listdir(root / "d")) == ["keep"]


def test_cli_project_restore_under_a_new_name(
    tmp_path: Path, docker_port: SdkDocker, resources: Resources, busybox_image: str
) -> None:
    env = {
        **os.environ,
        "CARGOHOLD_REPO": str(tmp_path / "repo"),
        "CARGOHOLD_PASSWORD": "pw",
        "CARGOHOLD_KDF": "fast",
        "CARGOHOLD_STATE_DIR": str(tmp_path / "state"),
    }
    cli = [sys.executable, "-m", "cargohold.cli.app"]
    subprocess.run([*cli, "init"], env=env, check=True, capture_output=True)
    project = resources.name("cliproj")
    _data, _db, cache = _project(docker_port, resources, busybox_image, project)
    resources.track_volume(_anonymous_of(docker_port, cache))
    backup = subprocess.run([*cli, "backup", "--project", project], env=env, capture_output=True, text=True)
    assert backup.returncode == 0, backup.stderr
    new = resources.name("cliproj-new")
    for key in ("data", "anon-cache-1"):
        resources.track_volume(f"{new}_{key}")
    res = subprocess.run(
        [*cli, "project", "restore", project, "--as", new], env=env, capture_output=True, text=True, timeout=300
    )
    assert res.returncode == 0, res.stderr
    assert f"restored project {project} as {new}" in res.stdout and "compose file changes:" in res.stdout
    assert Path(docker_port.inspect_volume(f"{new}_data").mountpoint, "table").read_text() == "rows\n"
    again = subprocess.run(
        [*cli, "project", "restore", project, "--as", new], env=env, capture_output=True, text=True, timeout=300
    )
    assert again.returncode == 10 and "not empty" in again.stderr and len(again.stderr.splitlines()) == 1
    print(res.stdout)
