"""Commands on Docker state: the Docker side of ``backup`` and ``restore``, ``verify``, ``recover``.

``backup VOLUME... | --container | --project | --all`` and ``restore SNAPSHOT --to VOLUME`` are
reached through the ``backup`` and ``restore`` commands (``cli/repository.py``), which hand over
here when no ``--path`` / ``--target`` is given.
"""

from __future__ import annotations

import sys
from typing import Annotated, Any

import typer

from cargohold.cli import exit_codes
from cargohold.cli.common import JsonOpt, PasswordFileOpt, RepoOpt, note, open_repo, progress_for
from cargohold.cli.common import snapshot_json as _snapshot_json
from cargohold.cli.context import state
from cargohold.cli.output import human_bytes, print_json, print_table
from cargohold.docker.connect import resolve_endpoint
from cargohold.docker.helper import sweep_leftovers
from cargohold.docker.sdk import SdkDocker
from cargohold.errors import UsageError
from cargohold.model.consistency import DumpKind, Mode
from cargohold.repo.progress import Progress
from cargohold.services import repository as svc
from cargohold.services.docker_backup import BackupRequest, DockerBackup, RunReport, SourceResult
from cargohold.services.docker_restore import (
    RESTORABLE_KINDS,
    VolumeRestoreReport,
    VolumeRestoreRequest,
    restore_volume,
)
from cargohold.services.docker_sources import Via, resolve
from cargohold.services.intents import IntentJournal, Recovered, recover
from cargohold.services.verify import VerifyRequest, verify

ViaOpt = Annotated[
    Via,
    typer.Option("--via", help="How to read/write volume data: direct (mountpoint), api (Engine archive API), auto."),
]


def _docker(ctx: typer.Context) -> SdkDocker:
    port = state(ctx).docker()
    assert isinstance(port, SdkDocker)
    return port


# --- backup ------------------------------------------------------------------------------


def _result_json(r: SourceResult) -> dict[str, Any]:
    return {
        "source": {"kind": r.source.kind.value, "name": r.source.name},
        "via": r.via.value,
        "via_reason": r.via_reason,
        "consistency": r.mode.value,
        "snapshot": _snapshot_json(r.snapshot) if r.snapshot is not None else None,
        "skipped": bool(r.result and r.result.skipped),
        "downtime_seconds": {k: round(v, 3) for k, v in r.downtime.items()},
        "dumps": [d.to_json() for d in r.dumps],
        "warnings": r.warnings,
        "changed_while_read": r.result.changed if r.result is not None else [],
        "excluded": r.result.excluded if r.result is not None else [],
        "error": r.error,
        "seconds": round(r.seconds, 3),
    }


def _status(r: SourceResult) -> str:
    if r.error is not None:
        return "FAILED"
    if r.result is not None and r.result.skipped:
        return "unchanged"
    return r.snapshot.short_id if r.snapshot is not None else "-"


def backup_docker(
    ctx: typer.Context,
    *,
    volumes: list[str],
    containers: list[str],
    project: str | None,
    all_volumes: bool,
    binds: bool,
    via: Via,
    consistency: Mode | None,
    tags: list[str],
    skip_if_unchanged: bool,
    repo: str | None,
    password_file: str | None,
    json: bool,
    progress: bool | None,
) -> None:
    """``cargohold backup VOLUME... | --container C | --project P | --all``."""
    docker = _docker(ctx)
    sources = resolve(
        docker, volumes=volumes, containers=containers, project=project, all_volumes=all_volumes, binds=binds
    )

    def progress_factory(_label: str) -> Progress:
        return progress_for(progress)

    request = BackupRequest(
        via=via,
        consistency=consistency,
        tags=tags,
        skip_if_unchanged=skip_if_unchanged,
        progress_factory=progress_factory,
    )
    with open_repo(repo, password_file) as r:
        report = DockerBackup(r, docker, docker.endpoint, request).run(sources)
    _print_backup(report, json, r.request_counts())
    if report.failed:
        first = report.failed[0]
        raise typer.Exit(exit_codes.exit_code_for(first.exception) if first.exception else exit_codes.CONSISTENCY)
    if any(r.result is not None and r.result.warnings for r in report.results):
        raise typer.Exit(exit_codes.FINDINGS)


def _print_backup(report: RunReport, json: bool, requests: dict[str, int]) -> None:
    for r in report.results:
        for w in r.warnings:
            note(f"warning: {r.source.label}: {w}")
        if r.error is not None:
            note(f"cargohold: error: {r.source.label}: {r.error}")
    if json:
        doc = {"run_id": report.run_id, "results": [_result_json(r) for r in report.results], "requests": requests}
        print_json(doc)
        return
    rows = []
    for r in report.results:
        stats = r.result.stats if r.result is not None else None
        down = ", ".join(f"{k} {v:.1f}s" for k, v in sorted(r.downtime.items())) or "-"
        rows.append(
            [
                r.source.label,
                r.via.value,
                r.mode.value,
                _status(r),
                str(stats.files) if stats else "-",
                human_bytes(stats.added_bytes) if stats else "-",
                down,
                ", ".join(d.path for d in r.dumps) or "-",
            ]
        )
    print_table(["source", "via", "consistency", "snapshot", "files", "added", "stopped/paused", "dumps"], rows)
    print(f"run {report.run_id}: {len(report.results) - len(report.failed)} of {len(report.results)} sources saved")


# --- restore ------------------------------------------------------------------------------


def restore_to_volume(
    ctx: typer.Context,
    *,
    snapshot: str,
    to: str,
    engine: str | None,
    path: str | None,
    force: bool,
    restart_containers: bool,
    via: Via,
    source: str | None,
    repo: str | None,
    password_file: str | None,
    json: bool,
    progress: bool | None,
    from_dump: str | None = None,
) -> None:
    """``cargohold restore SNAPSHOT --to VOLUME [--from-dump [CONTAINER]]``."""
    docker = SdkDocker(resolve_endpoint(host=engine)) if engine is not None else _docker(ctx)
    req = VolumeRestoreRequest(
        to=to,
        path=path,
        force=force,
        restart_containers=restart_containers,
        via=via,
        progress=progress_for(progress),
        from_dump=from_dump,
    )
    with open_repo(repo, password_file) as r:
        with svc.locks_of(r).shared("find snapshot"):
            snap = svc.find_snapshot(r, snapshot, source=source)
        report = restore_volume(r, docker, docker.endpoint, snap, req)
    _print_restore(report, json)
    if report.damaged:
        raise typer.Exit(exit_codes.INTEGRITY)


def _print_restore(report: VolumeRestoreReport, json: bool) -> None:
    for w in report.warnings:
        note(f"warning: {w}")
    for p, why in sorted(report.damaged.items()):
        note(f"damaged: {p}: {why}")
    if json:
        print_json(
            {
                "snapshot": report.snapshot.id,
                "volume": report.volume,
                "created": report.created,
                "via": report.via.value,
                "files": report.files,
                "bytes": report.bytes,
                "safety_snapshot": report.safety_snapshot,
                "restarted": report.restarted,
                "downtime_seconds": {k: round(v, 3) for k, v in report.downtime.items()},
                "damaged": report.damaged,
                "warnings": report.warnings,
                "dump": report.dump.to_json() if report.dump is not None else None,
            }
        )
        return
    made = "created volume" if report.created else "volume"
    if report.dump is not None and report.dump.kind is not DumpKind.SQLITE:
        print(
            f"loaded the {report.dump.kind.value} dump of {report.dump.container} from snapshot "
            f"{report.snapshot.short_id} into {made} {report.volume} in {report.dump.seconds:.1f} s: "
            f"{report.dump.detail}"
        )
    else:
        print(
            f"restored snapshot {report.snapshot.short_id} into {made} {report.volume} via {report.via.value}: "
            f"{report.files} files, {human_bytes(report.bytes)}"
        )
    if report.dump is not None and report.dump.kind is DumpKind.SQLITE:
        print(f"replaced SQLite databases with their online-backup copies: {report.dump.detail}")
    if report.safety_snapshot:
        print(f"what the volume held before is in snapshot {report.safety_snapshot[:8]} (tag: safety)")
    if report.restarted:
        down = ", ".join(f"{k} {report.downtime.get(k, 0):.1f}s" for k in report.restarted)
        print(f"stopped and started again: {down}")


# --- verify -------------------------------------------------------------------------------


def verify_cmd(
    ctx: typer.Context,
    snapshot: Annotated[str | None, typer.Argument(help="Snapshot id or unique prefix.")] = None,
    latest: Annotated[bool, typer.Option("--latest", help="The newest snapshot (of --source, if given).")] = False,
    source: Annotated[str | None, typer.Option("--source", help="With --latest: of this source.")] = None,
    via: ViaOpt = Via.AUTO,
    repo: RepoOpt = None,
    password_file: PasswordFileOpt = None,
    json: JsonOpt = False,
) -> None:
    """Restore a snapshot into scratch space, compare every file with it, record the result."""
    if (snapshot is None) == (not latest):
        raise UsageError("give a SNAPSHOT or --latest (not both)")
    ref = "latest" if latest else str(snapshot)
    with open_repo(repo, password_file) as r:
        with svc.locks_of(r).shared("verify"):
            snap = svc.find_snapshot(r, ref, source=source)
            r.load_index()
        docker = _docker(ctx) if snap.source.kind in RESTORABLE_KINDS else None
        record = verify(
            r,
            snap,
            docker=docker,
            endpoint=docker.endpoint if docker is not None else None,
            request=VerifyRequest(via=via),
        )
    if json:
        print_json(
            {
                "id": record.id,
                "snapshot": record.snapshot_id,
                "source": {"kind": record.source_kind, "name": record.source_name},
                "ok": record.ok,
                "method": record.method,
                "via": record.via,
                "files": record.files,
                "bytes": record.bytes,
                "problems": record.problems,
                "dumps": [
                    {"kind": d.kind, "container": d.container, "ok": d.ok, "detail": d.detail} for d in record.dumps
                ],
                "seconds": record.seconds,
                "time": record.time.isoformat(),
            }
        )
    else:
        verdict = "OK" if record.ok else "FAILED"
        print(
            f"verify {snap.short_id} ({record.source_kind} {record.source_name}): {verdict} — {record.files} files, "
            f"{human_bytes(record.bytes)} restored into a scratch {record.method} via {record.via} and compared "
            f"in {record.seconds:.1f} s"
        )
        for d in record.dumps:
            print(f"  {d.kind} dump of {d.container}: {'OK' if d.ok else 'FAILED'} — {d.detail}")
        for p in record.problems:
            if not any(p.endswith(d.detail) for d in record.dumps if not d.ok):  # said just above
                print(f"  {p}", file=sys.stdout)
    if not record.ok:
        raise typer.Exit(exit_codes.FINDINGS)


# --- recover ------------------------------------------------------------------------------


def _report(results: list[Recovered]) -> None:
    for r in results:
        print(
            f"cargohold: recovered container {r.container} after an interrupted run ({r.action}): {r.outcome}",
            file=sys.stderr,
        )


def recover_orphans_quietly() -> None:
    """Run at the start of every command: put back containers an interrupted run left stopped."""
    journal = IntentJournal()
    if not journal.directory.is_dir():
        return
    orphans = journal.orphaned()
    if orphans:
        _report(recover(journal, SdkDocker, intents=orphans))


def recover_cmd(ctx: typer.Context, json: JsonOpt = False) -> None:
    """Restart or unpause containers that an interrupted cargohold run left stopped or paused."""
    journal = IntentJournal()
    results = recover(journal, SdkDocker)
    pending = journal.pending()
    swept = sweep_leftovers(_docker(ctx))
    if json:
        print_json(
            {
                "recovered": [
                    {"intent": r.intent_id, "container": r.container, "action": r.action, "outcome": r.outcome}
                    for r in results
                ],
                "pending": [{"intent": i.id, "pid": i.pid, "purpose": i.purpose} for i in pending],
                "removed_helpers": swept.containers,
                "removed_scratch_volumes": swept.volumes,
            }
        )
        return
    if not results:
        typer.echo("nothing to recover")
    else:
        print_table(
            ["container", "action", "outcome", "intent"],
            [[r.container, r.action, r.outcome, r.intent_id] for r in results],
        )
    for i in pending:
        typer.echo(f"still running: {i.purpose} (pid {i.pid}, intent {i.id})")
    for name in swept.containers:
        typer.echo(f"removed helper container {name} left by an interrupted run")
    for name in swept.volumes:
        typer.echo(f"removed scratch volume {name} left by an interrupted run")


def register(app: typer.Typer) -> None:
    app.command("verify")(verify_cmd)
    app.command("recover")(recover_cmd)
