"""Migration commands: ``copy`` a volume to another engine, ``project restore`` and ``project move``.

A thin client of :mod:`cargohold.services.migrate`.
"""

from __future__ import annotations

from typing import Annotated, Any

import typer

from cargohold.cli import exit_codes
from cargohold.cli.common import JsonOpt, PasswordFileOpt, ProgressOpt, RepoOpt, note, open_repo, progress_for
from cargohold.cli.context import state
from cargohold.cli.output import human_bytes, print_json, print_table
from cargohold.docker.connect import resolve_endpoint
from cargohold.docker.sdk import SdkDocker
from cargohold.repo.progress import Progress
from cargohold.services.docker_sources import Via
from cargohold.services.migrate import (
    CopyRequest,
    MigrationReport,
    MoveRequest,
    ProjectRestoreReport,
    ProjectRestoreRequest,
    copy_volume,
    move_project,
    restore_project,
)
from cargohold.services.volume_sync import SyncResult

project_app = typer.Typer(help="Restore or move a whole compose project.", no_args_is_help=True)

ToEngineOpt = Annotated[
    str, typer.Option("--to-engine", help="Docker engine URL to copy to (unix://, tcp://, ssh://).", metavar="URL")
]
StopOpt = Annotated[
    bool,
    typer.Option("--stop", help="Stop the containers that use the data while it is read (the final cut-over pass)."),
]
ViaOpt = Annotated[
    Via, typer.Option("--via", help="How to read and write volume data: direct (mountpoint), api, auto.")
]
ForceOpt = Annotated[
    bool,
    typer.Option("--force", help="Replace the contents of non-empty target volumes (a safety snapshot is taken)."),
]
NoVerifyOpt = Annotated[
    bool, typer.Option("--no-verify", help="Skip comparing the target with the snapshot at the end.")
]


def _source(ctx: typer.Context) -> SdkDocker:
    port = state(ctx).docker()
    assert isinstance(port, SdkDocker)
    return port


def _engine(url: str) -> SdkDocker:
    return SdkDocker(resolve_endpoint(host=url))


def _progress(flag: bool | None) -> Progress:
    return progress_for(flag)


def _sync_json(v: SyncResult) -> dict[str, Any]:
    return {
        "volume": v.volume,
        "engine": v.engine,
        "snapshot": v.snapshot.id,
        "method": v.method,
        "via": v.via.value,
        "created": v.created,
        "files_written": v.files,
        "bytes_written": v.bytes,
        "deleted": v.deleted,
        "verified": v.verified,
        "problems": v.problems,
        "safety_snapshot": v.safety_snapshot,
        "warnings": v.warnings,
        "seconds": round(v.seconds, 3),
    }


def _print_migration(report: MigrationReport, json: bool) -> None:
    for v in report.volumes:
        for w in v.warnings:
            note(f"warning: {w}")
    for s in report.skipped:
        note(f"skipped: {s}")
    down = report.downtime
    if json:
        print_json(
            {
                "run_id": report.run_id,
                "added_bytes": report.added_bytes,
                "written_bytes": report.written_bytes,
                "downtime_seconds": {k: round(s, 3) for k, s in down.items()},
                "volumes": [_sync_json(v) for v in report.volumes],
                "renamed": {p.source: p.target for p in report.plans if p.renamed},
                "skipped": report.skipped,
                "compose_changes": report.compose_changes,
            }
        )
        return
    rows = []
    for v in report.volumes:
        check = "-" if v.verified is None else "identical" if v.verified else "DIFFERENT"
        rows.append(
            [
                v.volume,
                v.method,
                v.via.value,
                str(v.files),
                human_bytes(v.bytes),
                str(v.deleted),
                check,
                v.snapshot.short_id,
            ]
        )
    print_table(
        ["target volume", "copy", "via", "files written", "bytes written", "deleted", "check", "snapshot"], rows
    )
    stopped = ", ".join(f"{k} {s:.1f}s" for k, s in sorted(down.items())) or "nothing stopped"
    print(
        f"run {report.run_id}: {human_bytes(report.added_bytes)} added to the repository, "
        f"{human_bytes(report.written_bytes)} written to the target; stop window: {stopped}"
    )
    for v in report.volumes:
        for p in v.problems:
            print(f"  {v.volume}: {p}")
    _print_compose(report.compose_changes)


def _print_compose(lines: list[str]) -> None:
    if lines:
        print("compose file changes:")
        for line in lines:
            print(f"  - {line}")


def _exit_for(volumes: list[SyncResult]) -> None:
    if any(v.verified is False for v in volumes):
        raise typer.Exit(exit_codes.FINDINGS)


def copy_cmd(
    ctx: typer.Context,
    volume: Annotated[str, typer.Argument(help="The volume to copy (on the engine of --host / DOCKER_HOST).")],
    to_engine: ToEngineOpt,
    as_name: Annotated[str | None, typer.Option("--as", help="Name of the volume on the target.")] = None,
    stop: StopOpt = False,
    via: ViaOpt = Via.AUTO,
    force: ForceOpt = False,
    no_verify: NoVerifyOpt = False,
    repo: RepoOpt = None,
    password_file: PasswordFileOpt = None,
    json: JsonOpt = False,
    progress: ProgressOpt = None,
) -> None:
    """Copy a volume to another engine through the repository; run again to move only what changed."""
    src = _source(ctx)
    dst = _engine(to_engine)
    req = CopyRequest(
        volume, to=as_name, stop=stop, via=via, force=force, verify=not no_verify, progress=_progress(progress)
    )
    with open_repo(repo, password_file) as r:
        report = copy_volume(r, src, src.endpoint, dst, dst.endpoint, req)
    _print_migration(report, json)
    _exit_for(report.volumes)


def project_move(
    ctx: typer.Context,
    project: Annotated[str, typer.Argument(help="Compose project name (com.docker.compose.project).")],
    to_engine: ToEngineOpt,
    as_name: Annotated[str | None, typer.Option("--as", help="New project name on the target.")] = None,
    stop: StopOpt = False,
    via: ViaOpt = Via.AUTO,
    force: ForceOpt = False,
    no_verify: NoVerifyOpt = False,
    repo: RepoOpt = None,
    password_file: PasswordFileOpt = None,
    json: JsonOpt = False,
    progress: ProgressOpt = None,
) -> None:
    """Copy every volume of a compose project to another engine; run again to move only what changed."""
    src = _source(ctx)
    dst = _engine(to_engine)
    req = MoveRequest(
        project, new_name=as_name, stop=stop, via=via, force=force, verify=not no_verify, progress=_progress(progress)
    )
    with open_repo(repo, password_file) as r:
        report = move_project(r, src, src.endpoint, dst, dst.endpoint, req)
    _print_migration(report, json)
    _exit_for(report.volumes)


def _print_project_restore(report: ProjectRestoreReport, json: bool) -> None:
    for w in report.warnings:
        note(f"warning: {w}")
    for _, out in report.volumes:
        for w in out.warnings:
            note(f"warning: {w}")
    for s in report.skipped:
        note(f"skipped: {s}")
    if json:
        print_json(
            {
                "project": report.project,
                "new_project": report.new_project,
                "run_id": report.run_id,
                "volumes": [
                    {
                        "source": p.source,
                        "volume": out.volume,
                        "snapshot": out.snapshot.id,
                        "created": out.created,
                        "via": out.via.value,
                        "files": out.files,
                        "bytes": out.bytes,
                        "safety_snapshot": out.safety_snapshot,
                        "restarted": out.restarted,
                        "damaged": out.damaged,
                    }
                    for p, out in report.volumes
                ],
                "skipped": report.skipped,
                "warnings": report.warnings,
                "compose_changes": report.compose_changes,
            }
        )
        return
    print_table(
        ["volume", "from", "snapshot", "via", "files", "bytes"],
        [
            [out.volume, p.source, out.snapshot.short_id, out.via.value, str(out.files), human_bytes(out.bytes)]
            for p, out in report.volumes
        ],
    )
    print(
        f"restored project {report.project} as {report.new_project} from run {report.run_id}: "
        f"{len(report.volumes)} volume(s)"
    )
    _print_compose(report.compose_changes)


def project_restore(
    ctx: typer.Context,
    project: Annotated[str, typer.Argument(help="Compose project name, as backed up.")],
    as_name: Annotated[str | None, typer.Option("--as", help="Restore under this project name.")] = None,
    engine: Annotated[
        str | None, typer.Option("--engine", help="Engine URL to restore onto (default: --host / DOCKER_HOST).")
    ] = None,
    run: Annotated[str | None, typer.Option("--run", help="Backup run id (default: the newest run).")] = None,
    force: ForceOpt = False,
    restart_containers: Annotated[
        bool, typer.Option("--restart-containers", help="Stop and restart containers that use a target volume.")
    ] = False,
    via: ViaOpt = Via.AUTO,
    repo: RepoOpt = None,
    password_file: PasswordFileOpt = None,
    json: JsonOpt = False,
    progress: ProgressOpt = None,
) -> None:
    """Restore every volume of one backup run of a compose project, optionally under a new name."""
    docker = _engine(engine) if engine is not None else _source(ctx)
    req = ProjectRestoreRequest(
        project,
        new_name=as_name,
        run_id=run,
        force=force,
        restart_containers=restart_containers,
        via=via,
        progress=_progress(progress),
    )
    with open_repo(repo, password_file) as r:
        report = restore_project(r, docker, docker.endpoint, req)
    _print_project_restore(report, json)
    if any(out.damaged for _, out in report.volumes):
        raise typer.Exit(exit_codes.INTEGRITY)


def register(app: typer.Typer) -> None:
    app.command("copy")(copy_cmd)
    project_app.command("restore")(project_restore)
    project_app.command("move")(project_move)
    app.add_typer(project_app, name="project")
