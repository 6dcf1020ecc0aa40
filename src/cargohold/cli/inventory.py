"""``cargohold volumes``, ``mounts`` and ``inspect``: where the engine keeps state."""

from __future__ import annotations

import sys
from datetime import UTC, datetime
from typing import Annotated, Any

import typer

from cargohold.cli.common import PasswordFileOpt, RepoOpt, backup_index
from cargohold.cli.context import state
from cargohold.cli.output import human_bytes, print_json, print_table, stdout_is_tty
from cargohold.errors import CargoholdError
from cargohold.model.engine import EngineInfo
from cargohold.model.inventory import (
    SCHEMA_VERSION,
    ContainerEntry,
    MountEntry,
    VolumeEntry,
    VolumeKind,
    with_backups,
)
from cargohold.services import inventory

JsonOpt = Annotated[bool, typer.Option("--json", help="Print stable JSON (see README) instead of a table.")]
ProjectOpt = Annotated[str | None, typer.Option("--project", "-p", help="Only this compose project.", metavar="NAME")]


def _engine_json(engine: EngineInfo) -> dict[str, Any]:
    return {
        "id": engine.id,
        "name": engine.name,
        "host": engine.host,
        "local": engine.local,
        "rootless": engine.rootless,
        "server_version": engine.server_version,
        "api_version": engine.api_version,
    }


def _short(name: str, tty: bool) -> str:
    """Anonymous volume names are 64 hex digits: shorten them on a terminal only."""
    return name[:12] + "…" if tty and len(name) == 64 else name


def _users(entry: VolumeEntry) -> str:
    if not entry.users:
        return "-"
    return ", ".join(f"{u.name}:{u.mount_path}{' (ro)' if u.read_only else ''}" for u in entry.users)


def _ago(when: datetime | None, now: datetime) -> str:
    if when is None:
        return "never"
    secs = max(0, int((now - when).total_seconds()))
    for unit, size in (("d", 86400), ("h", 3600), ("m", 60)):
        if secs >= size:
            return f"{secs // size}{unit} ago"
    return f"{secs}s ago"


def _backup_cells(entry: VolumeEntry, now: datetime) -> list[str]:
    rec = entry.backup
    if rec is None:
        return ["never", "-"]
    verified = "never"
    if rec.last_verify is not None:
        verified = f"{'ok' if rec.last_verify_ok else 'FAILED'} {_ago(rec.last_verify, now)}"
    return [_ago(rec.last_backup, now), verified]


def volumes(
    ctx: typer.Context,
    json: JsonOpt = False,
    project: ProjectOpt = None,
    repo: RepoOpt = None,
    password_file: PasswordFileOpt = None,
    no_backups: Annotated[bool, typer.Option("--no-backups", help="Do not read backups from the repository.")] = False,
) -> None:
    """List every volume: kind, size, compose project, users, risk flags, last backup and verification.

    Backups are read from the repository (--repo, CARGOHOLD_REPO or the default one) when its
    password is at hand (CARGOHOLD_PASSWORD or --password-file); this command never asks for it.
    """
    report = inventory.volume_report(state(ctx).docker(), project=project)
    index = None
    if not no_backups:
        try:
            index = backup_index(repo, password_file)
        except CargoholdError as err:  # the inventory is still worth showing
            print(f"cargohold: backups not shown: {err}", file=sys.stderr)
    entries = with_backups(report.volumes, index) if index is not None else report.volumes
    now = datetime.now(UTC)
    if json:
        print_json(
            {
                "schema_version": SCHEMA_VERSION,
                "engine": _engine_json(report.engine),
                "backups_read": index is not None,
                "volumes": [v.to_json(now=now) for v in entries],
            }
        )
        return
    tty = stdout_is_tty()
    rows = [
        [
            _short(v.name, tty),
            v.kind.value,
            v.driver,
            human_bytes(v.size),
            v.compose_project or "-",
            _users(v),
            ",".join(f.value for f in v.flags) or "-",
            *(_backup_cells(v, now) if index is not None else []),
        ]
        for v in entries
    ]
    headers = ["name", "kind", "driver", "size", "project", "used by", "flags"]
    print_table(
        headers + (["last backup", "verified"] if index is not None else []),
        rows,
        title=f"{len(rows)} volumes on {report.engine.name} ({report.engine.host})" if tty else None,
    )


def _mount_note(m: MountEntry) -> str:
    notes = []
    if m.declared:
        notes.append("image VOLUME")
    if m.source_exists is False:
        notes.append("SOURCE MISSING")
    if m.options:
        notes.append(m.options)
    return "; ".join(notes) or "-"


def _mount_source(m: MountEntry, tty: bool) -> str:
    if m.volume:
        return _short(m.volume, tty) + (" (anonymous)" if m.volume_kind is VolumeKind.ANONYMOUS else "")
    return m.source or "-"


def _container_rows(c: ContainerEntry, tty: bool) -> list[list[str]]:
    rows = [
        [
            c.name,
            c.state,
            m.type.value,
            m.destination,
            _mount_source(m, tty),
            "ro" if m.read_only else "rw",
            _mount_note(m),
        ]
        for m in c.mounts
    ]
    for d in c.declared_volumes:
        if d.via_parent is not None or d.covered_by.value == "nothing":
            how = f"under {d.via_parent}" if d.via_parent else "not covered: writable layer"
            rows.append([c.name, c.state, "declared", d.path, d.source or "-", "-", f"image VOLUME {how}"])
    if not rows:
        rows.append([c.name, c.state, "-", "-", "-", "-", "no mounts"])
    return rows


def mounts(ctx: typer.Context, json: JsonOpt = False, project: ProjectOpt = None) -> None:
    """List every container's mounts and what covers each image-declared VOLUME."""
    report = inventory.mount_report(state(ctx).docker(), project=project)
    if json:
        print_json(
            {
                "schema_version": SCHEMA_VERSION,
                "engine": _engine_json(report.engine),
                "containers": [c.to_json() for c in report.containers],
            }
        )
        return
    tty = stdout_is_tty()
    rows = [row for c in report.containers for row in _container_rows(c, tty)]
    print_table(
        ["container", "state", "type", "destination", "source", "mode", "note"],
        rows,
        title=f"mounts of {len(report.containers)} containers on {report.engine.name}" if tty else None,
    )


def inspect(
    ctx: typer.Context,
    volume: Annotated[str, typer.Argument(help="Volume name.")],
    json: JsonOpt = False,
) -> None:
    """Show one volume in full."""
    entry = inventory.inspect_volume(state(ctx).docker(), volume)
    if json:
        print_json({"schema_version": SCHEMA_VERSION, "volume": entry.to_json()})
        return
    pairs: list[tuple[str, str]] = [
        ("name", entry.name),
        ("kind", entry.kind.value),
        ("driver", entry.driver),
        ("scope", entry.scope),
        ("size", f"{human_bytes(entry.size)} ({entry.size} bytes)" if entry.size is not None else "unknown"),
        ("mountpoint", entry.mountpoint),
        ("created", entry.created_at or "-"),
        ("compose project", entry.compose_project or "-"),
        ("compose volume", entry.compose_volume or "-"),
        ("flags", ", ".join(f.value for f in entry.flags) or "-"),
    ]
    pairs += [(f"label {k}", v) for k, v in sorted(entry.labels.items())]
    pairs += [(f"option {k}", v) for k, v in sorted(entry.options.items())]
    width = max(len(k) for k, _ in pairs)
    for key, value in pairs:
        typer.echo(f"{key.ljust(width)}  {value}")
    typer.echo("used by" if entry.users else "used by".ljust(width) + "  -")
    for u in entry.users:
        service = f" service={u.compose_service}" if u.compose_service else ""
        mode = "ro" if u.read_only else "rw"
        typer.echo(f"  {u.name} ({u.id[:12]}, {u.state}) at {u.mount_path} {mode}{service}")


def register(app: typer.Typer) -> None:
    app.command("volumes")(volumes)
    app.command("mounts")(mounts)
    app.command("inspect")(inspect)
