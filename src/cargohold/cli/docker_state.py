"""Commands about the state of containers cargohold acts on: ``recover``."""

from __future__ import annotations

import sys
from typing import Annotated

import typer

from cargohold.cli.output import print_json, print_table
from cargohold.docker.sdk import SdkDocker
from cargohold.services.intents import IntentJournal, Recovered, recover


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


def recover_cmd(
    json: Annotated[bool, typer.Option("--json", help="Print JSON.")] = False,
) -> None:
    """Restart or unpause containers that an interrupted cargohold run left stopped or paused."""
    journal = IntentJournal()
    results = recover(journal, SdkDocker)
    pending = journal.pending()
    if json:
        print_json(
            {
                "recovered": [
                    {
                        "intent": r.intent_id,
                        "container": r.container,
                        "action": r.action,
                        "outcome": r.outcome,
                    }
                    for r in results
                ],
                "pending": [{"intent": i.id, "pid": i.pid, "purpose": i.purpose} for i in pending],
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


def register(app: typer.Typer) -> None:
    app.command("recover")(recover_cmd)
