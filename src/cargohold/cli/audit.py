"""``cargohold audit`` and ``cargohold adopt``: find state that will be lost, and move it to safety."""

from __future__ import annotations

import re
import sys
from datetime import timedelta
from typing import TYPE_CHECKING, Annotated

import typer

from cargohold import __version__
from cargohold.cli import exit_codes
from cargohold.cli.common import backup_index
from cargohold.cli.context import state
from cargohold.cli.output import err_console, human_bytes, print_json, print_table, stdout_is_tty
from cargohold.errors import UsageError
from cargohold.model.backups import BackupIndex, BackupPolicy

if TYPE_CHECKING:  # the audit engine (compose loader, YAML, rules) loads when `audit` runs
    from cargohold.audit.findings import Finding, Severity
    from cargohold.services import audit as svc

_FAIL_CHOICES = ("high", "medium", "low", "info", "none")


def parse_duration(text: str) -> timedelta:
    """``90m``, ``36h``, ``7d``, ``2w`` → timedelta."""
    match = re.fullmatch(r"\s*(\d+)\s*([smhdw])\s*", text)
    if match is None:
        raise UsageError(f"bad duration {text!r}: use a number and s, m, h, d or w (e.g. 24h, 7d)")
    n, unit = int(match.group(1)), match.group(2)
    return timedelta(**{{"s": "seconds", "m": "minutes", "h": "hours", "d": "days", "w": "weeks"}[unit]: n})


def _backups(repo: str | None, password_file: str | None) -> BackupIndex | None:
    return backup_index(repo, password_file, only_named=True)


def _where(f: Finding) -> str:
    if f.file:
        return f"{f.file}:{f.line}" if f.line else f.file
    return "-"


def _render_table(report: svc.AuditReport, fail_on: Severity | None) -> None:
    from cargohold.audit.findings import Severity

    tty = stdout_is_tty()
    out = sys.stdout
    if not report.findings:
        what = f"project {report.project}" if report.project else "the engine"
        out.write(f"no findings for {what}\n")
        return
    rows = []
    for i, f in enumerate(report.findings, 1):
        rows.append(
            [
                str(i),
                f.severity.value.upper() if f.severity is Severity.HIGH else f.severity.value,
                f.rule,
                f.service if f.service and f.project == report.project and not f.container else f.subject,
                f.path or "-",
                _where(f),
                f.message + (f" [{human_bytes(f.size)}]" if f.size and tty else ""),
            ]
        )
    title = None
    if tty:
        src = f"project {report.project}" if report.project else f"engine {report.engine.name if report.engine else ''}"
        title = f"audit of {src}: {len(rows)} findings"
    print_table(["#", "severity", "rule", "subject", "path", "where", "message"], rows, title=title)
    out.write("\nHow to fix:\n")
    for i, f in enumerate(report.findings, 1):
        out.write(f"[{i}] {f.rule} ({f.subject}):\n")
        for line in f.fix.splitlines():
            out.write(f"    {line}\n")
    summary = ", ".join(
        f"{n} {s.value}" for s in reversed(Severity) if (n := sum(1 for f in report.findings if f.severity is s))
    )
    gate = f"; failing on {fail_on.value} and above" if fail_on is not None else ""
    out.write(f"\n{len(report.findings)} findings: {summary}{gate}\n")


def audit(
    ctx: typer.Context,
    files: Annotated[
        list[str] | None,
        typer.Option("--file", "-f", help="Compose file (repeat to merge, as compose does).", metavar="FILE"),
    ] = None,
    project_name: Annotated[str | None, typer.Option("--project-name", "-p", help="Compose project name.")] = None,
    project_directory: Annotated[
        str | None, typer.Option("--project-directory", help="Compose project directory.", metavar="DIR")
    ] = None,
    env_files: Annotated[
        list[str] | None, typer.Option("--env-file", help="Env file instead of .env.", metavar="FILE")
    ] = None,
    live: Annotated[
        bool, typer.Option("--live", help="With -f: also compare the files with the running containers.")
    ] = False,
    json: Annotated[bool, typer.Option("--json", help="Print findings as JSON.")] = False,
    sarif: Annotated[bool, typer.Option("--sarif", help="Print findings as SARIF 2.1.0 (code scanning).")] = False,
    fail_on: Annotated[
        str, typer.Option("--fail-on", help="Exit 1 when a finding is at or above: high, medium, low, info, none.")
    ] = "high",
    fix: Annotated[
        bool, typer.Option("--fix", help="Patch the compose file(s): named volumes, consistency labels.")
    ] = False,
    dry_run: Annotated[bool, typer.Option("--dry-run", help="With --fix: only show the diff.")] = False,
    repo: Annotated[
        str | None,
        typer.Option("--repo", "-r", help="Repository to read backups from (or CARGOHOLD_REPO).", metavar="URL"),
    ] = None,
    password_file: Annotated[
        str | None, typer.Option("--password-file", help="Repository password file.", metavar="FILE")
    ] = None,
    max_age: Annotated[str, typer.Option("--max-age", help="Backup policy: newest backup at most this old.")] = "24h",
    verify_max_age: Annotated[
        str, typer.Option("--verify-max-age", help="Backup policy: newest verification at most this old.")
    ] = "30d",
    no_writable_layer: Annotated[
        bool, typer.Option("--no-writable-layer", help="Live: skip the writable-layer scan (faster).")
    ] = False,
) -> None:
    """Find the state that will be lost — in compose files (-f) or on the live engine — and how to fix it."""
    from cargohold.audit.findings import Severity
    from cargohold.audit.sarif import to_sarif
    from cargohold.services import audit as svc

    if json and sarif:
        raise UsageError("choose one of --json and --sarif")
    if fail_on.lower() not in _FAIL_CHOICES:
        raise UsageError(f"--fail-on must be one of {', '.join(_FAIL_CHOICES)}")
    if dry_run and not fix:
        raise UsageError("--dry-run goes with --fix")
    if live and not files:
        raise UsageError("--live compares compose files with the engine: give them with -f")
    gate = None if fail_on.lower() == "none" else Severity(fail_on.lower())
    if fix:
        patches = svc.fix_files(
            files or (), project_name=project_name, project_directory=project_directory, env_files=env_files or ()
        )
        if not any(p.changed for p in patches):
            typer.echo("nothing to fix")
            return
        for p in patches:
            sys.stdout.write(p.diff())
        if dry_run:
            return
        svc.write_patches(patches)
        for p in patches:
            err_console().print(f"wrote {p.path}: {'; '.join(p.changes)}")
        return
    policy = BackupPolicy(max_age=parse_duration(max_age), verify_max_age=parse_duration(verify_max_age))
    backups = _backups(repo, password_file)
    if files:
        docker = state(ctx).docker() if live else None
        report = svc.audit_files(
            files,
            project_name=project_name,
            project_directory=project_directory,
            env_files=env_files or (),
            docker=docker,
            backups=backups,
            policy=policy,
        )
    else:
        report = svc.audit_live(
            state(ctx).docker(), backups=backups, policy=policy, writable_layer=not no_writable_layer
        )
    for warning in report.warnings:
        err_console().print(f"cargohold: warning: {warning}")
    if json:
        print_json(report.to_json())
    elif sarif:
        print_json(to_sarif(report.findings, version=__version__))
    else:
        _render_table(report, gate)
    if gate is not None and report.at_or_above(gate):
        raise typer.Exit(exit_codes.FINDINGS)


def adopt(
    ctx: typer.Context,
    target: Annotated[str, typer.Argument(help="CONTAINER:PATH — the data to move.", metavar="CONTAINER:PATH")],
    volume: Annotated[str, typer.Option("--as", help="Name of the new named volume.", metavar="VOLUME")],
    recreate: Annotated[
        bool,
        typer.Option("--recreate", help="Recreate the (non-compose) container with the new mount, same config."),
    ] = False,
    stop_timeout: Annotated[
        int, typer.Option("--stop-timeout", help="Seconds to wait for the container to stop.", min=0)
    ] = 30,
    json: Annotated[bool, typer.Option("--json", help="Print the result as JSON.")] = False,
) -> None:
    """Move data from an anonymous volume or the writable layer into a new named volume (verified copy)."""
    container, sep, path = target.partition(":")
    if not sep or not container or not path.startswith("/"):
        raise UsageError(f"expected CONTAINER:/absolute/path, got {target!r}")
    from cargohold.services import adopt as adopt_svc

    result = adopt_svc.adopt(state(ctx).docker(), container, path, volume, recreate=recreate, stop_timeout=stop_timeout)
    if json:
        print_json(result.to_json())
        return
    typer.echo(
        f"copied {result.files} files ({human_bytes(result.bytes)}) from {result.container}:{result.path} "
        f"({result.source.replace('-', ' ')}) into volume {result.volume}; verified"
    )
    typer.echo(result.instructions)
    if result.old_volume and not result.recreated:
        typer.echo(f"the old anonymous volume {result.old_volume} is kept; remove it once you switched over")


def register(app: typer.Typer) -> None:
    app.command("audit")(audit)
    app.command("adopt")(adopt)
