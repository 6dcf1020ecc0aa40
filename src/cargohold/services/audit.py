"""Audit use cases: compose files, the live engine, or both (drift); ``--fix`` patches.

The library API behind ``cargohold audit``::

    report = audit_files(["compose.yaml"])                 # compose's rules, no engine
    report = audit_files(["compose.yaml"], docker=port)    # + drift and external volumes
    report = audit_live(port, backups=index)               # every container and volume
    patches = fix_files(["compose.yaml"])                  # round-trip patches, not written
"""

from __future__ import annotations

import contextlib
import os
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

from cargohold.audit import collect_files, collect_live, rules
from cargohold.audit.findings import Finding, Severity
from cargohold.audit.fix import FilePatch, plan_fixes
from cargohold.compose.loader import load_project
from cargohold.compose.model import ComposeProject
from cargohold.docker.port import DockerPort
from cargohold.errors import DockerNotFound
from cargohold.model.backups import BackupIndex, BackupPolicy, BackupRecord
from cargohold.model.engine import EngineInfo

SCHEMA_VERSION = 1


@dataclass(frozen=True, slots=True)
class AuditReport:
    #: "live", "files", or "files+live" (drift).
    source: str
    findings: list[Finding]
    project: str | None = None
    files: tuple[str, ...] = ()
    engine: EngineInfo | None = None
    #: Non-fatal notes (unset variables, ...).
    warnings: tuple[str, ...] = ()
    counts: Mapping[str, int] = field(default_factory=dict)

    def at_or_above(self, severity: Severity) -> list[Finding]:
        return [f for f in self.findings if f.severity.at_least(severity)]

    def to_json(self) -> dict[str, Any]:
        return {
            "schema_version": SCHEMA_VERSION,
            "source": self.source,
            "project": self.project,
            "files": list(self.files),
            "engine": (
                {"name": self.engine.name, "host": self.engine.host, "api_version": self.engine.api_version}
                if self.engine
                else None
            ),
            "summary": {s.value: sum(1 for f in self.findings if f.severity is s) for s in Severity},
            "warnings": list(self.warnings),
            "findings": [f.to_json() for f in self.findings],
        }


def _display(file: str | None, cwd: Path) -> str | None:
    if not file:
        return file
    path = Path(file)
    if path.is_absolute():
        try:
            return str(path.relative_to(cwd))
        except ValueError:
            return file
    return file


def _relative(findings: list[Finding]) -> list[Finding]:
    cwd = Path(os.getcwd())
    return [replace(f, file=_display(f.file, cwd)) for f in findings]


def load(
    files: Sequence[str | Path],
    *,
    project_name: str | None = None,
    project_directory: str | Path | None = None,
    env_files: Sequence[str | Path] = (),
    environ: Mapping[str, str] | None = None,
) -> ComposeProject:
    """Load compose files with compose's rules (raises ComposeError, exit code 2)."""
    return load_project(
        files,
        project_name=project_name,
        project_directory=project_directory,
        env_files=env_files,
        environ=environ,
    )


def _image_volumes(docker: DockerPort, images: set[str]) -> dict[str, tuple[str, ...]]:
    """VOLUME paths of the images the engine has (others are simply not known)."""
    out: dict[str, tuple[str, ...]] = {}
    for ref in sorted(images):
        try:
            out[ref] = docker.inspect_image(ref).volumes
        except DockerNotFound:
            continue
    return out


def audit_project(
    project: ComposeProject,
    *,
    docker: DockerPort | None = None,
    backups: BackupIndex | None = None,
    policy: BackupPolicy | None = None,
) -> AuditReport:
    """Audit a loaded project; with ``docker``, also drift against what runs and external volumes."""
    live_workloads = None
    engine = None
    engine_volumes = None
    image_volumes: dict[str, tuple[str, ...]] = {}
    if docker is not None:
        state = collect_live.collect(docker, writable_layer=False)
        engine = state.engine
        live_workloads = [w for w in state.workloads if w.project == project.name]
        engine_volumes = frozenset(v.name for v in state.volumes)
        image_volumes = _image_volumes(docker, {s.image for s in project.services.values() if s.image})
    inp = collect_files.audit_input(
        project, engine_volumes=engine_volumes, backups=backups, policy=policy, image_volumes=image_volumes
    )
    findings = rules.run(inp, live=live_workloads)
    warnings = (
        *(f"variable {name} is not set, using an empty string" for name in project.missing_variables),
        *project.notes,
    )
    return AuditReport(
        source="files+live" if docker is not None else "files",
        findings=_relative(findings),
        project=project.name,
        files=tuple(str(f) for f in project.files),
        engine=engine,
        warnings=warnings,
    )


def audit_files(
    files: Sequence[str | Path],
    *,
    project_name: str | None = None,
    project_directory: str | Path | None = None,
    env_files: Sequence[str | Path] = (),
    environ: Mapping[str, str] | None = None,
    docker: DockerPort | None = None,
    backups: BackupIndex | None = None,
    policy: BackupPolicy | None = None,
) -> AuditReport:
    """Audit compose files (``files`` empty: compose.yaml and its override in the directory)."""
    project = load(
        files,
        project_name=project_name,
        project_directory=project_directory,
        env_files=env_files,
        environ=environ,
    )
    return audit_project(project, docker=docker, backups=backups, policy=policy)


def audit_live(
    docker: DockerPort,
    *,
    backups: BackupIndex | None = None,
    policy: BackupPolicy | None = None,
    writable_layer: bool = True,
) -> AuditReport:
    """Audit every container and volume of the engine."""
    state = collect_live.collect(docker, writable_layer=writable_layer)
    findings = rules.run(collect_live.audit_input(state, backups=backups, policy=policy))
    return AuditReport(source="live", findings=findings, engine=state.engine)


def fix_files(
    files: Sequence[str | Path],
    *,
    project_name: str | None = None,
    project_directory: str | Path | None = None,
    env_files: Sequence[str | Path] = (),
    environ: Mapping[str, str] | None = None,
) -> list[FilePatch]:
    """Patches (not yet written) for the fixable findings of these compose files."""
    project = load(
        files,
        project_name=project_name,
        project_directory=project_directory,
        env_files=env_files,
        environ=environ,
    )
    return plan_fixes(project, rules.run(collect_files.audit_input(project)))


def write_patches(patches: Sequence[FilePatch]) -> None:
    """Write patched files atomically (temp file + rename, mode kept)."""
    for p in patches:
        if not p.changed:
            continue
        tmp = p.path.with_name(f".{p.path.name}.cargohold-fix")
        tmp.write_text(p.after, encoding="utf-8")
        with contextlib.suppress(OSError):
            os.chmod(tmp, p.path.stat().st_mode & 0o7777)
        os.replace(tmp, p.path)


def backups_from_repository(url: str, password: str) -> dict[str, BackupRecord]:
    """The backup index of a repository (see :func:`cargohold.services.repository.backup_index`)."""
    from cargohold.services import repository

    repo = repository.open_repository(url, password)
    try:
        return repository.backup_index(repo)
    finally:
        repo.close()
