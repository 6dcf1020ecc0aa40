"""Restore a volume (or bind mount) snapshot into a Docker volume, on this or another engine.

* The target volume is created when missing — with the snapshot's driver, driver options and
  labels — and gets the snapshot root's owner and mode; an existing empty volume is filled;
  a non-empty one is replaced only with ``force``, after a safety snapshot of what it held.
* Containers that use the target are stopped for the restore and started again in their
  original order when ``restart_containers`` is given (the intent journal guarantees it even
  if cargohold is killed); otherwise the restore refuses while one of them runs.
* Data is written directly into the mountpoint when the engine is local and it is writable,
  otherwise as a tar through the Engine archive API into a never-started helper container
  (a tar cannot carry unix sockets: each one left out is named in a warning).
* ``from_dump``: instead of the files, the snapshot's application dump is loaded into the
  volume by a fresh container of the recorded image (:mod:`cargohold.services.dump_restore`);
  SQLite copies replace the database files of the restored files.
* A restore that fails (a dump that does not load, a repository that became unreachable, an
  interrupt) removes the volume it created, so it can simply be run again.
"""

from __future__ import annotations

import os
import shutil
import tarfile
from collections.abc import Sequence
from contextlib import suppress
from dataclasses import dataclass, field
from typing import Any

from cargohold.docker.connect import Endpoint
from cargohold.docker.helper import helper_container, helper_labels
from cargohold.docker.port import DockerPort
from cargohold.errors import (
    CargoholdError,
    ConsistencyError,
    DockerConflict,
    DockerNotFound,
    UsageError,
    VolumeNotFound,
)
from cargohold.model.consistency import Decision, DumpKind, Mode
from cargohold.model.engine import EngineInfo, VolumeInfo
from cargohold.repo.progress import NullProgress, Progress
from cargohold.repo.repository import Repository
from cargohold.repo.restorer import RestoreOptions, Restorer
from cargohold.repo.snapshot import Snapshot
from cargohold.repo.tar_writer import TarStats, snapshot_tar
from cargohold.services.docker_backup import HELPER_MOUNT, BackupRequest, DockerBackup
from cargohold.services.docker_sources import (
    ACTIVE_STATES,
    SourceKind,
    StateSource,
    User,
    Via,
    choose_via,
    volume_users,
)
from cargohold.services.dump_restore import DumpPlan, LoadOutcome, load_server_dump, replace_sqlite
from cargohold.services.dump_restore import plan as plan_dump
from cargohold.services.intents import IntentJournal
from cargohold.services.quiesce import Participant, Quiescer
from cargohold.services.repository import locks_of
from cargohold.streams import open_stream

RESTORABLE_KINDS = ("volume", "bind")


@dataclass
class VolumeRestoreRequest:
    to: str
    path: str | None = None
    force: bool = False
    restart_containers: bool = False
    via: Via = Via.AUTO
    progress: Progress = field(default_factory=NullProgress)
    journal: IntentJournal = field(default_factory=IntentJournal)
    #: Load the application dump instead of the files: "" = the snapshot's only dumped
    #: container, or a container name; None = restore the files.
    from_dump: str | None = None


@dataclass
class VolumeRestoreReport:
    snapshot: Snapshot
    volume: str
    created: bool
    via: Via
    files: int = 0
    bytes: int = 0
    safety_snapshot: str | None = None
    restarted: list[str] = field(default_factory=list)
    downtime: dict[str, float] = field(default_factory=dict)
    warnings: list[str] = field(default_factory=list)
    damaged: dict[str, str] = field(default_factory=dict)
    #: With from_dump: what was loaded and what the sanity query found.
    dump: LoadOutcome | None = None


def check_restorable(snapshot: Snapshot) -> dict[str, Any]:
    """The snapshot's metadata, if it is of a volume or bind mount."""
    if snapshot.source.kind not in RESTORABLE_KINDS:
        raise UsageError(
            f"snapshot {snapshot.short_id} is a backup of a {snapshot.source.kind} ({snapshot.source.name}), "
            "not of a volume",
            hint=f"restore it into a directory with `cargohold restore {snapshot.short_id} --target DIR`",
        )
    return dict(snapshot.source.meta)


def _create_volume(docker: DockerPort, name: str, meta: dict[str, Any]) -> VolumeInfo:
    vol = meta.get("volume") or {}
    return docker.create_volume(
        name,
        driver=str(vol.get("driver") or "local"),
        options={str(k): str(v) for k, v in (vol.get("options") or {}).items()},
        labels={str(k): str(v) for k, v in (vol.get("labels") or {}).items()},
    )


def volume_is_empty(docker: DockerPort, volume: VolumeInfo, direct: str | None) -> bool:
    if direct is not None:
        return not os.listdir(direct)
    mount = {"Type": "volume", "Source": volume.name, "Target": HELPER_MOUNT, "ReadOnly": True}
    with (
        helper_container(docker, [mount], purpose="peek") as cid,
        open_stream(docker.get_archive(cid, f"{HELPER_MOUNT}/.")) as stream,
        tarfile.open(fileobj=stream, mode="r|") as tar,
    ):
        return all(member.name in (".", "./") for member in tar)


def _clear(docker: DockerPort, volume: VolumeInfo, direct: str | None, users: Sequence[User]) -> VolumeInfo:
    """Remove everything inside the volume; return the volume (recreated, when it was)."""
    if direct is not None:
        for entry in os.scandir(direct):
            if entry.is_dir(follow_symlinks=False):
                shutil.rmtree(entry.path)
            else:
                os.unlink(entry.path)
        return volume
    if not users:
        # No container refers to it: recreate it under the same name, driver, options and labels.
        docker.remove_volume(volume.name)
        return docker.create_volume(volume.name, driver=volume.driver, options=volume.options, labels=volume.labels)
    # The archive API cannot delete: run `rm` from the image of a container that
    # uses the volume (stopped for the restore), which has a shell as nearly all images do.
    image = users[0].container.image_id
    cid = docker.create_container(
        image,
        # every entry, hidden ones too; globs that match nothing stay literal and rm -f skips them
        entrypoint=["sh", "-c", f"cd {HELPER_MOUNT} && rm -rf -- ..?* .[!.]* *"],
        command=[],
        mounts=[{"Type": "volume", "Source": volume.name, "Target": HELPER_MOUNT}],
        labels=helper_labels("clear"),
        network_mode="none",
        user="0",
    )
    try:
        docker.start(cid)
        code = docker.wait(cid, timeout=600)
        if code != 0:
            raise ConsistencyError(
                f"emptying volume {volume.name!r} with image {users[0].container.image} failed "
                f"(exit {code}): {docker.logs(cid, tail=5).strip()}",
                hint="restore into a new volume instead",
            )
    finally:
        docker.remove_container(cid, force=True)
    return volume


def restore_volume(
    repo: Repository,
    docker: DockerPort,
    endpoint: Endpoint,
    snapshot: Snapshot,
    req: VolumeRestoreRequest,
) -> VolumeRestoreReport:
    meta = check_restorable(snapshot)
    dump_plan = None
    if req.from_dump is not None:
        if req.path:
            raise UsageError("--from-dump loads a whole dump: --path cannot be used with it")
        # every check (dumps, container, image on this engine) before anything is created
        dump_plan = plan_dump(docker, snapshot, req.from_dump or None)
    engine = docker.engine_info()
    created = False
    try:
        volume = docker.inspect_volume(req.to)
    except VolumeNotFound:
        volume = _create_volume(docker, req.to, meta)
        created = True
    try:
        return _restore_into(repo, docker, endpoint, snapshot, req, volume, created, engine, dump_plan)
    except BaseException as err:
        if not created:
            raise
        # Nothing half-done: a volume this restore created goes again when the restore fails (a
        # repository that became unreachable, an interrupt, a dump that does not load), so the
        # same command can simply be run again — no --force, no safety snapshot of half a restore.
        with suppress(DockerNotFound, DockerConflict):
            docker.remove_volume(req.to)
        if isinstance(err, CargoholdError):
            err.message += f" (volume {req.to!r}, created for this restore, was removed)"
        raise


def _restore_into(
    repo: Repository,
    docker: DockerPort,
    endpoint: Endpoint,
    snapshot: Snapshot,
    req: VolumeRestoreRequest,
    volume: VolumeInfo,
    created: bool,
    engine: EngineInfo,
    dump_plan: DumpPlan | None,
) -> VolumeRestoreReport:
    users = volume_users(docker, volume.name)
    running = [u for u in users if u.container.state in ACTIVE_STATES]
    if running and not req.restart_containers:
        names = ", ".join(sorted({u.container.name for u in running}))
        raise DockerConflict(
            f"volume {volume.name!r} is used by running container(s) {names}",
            hint="stop them, or pass --restart-containers to stop and restart them around the restore",
        )
    source = StateSource(SourceKind.VOLUME, volume.name, volume, tuple(users))
    via, direct, _why = choose_via(engine, source, req.via)
    if direct is not None and not os.access(direct, os.W_OK):
        if req.via is Via.DIRECT:
            raise UsageError(f"--via direct: {direct} is not writable by this user", hint="use --via api")
        via, direct = Via.API, None
    report = VolumeRestoreReport(snapshot, volume.name, created, via)
    held = {u.container.id: u.container for u in running}  # a container mounting it twice is held once
    participants = [Participant(c, Decision(Mode.STOP, None, None, None, "restore")) for c in held.values()]
    quiescer = Quiescer(docker, req.journal, endpoint=endpoint, engine_id=engine.id)
    # A new volume is empty, unless its options bind it to a device or directory that has data.
    check_empty = not created or bool({"device", "type"} & set(volume.options))
    with quiescer.hold(participants, purpose=f"restore into volume {volume.name}", mode=Mode.STOP) as window:
        if check_empty and not volume_is_empty(docker, volume, direct):
            if not req.force:
                raise DockerConflict(
                    f"volume {volume.name!r} is not empty",
                    hint="restore into a new volume, or pass --force to replace its contents "
                    "(a safety snapshot of them is taken first)",
                )
            safety = DockerBackup(
                repo,
                docker,
                endpoint,
                BackupRequest(via=via, files_only=True, tags=["safety"], journal=req.journal),
            ).run([source])
            failed = safety.failed
            if failed:
                raise ConsistencyError(
                    f"safety snapshot of volume {volume.name!r} failed: {failed[0].error}",
                    hint="nothing was changed; fix the cause or restore into another volume",
                )
            first = safety.results[0].snapshot
            report.safety_snapshot = first.id if first is not None else None
            try:
                volume = _clear(docker, volume, direct, users)
            except CargoholdError as err:
                err.message += f" (its contents were saved first in snapshot {(report.safety_snapshot or '')[:8]})"
                raise
        with locks_of(repo).shared(f"restore into volume {volume.name}"):
            repo.load_index()
            if dump_plan is not None and dump_plan.kind is not DumpKind.SQLITE:
                report.dump = _load(repo, docker, dump_plan, volume, report)
            elif direct is not None:
                opts = RestoreOptions(include=[req.path] if req.path else [], progress=req.progress)
                result = Restorer(repo, opts).run(snapshot, direct)
                report.files, report.bytes = result.files, result.bytes
                report.warnings += result.warnings
                report.damaged = dict(result.damaged)
            else:
                stats = TarStats()
                mount = {"Type": "volume", "Source": volume.name, "Target": HELPER_MOUNT, "ReadOnly": False}
                with helper_container(docker, [mount], purpose=f"restore {volume.name}") as cid:
                    # Entries named "volume/…" extracted at "/": the engine applies the root entry's
                    # owner and mode to the mount point (it ignores a "." entry).
                    prefix = HELPER_MOUNT.lstrip("/")
                    tar = snapshot_tar(repo, snapshot, prefix=prefix, include=req.path, stats=stats)
                    docker.put_archive(cid, "/", tar)
                report.files, report.bytes = stats.files, stats.bytes
                report.warnings += stats.warnings(prefix)
            if dump_plan is not None and dump_plan.kind is DumpKind.SQLITE:
                report.dump = _load(repo, docker, dump_plan, volume, report)
    report.downtime = dict(window.downtime)
    report.restarted = [p.container.name for p in participants]
    report.warnings += window.warnings
    return report


def _load(
    repo: Repository, docker: DockerPort, dump_plan: DumpPlan, volume: VolumeInfo, report: VolumeRestoreReport
) -> LoadOutcome:
    """Load the dump (a volume this restore created is removed by the caller when that fails)."""
    try:
        if dump_plan.kind is DumpKind.SQLITE:
            outcome = replace_sqlite(repo, docker, dump_plan, volume.name)
        else:
            outcome = load_server_dump(repo, docker, dump_plan, volume.name)
            report.bytes = sum(d.size for d in dump_plan.dumps)
    except CargoholdError as err:
        if report.safety_snapshot:
            err.message += f" (what volume {volume.name!r} held is in snapshot {report.safety_snapshot[:8]})"
        raise
    report.warnings += outcome.warnings
    return outcome
