"""Move volumes between engines, and restore a compose project as a unit.

Everything goes through the repository: the source is backed up (deduplicated, so a repeat
adds only what changed), then the snapshot is written into the target volume.

* :func:`copy_volume` and :func:`move_project` are backup, then
  :func:`~cargohold.services.volume_sync.sync_volume` (which writes only the difference from
  what it put into the target before); with ``stop`` the source's
  containers are stopped while their volumes are read (the quiescer always starts them
  again), so the final, consistent pass of a cut-over reads only what changed.
* :func:`restore_project` restores every volume of one backup run of a compose project,
  optionally under a new project name.

Renaming (``--as NEW``), the same rule for restore and move: ``OLD_key`` becomes ``NEW_key``
(what compose names it under ``-p NEW``) and ``com.docker.compose.project`` is rewritten.
An anonymous volume becomes the named volume ``NEW_anon-<service>-<n>`` (n counts the
service's anonymous volumes in the order of their mount paths), labelled as compose labels
its named volumes, because an anonymous volume cannot be found again by a new container.
Any other volume (external, or named with ``name:``) becomes ``NEW_<name>`` when the
project is renamed. :func:`compose_changes` says what to change in the compose file.
The source data is only ever read.
"""

from __future__ import annotations

import contextlib
import re
from collections import defaultdict
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from cargohold.docker.connect import Endpoint
from cargohold.docker.port import DockerPort
from cargohold.errors import (
    CargoholdError,
    ConsistencyError,
    DockerConflict,
    SnapshotNotFound,
    UsageError,
    VolumeNotFound,
)
from cargohold.model.consistency import Mode
from cargohold.model.engine import EngineInfo
from cargohold.model.inventory import ANONYMOUS_LABEL, COMPOSE_PROJECT, COMPOSE_VOLUME, VolumeKind, volume_kind
from cargohold.repo.progress import NullProgress, Progress
from cargohold.repo.repository import Repository
from cargohold.repo.snapshot import Snapshot
from cargohold.services.docker_backup import BackupRequest, DockerBackup, RunReport
from cargohold.services.docker_restore import (
    VolumeRestoreReport,
    VolumeRestoreRequest,
    restore_volume,
    volume_is_empty,
)
from cargohold.services.docker_sources import (
    SourceKind,
    StateSource,
    Via,
    choose_via,
    container_meta,
    resolve,
    running_names,
    volume_users,
)
from cargohold.services.intents import IntentJournal
from cargohold.services.repository import locks_of
from cargohold.services.volume_sync import (
    SyncRequest,
    SyncResult,
    SyncState,
    create_like,
    preflight,
    sync_volume,
)

#: Snapshots a forced restore takes of what it replaces: never a project's backup run.
SAFETY_TAG = "safety"
#: Runs of ``copy`` (one volume): not a backup of the whole project.
COPY_TAG = "copy"
#: Runs of ``project move``.
MOVE_TAG = "move"


# --- naming ---------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class VolumePlan:
    """Where one volume of a project goes, and under which labels."""

    source: str
    target: str
    labels: dict[str, str]
    anonymous: bool
    #: The compose file names this volume itself (external / ``name:``): it must change.
    named_in_compose: bool
    service: str | None = None
    mount_path: str | None = None
    #: Key under the compose file's top-level ``volumes:`` (anonymous volumes: the new key).
    compose_key: str | None = None

    @property
    def renamed(self) -> bool:
        return self.source != self.target


def _first_user(containers: Sequence[Mapping[str, Any]]) -> tuple[str | None, str | None]:
    for c in containers:
        compose = c.get("compose") or {}
        if compose.get("service"):
            return str(compose["service"]), str(c.get("mount_path") or "")
    for c in containers:
        return None, str(c.get("mount_path") or "")
    return None, None


#: Compose's rule for project names (``docker compose -p``).
_PROJECT_NAME = re.compile(r"^[a-z0-9][a-z0-9_-]*$")


def plan_volumes(
    volumes: Sequence[tuple[str, Mapping[str, str], Sequence[Mapping[str, Any]]]],
    *,
    project: str,
    new_project: str | None = None,
) -> list[VolumePlan]:
    """Target names and labels for ``(name, labels, containers meta)`` of a project's volumes."""
    new = new_project or project
    if new_project is not None and not _PROJECT_NAME.match(new_project):
        raise UsageError(
            f"--as {new_project!r} is not a compose project name",
            hint="use lowercase letters, digits, '-' and '_', starting with a letter or digit",
        )
    anon_count: dict[str, int] = defaultdict(int)
    plans = []
    # anonymous volumes are numbered per service in the order of their mount paths
    ordered = sorted(volumes, key=lambda v: (_first_user(v[2])[0] or "", _first_user(v[2])[1] or "", v[0]))
    for name, labels, containers in ordered:
        service, mount_path = _first_user(containers)
        new_labels = dict(labels)
        if volume_kind(name, labels) is VolumeKind.ANONYMOUS:
            who = service or "volume"
            anon_count[who] += 1
            key = f"anon-{who}-{anon_count[who]}"
            new_labels.pop(ANONYMOUS_LABEL, None)
            new_labels[COMPOSE_PROJECT] = new
            new_labels[COMPOSE_VOLUME] = key
            plans.append(VolumePlan(name, f"{new}_{key}", new_labels, True, False, service, mount_path, key))
            continue
        if COMPOSE_PROJECT in new_labels:
            new_labels[COMPOSE_PROJECT] = new
        compose_key = labels.get(COMPOSE_VOLUME)
        if name.startswith(f"{project}_"):
            target = f"{new}_{name[len(project) + 1 :]}"
            named = False
        else:
            target = name if new == project else f"{new}_{name}"
            named = target != name
        plans.append(VolumePlan(name, target, new_labels, False, named, service, mount_path, compose_key))
    return sorted(plans, key=lambda p: p.source)


def compose_changes(plans: Sequence[VolumePlan], *, new_project: str) -> list[str]:
    """What to change in the compose file so that ``docker compose -p NEW up`` uses the volumes."""
    lines = []
    for p in plans:
        if p.anonymous:
            lines.append(
                f"service {p.service or '?'}: mount the named volume {p.compose_key} instead of the anonymous "
                f"volume at {p.mount_path or '?'} ('- {p.compose_key}:{p.mount_path or '/path'}'), and declare "
                f"'{p.compose_key}: {{}}' under the top-level volumes: (compose finds it as {p.target})"
            )
        elif p.named_in_compose:
            lines.append(f"the compose file names volume {p.source} itself (external or name:): use {p.target}")
    if lines:
        lines.append(f"then start the project with: docker compose -p {new_project} up -d")
    return lines


def _membership(meta: Mapping[str, Any]) -> set[str]:
    out = set()
    labels = (meta.get("volume") or {}).get("labels") or {}
    if labels.get(COMPOSE_PROJECT):
        out.add(str(labels[COMPOSE_PROJECT]))
    for c in meta.get("containers") or ():
        compose = c.get("compose") or {}
        if compose.get("project"):
            out.add(str(compose["project"]))
    return out


@dataclass
class ProjectRun:
    run_id: str
    #: Volume snapshots of the run, one per volume.
    snapshots: list[Snapshot]
    #: Snapshots of the run that are not restored as volumes (bind mounts), with why.
    skipped: list[tuple[Snapshot, str]] = field(default_factory=list)
    #: Volumes of the project that older runs have and this one has not, with their newest run.
    missing: dict[str, str] = field(default_factory=dict)


def project_run(snapshots: Sequence[Snapshot], project: str, run_id: str | None = None) -> ProjectRun:
    """The snapshots of one backup run of ``project``: ``run_id`` (or a prefix), else the newest run."""
    runs: dict[str, list[Snapshot]] = defaultdict(list)
    for s in snapshots:
        if s.source.kind not in ("volume", "bind") or {SAFETY_TAG, COPY_TAG} & set(s.tags):
            continue
        if project in _membership(s.source.meta):
            runs[str(s.source.meta.get("run_id") or s.id)].append(s)
    if not runs:
        raise SnapshotNotFound(
            f"no backup of compose project {project!r} in the repository",
            hint=f"back it up with `cargohold backup --project {project}`",
        )
    if run_id is not None:
        found = [r for r in runs if r.startswith(run_id.strip().lower())]
        if not found:
            known = ", ".join(sorted(runs, key=lambda r: max(s.time for s in runs[r]))[-5:])
            raise SnapshotNotFound(f"no backup run {run_id!r} of project {project!r}", hint=f"recent runs: {known}")
        if len(found) > 1:
            raise UsageError(f"run {run_id!r} matches {len(found)} runs of project {project!r}: give more characters")
        chosen = found[0]
    else:
        chosen = max(runs, key=lambda r: max(s.time for s in runs[r]))
    out = ProjectRun(chosen, [])
    have = {s.source.name for s in runs[chosen]}
    for rid in sorted(runs, key=lambda r: max(s.time for s in runs[r])):
        for s in runs[rid]:
            if s.source.kind == "volume" and s.source.name not in have:
                out.missing[s.source.name] = rid
    for s in sorted(runs[chosen], key=lambda s: s.source.name):
        if s.source.kind == "volume":
            out.snapshots.append(s)
        else:
            out.skipped.append(
                (s, f"bind mount {s.source.name}: restore it with `cargohold restore {s.short_id} --target DIR`")
            )
    return out


def _plan_input(s: Snapshot) -> tuple[str, Mapping[str, str], Sequence[Mapping[str, Any]]]:
    meta = s.source.meta
    return s.source.name, (meta.get("volume") or {}).get("labels") or {}, meta.get("containers") or []


# --- copy a volume, move a project ----------------------------------------------------


@dataclass(kw_only=True)
class TransferOptions:
    """How copy and move run: cut-over stop, read path, overwrite, final check, progress."""

    stop: bool = False
    via: Via = Via.AUTO
    force: bool = False
    verify: bool = True
    progress: Progress = field(default_factory=NullProgress)
    journal: IntentJournal = field(default_factory=IntentJournal)
    state: SyncState = field(default_factory=SyncState)


@dataclass
class CopyRequest(TransferOptions):
    volume: str
    to: str | None = None


@dataclass
class MigrationReport:
    run_id: str
    backup: RunReport
    volumes: list[SyncResult] = field(default_factory=list)
    plans: list[VolumePlan] = field(default_factory=list)
    skipped: list[str] = field(default_factory=list)
    compose_changes: list[str] = field(default_factory=list)

    @property
    def downtime(self) -> dict[str, float]:
        """Container -> seconds stopped (summed over the volumes it uses)."""
        out: dict[str, float] = defaultdict(float)
        for r in self.backup.results:
            for name, seconds in r.downtime.items():
                out[name] += seconds
        return dict(out)

    @property
    def added_bytes(self) -> int:
        return sum(r.result.stats.added_bytes for r in self.backup.results if r.result is not None)

    @property
    def written_bytes(self) -> int:
        return sum(v.bytes for v in self.volumes)


def _same_place(src: EngineInfo, dst: EngineInfo, pairs: Sequence[tuple[str, str]]) -> None:
    if src.id and src.id == dst.id:
        same = [a for a, b in pairs if a == b]
        if same:
            raise UsageError(
                f"the target engine is the source engine and volume {same[0]!r} would be copied onto itself",
                hint="give another name with --as",
            )


def _backup(
    repo: Repository,
    docker: DockerPort,
    endpoint: Endpoint,
    sources: Sequence[StateSource],
    *,
    stop: bool,
    via: Via,
    journal: IntentJournal,
    tag: str,
) -> RunReport:
    request = BackupRequest(via=via, consistency=Mode.STOP if stop else None, tags=[tag], journal=journal)
    report = DockerBackup(repo, docker, endpoint, request).run(sources)
    for r in report.failed:
        if r.exception is not None:
            raise r.exception
        raise ConsistencyError(f"backup of {r.source.label} failed: {r.error}")
    return report


def copy_volume(
    repo: Repository,
    src: DockerPort,
    src_endpoint: Endpoint,
    dst: DockerPort,
    dst_endpoint: Endpoint,
    req: CopyRequest,
) -> MigrationReport:
    """Copy one volume to another engine (or under another name): backup, then sync."""
    dst_engine = dst.engine_info()  # an unreachable target fails before anything is read
    src_engine = src.engine_info()
    [source] = resolve(src, volumes=[req.volume])
    target = req.to or req.volume
    _same_place(src_engine, dst_engine, [(req.volume, target)])
    sync = SyncRequest(
        target,
        force=req.force,
        via=req.via,
        verify=req.verify,
        progress=req.progress,
        journal=req.journal,
        state=req.state,
    )
    preflight(repo, dst, dst_engine, target, sync)
    backup = _backup(repo, src, src_endpoint, [source], stop=req.stop, via=req.via, journal=req.journal, tag=COPY_TAG)
    report = MigrationReport(backup.run_id, backup)
    snap = backup.results[0].snapshot
    assert snap is not None
    report.volumes.append(sync_volume(repo, dst, dst_endpoint, snap, sync))
    return report


@dataclass
class MoveRequest(TransferOptions):
    project: str
    new_name: str | None = None


def move_project(
    repo: Repository,
    src: DockerPort,
    src_endpoint: Endpoint,
    dst: DockerPort,
    dst_endpoint: Endpoint,
    req: MoveRequest,
) -> MigrationReport:
    """Copy every volume of a compose project to another engine, renamed with ``new_name``."""
    dst_engine = dst.engine_info()
    src_engine = src.engine_info()
    sources = resolve(src, project=req.project)
    volumes = [s for s in sources if s.kind is SourceKind.VOLUME and s.volume is not None]
    skipped = [
        f"bind mount {s.name}: not moved (a host path; copy it with the project's files)"
        for s in sources
        if s.kind is SourceKind.BIND
    ]
    plans = plan_volumes(
        [
            (s.name, dict(s.volume.labels) if s.volume else {}, [container_meta(u, []) for u in s.users])
            for s in volumes
        ],
        project=req.project,
        new_project=req.new_name,
    )
    by_source = {p.source: p for p in plans}
    _same_place(src_engine, dst_engine, [(p.source, p.target) for p in plans])
    requests = {
        p.source: SyncRequest(
            p.target,
            labels=p.labels,
            force=req.force,
            via=req.via,
            verify=req.verify,
            progress=req.progress,
            journal=req.journal,
            state=req.state,
        )
        for p in plans
    }
    for p in plans:
        preflight(repo, dst, dst_engine, p.target, requests[p.source])
    backup = _backup(repo, src, src_endpoint, volumes, stop=req.stop, via=req.via, journal=req.journal, tag=MOVE_TAG)
    report = MigrationReport(backup.run_id, backup, plans=plans, skipped=skipped)
    for r in backup.results:
        assert r.snapshot is not None
        report.volumes.append(sync_volume(repo, dst, dst_endpoint, r.snapshot, requests[r.source.name]))
    report.compose_changes = compose_changes(
        [by_source[r.source.name] for r in backup.results], new_project=req.new_name or req.project
    )
    return report


# --- restore a project ----------------------------------------------------------------


@dataclass
class ProjectRestoreRequest:
    project: str
    new_name: str | None = None
    run_id: str | None = None
    force: bool = False
    restart_containers: bool = False
    via: Via = Via.AUTO
    progress: Progress = field(default_factory=NullProgress)
    journal: IntentJournal = field(default_factory=IntentJournal)


@dataclass
class ProjectRestoreReport:
    project: str
    new_project: str
    run_id: str
    volumes: list[tuple[VolumePlan, VolumeRestoreReport]] = field(default_factory=list)
    skipped: list[str] = field(default_factory=list)
    compose_changes: list[str] = field(default_factory=list)
    warnings: list[str] = field(default_factory=list)


def restore_project(
    repo: Repository, docker: DockerPort, endpoint: Endpoint, req: ProjectRestoreRequest
) -> ProjectRestoreReport:
    """Restore every volume of one backup run of a compose project; all checks come before any write,
    and volumes this call created are removed again if a later one fails."""
    engine = docker.engine_info()
    with locks_of(repo).shared("find project snapshots"):
        run = project_run(repo.snapshots(), req.project, req.run_id)
    new = req.new_name or req.project
    plans = plan_volumes([_plan_input(s) for s in run.snapshots], project=req.project, new_project=new)
    by_source = {s.source.name: s for s in run.snapshots}
    report = ProjectRestoreReport(req.project, new, run.run_id, skipped=[why for _, why in run.skipped])
    report.warnings = [
        f"volume {name} of project {req.project} is not in run {run.run_id} (its newest backup is in run {rid}): "
        f"restore it with --run {rid}, or `cargohold restore latest --source {name} --to VOLUME`"
        for name, rid in sorted(run.missing.items())
    ]
    for p in plans:  # check everything first: nothing half-done
        try:
            volume = docker.inspect_volume(p.target)
        except VolumeNotFound:
            continue
        running = running_names(volume_users(docker, p.target))
        if running and not req.restart_containers:
            raise DockerConflict(
                f"volume {p.target!r} is used by running container(s) {', '.join(running)}",
                hint="stop them, or pass --restart-containers",
            )
        source = StateSource(SourceKind.VOLUME, volume.name, volume)
        if not req.force and not volume_is_empty(docker, volume, choose_via(engine, source, Via.AUTO)[1]):
            raise DockerConflict(
                f"volume {p.target!r} exists and is not empty",
                hint="restore under another name with --as NEWNAME, or pass --force (a safety snapshot is taken)",
            )
    created: list[str] = []
    try:
        for p in plans:
            snap = by_source[p.source]
            try:
                docker.inspect_volume(p.target)
            except VolumeNotFound:
                create_like(docker, p.target, snap.source.meta, p.labels)
                created.append(p.target)
            out = restore_volume(
                repo,
                docker,
                endpoint,
                snap,
                VolumeRestoreRequest(
                    to=p.target,
                    force=req.force,
                    restart_containers=req.restart_containers,
                    via=req.via,
                    progress=req.progress,
                    journal=req.journal,
                ),
            )
            out.created = p.target in created
            report.volumes.append((p, out))
    except BaseException:
        for name in created:
            with contextlib.suppress(CargoholdError):
                docker.remove_volume(name, force=True)
        raise
    report.compose_changes = compose_changes(plans, new_project=new)
    return report
