"""Key and repair commands: ``key list|add|remove|passwd|export|import`` and ``repair config``.
A thin client of :mod:`cargohold.services.repository` and :mod:`cargohold.services.keys`.
"""

from __future__ import annotations

import contextlib
import os
import sys
from collections.abc import Callable
from typing import Annotated

import typer

from cargohold.cli.common import JsonOpt, PasswordFileOpt, RepoOpt, note, open_repo, password, repo_url
from cargohold.cli.output import print_json, print_table
from cargohold.errors import UsageError
from cargohold.services import keys as keysvc
from cargohold.services import repository as svc

key_app = typer.Typer(help="Manage the passwords (key slots) of a repository.", no_args_is_help=True)
repair_app = typer.Typer(help="Repair damaged repository files.", no_args_is_help=True)

NewPasswordFileOpt = Annotated[
    str | None,
    typer.Option("--new-password-file", help="Read the new password from this file.", metavar="FILE"),
]


def _newpassword(path: str | None) -> str:
    return password(path, confirm=True, env="CARGOHOLD_NEW_PASSWORD")


@key_app.command("list")
def key_list(repo: RepoOpt = None, password_file: PasswordFileOpt = None, json: JsonOpt = False) -> None:
    """List key slots."""
    with open_repo(repo, password_file) as r:
        slots, damaged = svc.key_list(r)
        current = r.key_id
    if json:
        print_json(
            {
                "keys": [
                    {
                        "id": k.id,
                        "current": k.id == current,
                        "created": k.created,
                        "host": k.host,
                        "user": k.user,
                        "label": k.label,
                        "checksum": k.checksummed,
                        "config_copy": k.has_config,
                    }
                    for k in slots
                ],
                "damaged": damaged,
            }
        )
        return
    rows = [["*" if k.id == current else "", k.id, k.created, f"{k.user}@{k.host}", k.label or "-"] for k in slots]
    print_table(["", "id", "created", "by", "label"], rows)
    for sid, msg in sorted(damaged.items()):
        note(f"damaged key slot {sid}: {msg}")


@key_app.command("add")
def key_add(
    label: Annotated[str, typer.Option("--label", help="A note to tell keys apart.")] = "",
    new_password_file: NewPasswordFileOpt = None,
    repo: RepoOpt = None,
    password_file: PasswordFileOpt = None,
) -> None:
    """Add a password (a new key slot for the same master key)."""
    with open_repo(repo, password_file) as r:
        sid = svc.key_add(r, _newpassword(new_password_file), label=label)
    print(f"added key {sid}")


@key_app.command("remove")
def key_remove(
    key_id: Annotated[str, typer.Argument(help="Key slot id (or unique prefix).")],
    repo: RepoOpt = None,
    password_file: PasswordFileOpt = None,
) -> None:
    """Remove a key slot (not the one in use, not the last one)."""
    with open_repo(repo, password_file) as r:
        svc.key_remove(r, key_id)
    print(f"removed key {key_id}")


@key_app.command("passwd")
def key_passwd(
    new_password_file: NewPasswordFileOpt = None, repo: RepoOpt = None, password_file: PasswordFileOpt = None
) -> None:
    """Change the password of the key slot in use."""
    with open_repo(repo, password_file) as r:
        sid = svc.key_passwd(r, _newpassword(new_password_file))
    print(f"password changed (new key {sid})")


def _writer(output: str | None) -> tuple[str, Callable[[str], object]]:
    """Where an export goes: stdout, or a new file (mode 0600, never over an existing one)."""
    if output is None or output == "-":
        return "standard output", sys.stdout.write
    try:
        fd = os.open(output, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    except FileExistsError:
        raise UsageError(f"{output} exists already", hint="give a new file name: an export never overwrites") from None
    except OSError as err:
        raise UsageError(f"cannot create {output}: {err.strerror}") from None
    os.close(fd)

    def write(text: str) -> None:
        with open(output, "w", encoding="ascii") as f:
            f.write(text)
            f.flush()
            os.fsync(f.fileno())

    return output, write


@key_app.command("export")
def key_export(
    paper: Annotated[
        bool, typer.Option("--paper", help="Short numbered lines with a check each, to print or type by hand.")
    ] = False,
    output: Annotated[
        str | None, typer.Option("--output", "-o", help="Write to this new file instead of stdout.", metavar="FILE")
    ] = None,
    repo: RepoOpt = None,
    password_file: PasswordFileOpt = None,
) -> None:
    """Export the key (sealed by the password in use) to keep apart from the repository."""
    pw = password(password_file)
    r = svc.open_repository(repo_url(repo), pw)
    try:
        where, write = _writer(output)  # only once the password opened the repository
        try:
            keysvc.export_key(r, pw, paper=paper, write=write)
        except BaseException:
            if output not in (None, "-"):
                assert output is not None
                with contextlib.suppress(OSError):
                    os.unlink(output)
            raise
        repo_id = r.config.id
    finally:
        r.close()
    note(
        f"exported the key of repository {repo_id} ({'paper' if paper else 'text'}) to {where}; "
        "it opens with the current password: `cargohold key import` turns it into a key slot again"
    )


@key_app.command("import")
def key_import(
    source: Annotated[str, typer.Argument(help="The export: a file, or - for standard input.", metavar="FILE|-")],
    label: Annotated[str, typer.Option("--label", help="A note for the new key slot.")] = "imported",
    repo: RepoOpt = None,
    password_file: PasswordFileOpt = None,
) -> None:
    """Make a new key slot from an export (text or paper); restores a lost config too."""
    if source == "-":
        text, what = sys.stdin.read(), "the key on standard input"
    else:
        try:
            with open(source, encoding="utf-8", errors="replace") as f:
                text = f.read()
        except OSError as err:
            raise UsageError(f"cannot read {source}: {err.strerror}") from None
        what = source
    res = keysvc.import_key(repo_url(repo), text, password(password_file), label=label, what=what)
    if res.config_restored:
        print(f"restored the config of repository {res.repo_id} from the exported key")
    print(f"imported key {res.slot_id} into repository {res.repo_id}")


@repair_app.command("config")
def repair_config(repo: RepoOpt = None, password_file: PasswordFileOpt = None) -> None:
    """Restore a damaged or lost config from the verified copy in a key slot."""
    res = keysvc.repair_config(repo_url(repo), password(password_file))
    if res.action == "restored":
        note(f"was: {res.problem}")
        print(f"restored the config from the verified copy in key slot {res.slot_id}")
    elif res.action == "rewritten":
        print(f"the config was intact; rewritten with its checksum ({res.problem})")
    elif res.compared:
        print(f"the config is intact (it matches the verified copy in key slot {res.slot_id}); nothing to repair")
    else:
        print(f"the config is intact (key slot {res.slot_id} holds no copy to compare it with); nothing to repair")


def register(app: typer.Typer) -> None:
    app.add_typer(key_app, name="key")
    app.add_typer(repair_app, name="repair")
