"""What the repository-backed commands share: where the repository is, its password,
progress bars, and the JSON shape of a snapshot."""

from __future__ import annotations

import getpass
import os
import sys
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Annotated, Any

import typer

from cargohold.backends import url_with_options
from cargohold.backends.counting import summary as requests_summary
from cargohold.cli.context import current_state
from cargohold.cli.output import err_console
from cargohold.errors import UsageError
from cargohold.model.backups import BackupIndex
from cargohold.repo.progress import NullProgress, Progress
from cargohold.repo.repository import Repository
from cargohold.repo.snapshot import Snapshot
from cargohold.services import repository as svc

RepoOpt = Annotated[
    str | None,
    typer.Option(
        "--repo", "-r", help="Repository URL or path (default: $CARGOHOLD_REPO, then XDG data dir).", metavar="URL"
    ),
]
PasswordFileOpt = Annotated[
    str | None,
    typer.Option("--password-file", help="Read the password from this file (first line).", metavar="FILE"),
]
JsonOpt = Annotated[bool, typer.Option("--json", help="Print stable JSON instead of a table.")]
ProgressOpt = Annotated[
    bool | None,
    typer.Option("--progress/--no-progress", help="Progress bars (default: only on a terminal)."),
]


def read_password_file(path: str) -> str:
    try:
        with open(path, encoding="utf-8") as f:
            first = f.readline()
    except OSError as err:
        raise UsageError(f"cannot read password file {path}: {err.strerror}") from None
    return first.rstrip("\r\n")


def password(password_file: str | None, *, confirm: bool = False, env: str = svc.PASSWORD_ENV) -> str:
    if password_file:
        return read_password_file(password_file)
    value = os.environ.get(env)
    if value is not None:
        return value
    if not sys.stdin.isatty():
        raise UsageError(
            "no password given",
            hint=f"set {env}, use --password-file FILE, or run on a terminal to be asked",
        )
    first = getpass.getpass("repository password: ")
    if confirm and getpass.getpass("repeat password: ") != first:
        raise UsageError("the passwords do not match")
    return first


def _s3_options() -> dict[str, str]:
    state = current_state.get()
    return state.s3_options if state is not None else {}


def with_s3_options(url: str) -> str:
    """``url`` with the S3 options of the command line (``--s3-endpoint``,
    ``--s3-addressing``) put in when it is an s3:// URL; others as they are."""
    s3 = _s3_options()
    return url_with_options(url, s3) if s3 and url.lower().startswith("s3://") else url


def repo_url(repo: str | None) -> str:
    """The repository URL of ``--repo`` (or its defaults) with the backend options given on
    the command line (``--s3-endpoint``, ``--s3-addressing``) put into it; those options
    with another kind of repository are an error."""
    url = svc.resolve_repo_url(repo)
    if _s3_options() and not url.lower().startswith("s3://"):
        raise UsageError(
            f"--s3-endpoint/--s3-addressing apply to s3:// repositories, not {url}",
            hint="drop those options or give an s3://BUCKET[/PREFIX] repository",
        )
    return with_s3_options(url)


def debug_requests(what: str, counts: dict[str, int]) -> None:
    """With ``--debug``: one line on stderr with the requests made to the store ``what``
    (per operation, bytes up and down, retries)."""
    state = current_state.get()
    if state is not None and state.debug:
        note(f"cargohold: debug: {what}: {requests_summary(counts)}")


@contextmanager
def open_repo(repo: str | None, password_file: str | None) -> Iterator[Repository]:
    """The open repository; closed at the end, and with ``--debug`` one line on stderr with
    the requests made to its store (per operation, bytes up and down, retries)."""
    r = svc.open_repository(repo_url(repo), password(password_file))
    try:
        yield r
    finally:
        r.close()
        debug_requests(r.backend.url, r.request_counts())


class RichProgress:
    """Progress bars on stderr (rich); thread safe."""

    def __init__(self) -> None:
        from rich.progress import (
            BarColumn,
            DownloadColumn,
            Progress,
            TextColumn,
            TimeElapsedColumn,
            TransferSpeedColumn,
        )

        self._p = Progress(
            TextColumn("{task.description}"),
            BarColumn(),
            DownloadColumn(),
            TransferSpeedColumn(),
            TextColumn("{task.fields[items]} items"),
            TimeElapsedColumn(),
            console=err_console(),
            transient=True,
        )
        self._task: Any = None
        self._items = 0

    def start(self, phase: str, total_bytes: int | None = None) -> None:
        self._p.start()
        self._items = 0
        self._task = self._p.add_task(phase, total=total_bytes, items=0)

    def advance(self, nbytes: int = 0, items: int = 0) -> None:
        if self._task is not None:
            self._items += items
            self._p.update(self._task, advance=nbytes, items=self._items)

    def finish(self) -> None:
        self._p.stop()
        self._task = None


def progress_for(flag: bool | None) -> Progress:
    """Bars on stderr when it is a terminal (or when asked), else a progress that shows nothing."""
    show = sys.stderr.isatty() if flag is None else flag
    return RichProgress() if show else NullProgress()


def note(msg: str) -> None:
    print(msg, file=sys.stderr)


REDACTED = "<redacted>"


def redacted(meta: dict[str, Any]) -> dict[str, Any]:
    """Snapshot metadata fit to print: container environments (passwords, tokens) keep their
    names but not their values. The repository keeps them, encrypted, for restores."""
    containers = meta.get("containers")
    if not isinstance(containers, list):
        return meta
    clean = []
    for c in containers:
        if isinstance(c, dict) and isinstance(c.get("env"), list):
            c = {**c, "env": [f"{str(e).partition('=')[0]}={REDACTED}" for e in c["env"]]}
        clean.append(c)
    return {**meta, "containers": clean}


def snapshot_json(s: Snapshot) -> dict[str, Any]:
    return {
        "id": s.id,
        "short_id": s.short_id,
        "time": s.time.isoformat(),
        "source": {"kind": s.source.kind, "name": s.source.name, "meta": redacted(s.source.meta)},
        "tags": s.tags,
        "hostname": s.hostname,
        "username": s.username,
        "paths": s.paths,
        "parent": s.parent,
        "tree": s.tree.hex(),
        "program_version": s.program_version,
        "stats": {
            "files": s.stats.files,
            "dirs": s.stats.dirs,
            "bytes": s.stats.bytes,
            "added_bytes": s.stats.added_bytes,
            "added_raw_bytes": s.stats.added_raw_bytes,
            "files_new": s.stats.files_new,
            "files_changed": s.stats.files_changed,
            "files_unchanged": s.stats.files_unchanged,
            "duration": s.stats.duration,
        },
    }


def backup_index(repo: str | None, password_file: str | None, *, only_named: bool = False) -> BackupIndex | None:
    """The repository's backup index (newest backup and verification per volume), or None.

    Read when a repository is named (``--repo``, ``CARGOHOLD_REPO``) — or, unless ``only_named``,
    when the default one exists — and a password is at hand without asking (inventory and
    audit never prompt). A named repository without a password is an error.
    """
    named = repo or os.environ.get(svc.REPO_ENV)
    url = repo_url(repo)
    if not named and (only_named or not os.path.exists(os.path.join(url, "config"))):
        return None
    if not password_file and os.environ.get(svc.PASSWORD_ENV) is None:
        if not named:
            return None
        raise UsageError(
            f"reading backups from {url} needs its password",
            hint=f"set {svc.PASSWORD_ENV} or use --password-file FILE",
        )
    repo_ = svc.open_repository(url, password(password_file))
    try:
        return svc.backup_index(repo_)
    finally:
        repo_.close()
