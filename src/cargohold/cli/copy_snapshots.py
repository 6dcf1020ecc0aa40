"""``cargohold copy-snapshots``: keep a second copy of a repository's snapshots (3-2-1).

A thin client of :mod:`cargohold.services.copy_snapshots`. The target is the repository of
every command (``--repo``, ``CARGOHOLD_REPO``, with its password); the source is ``--from``,
whose password is ``--from-password-file FILE``, else ``CARGOHOLD_FROM_PASSWORD``, else the
target's password.
"""

from __future__ import annotations

import os
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Annotated, Any

import typer

from cargohold.cli import exit_codes
from cargohold.cli.common import (
    JsonOpt,
    PasswordFileOpt,
    ProgressOpt,
    RepoOpt,
    debug_requests,
    note,
    password,
    progress_for,
    read_password_file,
    repo_url,
    with_s3_options,
)
from cargohold.cli.output import human_bytes, print_json
from cargohold.errors import RepositoryNotFound, UsageError, WrongPassword
from cargohold.repo.repository import Repository
from cargohold.services import copy_snapshots as copysvc
from cargohold.services import repository as svc

FROM_PASSWORD_ENV = "CARGOHOLD_FROM_PASSWORD"

FromPasswordFileOpt = Annotated[
    str | None,
    typer.Option(
        "--from-password-file",
        help="Password of the repository copied from (--from, --copy-chunker-params-from), from this file "
        f"(first line); else ${FROM_PASSWORD_ENV}, else the password of the target.",
        metavar="FILE",
    ),
]


def from_password(password_file: str | None, target_password: str) -> tuple[str, bool]:
    """The source repository's password and whether it was given for it (else the target's)."""
    if password_file:
        return read_password_file(password_file), True
    value = os.environ.get(FROM_PASSWORD_ENV)
    if value is not None:
        return value, True
    return target_password, False


@contextmanager
def open_from(url: str, password_file: str | None, target_password: str, *, option: str) -> Iterator[Repository]:
    """Open the source repository (``option``: ``--from`` of copy-snapshots,
    ``--copy-chunker-params-from`` of init) with its password; errors say which repository
    and how to give the right password."""
    pw, own = from_password(password_file, target_password)
    try:
        r = svc.open_repository(with_s3_options(url), pw)
    except RepositoryNotFound as err:
        err.hint = f"check {option} (the repository to copy from)"
        raise
    except WrongPassword as err:
        err.hint = (
            f"check --from-password-file or ${FROM_PASSWORD_ENV}"
            if own
            else f"it was tried with the target's password: give the source's with --from-password-file FILE "
            f"or ${FROM_PASSWORD_ENV}"
        )
        raise
    try:
        yield r
    finally:
        r.close()


def _entry_json(e: copysvc.SnapshotCopy) -> dict[str, Any]:
    return {
        "source_id": e.source_id,
        "target_id": e.target_id,
        "source": e.source_name,
        "time": e.time,
        "copied": e.copied,
        "blobs": e.blobs,
        "bytes": e.bytes,
        "raw_bytes": e.raw_bytes,
    }


def copy_snapshots(
    snapshot: Annotated[
        list[str] | None,
        typer.Argument(
            help="Snapshots of the --from repository to copy (id, prefix or latest); default: all.",
            metavar="[SNAPSHOT]...",
        ),
    ] = None,
    from_repo: Annotated[
        str, typer.Option("--from", help="The repository to copy from (URL or path).", metavar="URL")
    ] = "",
    from_password_file: FromPasswordFileOpt = None,
    source: Annotated[
        list[str] | None,
        typer.Option("--source", help="Only snapshots of this source name (repeatable).", metavar="NAME"),
    ] = None,
    tag: Annotated[
        list[str] | None,
        typer.Option("--tag", help="Only snapshots having this tag (repeatable: all of them).", metavar="TAG"),
    ] = None,
    latest: Annotated[
        int | None, typer.Option("--latest", help="Only the N newest snapshots of each source.", metavar="N")
    ] = None,
    repo: RepoOpt = None,
    password_file: PasswordFileOpt = None,
    json: JsonOpt = False,
    progress: ProgressOpt = None,
) -> None:
    """Copy snapshots from another repository into this one (only the data it lacks)."""
    if not from_repo:
        raise UsageError("say which repository to copy from: --from URL")
    selection = copysvc.Selection(
        refs=tuple(snapshot or ()), sources=tuple(source or ()), tags=tuple(tag or ()), latest=latest
    )
    settings = copysvc.CopySettings(lock_wait=svc.lock_wait())
    target_password = password(password_file)
    target = svc.open_repository(repo_url(repo), target_password)
    try:
        with open_from(from_repo, from_password_file, target_password, option="--from") as src:
            res = copysvc.copy_snapshots(src, target, selection, settings=settings, progress=progress_for(progress))
            requests = {"from": src.request_counts(), "to": target.request_counts()}
    finally:
        target.close()
    debug_requests(f"from {src.backend.url}", requests["from"])
    debug_requests(f"to {target.backend.url}", requests["to"])
    if res.translated and res.copied:
        note(
            f"note: {src.backend.url} and {target.backend.url} do not share blob ids "
            f"({', '.join(res.differences)} differ): every blob of the copied snapshots was read and "
            f"re-identified; a target made with `cargohold init --copy-chunker-params-from {src.backend.url}` "
            "reads only what it lacks, and its own backups deduplicate against the copies"
        )
    for sid, why in sorted(res.unreadable.items()):
        note(f"warning: snapshot {sid[:8]} of {src.backend.url} is damaged and was not copied: {why}")
    if json:
        print_json(
            {
                "unreadable": dict(sorted(res.unreadable.items())),
                "from": src.backend.url,
                "to": target.backend.url,
                "translated": res.translated,
                "snapshots_copied": len(res.copied),
                "snapshots_skipped": len(res.skipped),
                "blobs": res.blobs,
                "bytes": res.bytes,
                "raw_bytes": res.raw_bytes,
                "duration": round(res.duration, 3),
                "snapshots": [_entry_json(e) for e in res.snapshots],
                "requests": requests,
            }
        )
    else:
        _print_text(res)
    if res.unreadable:
        raise typer.Exit(exit_codes.INTEGRITY)


def _print_text(res: copysvc.CopyResult) -> None:
    for e in res.snapshots:
        if e.copied:
            print(
                f"copied {e.source_id[:8]} -> {e.target_id[:8]} ({e.source_name}, {e.time}): "
                f"{e.blobs} blobs, {human_bytes(e.bytes)}"
            )
        else:
            print(f"skipped {e.source_id[:8]} ({e.source_name}, {e.time}): already here as {e.target_id[:8]}")
    print(
        f"{len(res.copied)} snapshot(s) copied, {len(res.skipped)} already here; "
        f"{res.blobs} blobs, {human_bytes(res.bytes)} transferred in {res.duration:.1f} s"
    )


def register(app: typer.Typer) -> None:
    app.command("copy-snapshots")(copy_snapshots)
