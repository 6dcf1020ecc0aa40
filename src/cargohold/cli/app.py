"""The ``cargohold`` command: a thin Typer client of the library.

Each command group lives in its own module and registers itself on :data:`app`
through a ``register(app)`` function. Errors are turned into one line on stderr and an
exit code by :func:`main` (codes in :mod:`cargohold.cli.exit_codes`).
"""

from __future__ import annotations

import contextlib
import logging
import os
import sys
import traceback
from typing import Annotated

import typer
from typer.exceptions import TyperException

from cargohold import __version__
from cargohold.cli import audit, copy_snapshots, docker_state, exit_codes, inventory, keys, migrate, repository
from cargohold.cli.context import AppState, current_state
from cargohold.errors import CargoholdError, UsageError

app = typer.Typer(
    name="cargohold",
    help="Never lose the state of your Docker containers.",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
    rich_markup_mode=None,
)


def _version(value: bool) -> None:
    if value:
        print(f"cargohold {__version__}")
        raise typer.Exit(0)


@app.callback()
def _root(
    ctx: typer.Context,
    debug: Annotated[bool, typer.Option("--debug", help="Show tracebacks and debug output.")] = False,
    host: Annotated[
        str | None,
        typer.Option("--host", "-H", help="Docker engine URL (overrides DOCKER_HOST).", metavar="URL"),
    ] = None,
    docker_context: Annotated[
        str | None, typer.Option("--context", help="Docker context to use (overrides DOCKER_CONTEXT).")
    ] = None,
    s3_endpoint: Annotated[
        str | None,
        typer.Option(
            "--s3-endpoint",
            help="S3 endpoint URL of s3:// repositories (overrides AWS_ENDPOINT_URL).",
            metavar="URL",
        ),
    ] = None,
    s3_addressing: Annotated[
        str | None,
        typer.Option(
            "--s3-addressing",
            help="S3 bucket addressing: path (endpoint/bucket), virtual (bucket.endpoint) or auto.",
            metavar="path|virtual|auto",
        ),
    ] = None,
    version: Annotated[
        bool,
        typer.Option("--version", callback=_version, is_eager=True, help="Print the version and exit."),
    ] = False,
) -> None:
    s3: dict[str, str] = {}
    if s3_endpoint:
        s3["endpoint"] = s3_endpoint
    if s3_addressing:
        if s3_addressing not in ("path", "virtual", "auto"):
            raise UsageError(f"--s3-addressing {s3_addressing!r}: use path, virtual or auto")
        s3["addressing"] = s3_addressing
    ctx.obj = AppState(debug=debug, host=host, context=docker_context, s3_options=s3)
    current_state.set(ctx.obj)
    if ctx.invoked_subcommand != "recover":
        # Any invocation first puts back containers an interrupted run left stopped.
        docker_state.recover_orphans_quietly()


def _register_commands() -> None:
    for module in (inventory, repository, copy_snapshots, keys, audit, docker_state, migrate):
        module.register(app)


_register_commands()


def _debug_requested(argv: list[str]) -> bool:
    return "--debug" in argv or os.environ.get("CARGOHOLD_DEBUG", "") not in ("", "0")


class _LevelPrefix(logging.Formatter):
    """``warning: message`` — the shape of every other warning the CLI prints."""

    def format(self, record: logging.LogRecord) -> str:
        return f"{record.levelname.lower()}: {super().format(record)}"


class _StderrHandler(logging.StreamHandler):  # type: ignore[type-arg]
    """Writes to whatever ``sys.stderr`` is when a record comes (tests replace it)."""

    _cargohold_cli = True

    def emit(self, record: logging.LogRecord) -> None:
        self.stream = sys.stderr
        super().emit(record)


def _setup_logging(debug: bool) -> None:
    """The library's log records (``cargohold.*``) go to stderr: warnings always, debug
    records with ``--debug``. Set once per process; a second call changes only the level."""
    logger = logging.getLogger("cargohold")
    logger.setLevel(logging.DEBUG if debug else logging.WARNING)
    if not any(getattr(h, "_cargohold_cli", False) for h in logger.handlers):
        handler = _StderrHandler()
        handler.setFormatter(_LevelPrefix("%(message)s"))
        logger.addHandler(handler)
        logger.propagate = False


def main(argv: list[str] | None = None) -> int:
    """Entry point of the console script; returns the exit code."""
    args = sys.argv[1:] if argv is None else argv
    debug = _debug_requested(args)
    _setup_logging(debug)
    try:
        result = app(args=args, prog_name="cargohold", standalone_mode=False)
    except CargoholdError as err:
        if debug:
            traceback.print_exc()
        print(f"cargohold: error: {err}", file=sys.stderr)
        return exit_codes.exit_code_for(err)
    except typer.Exit as done:
        return int(done.exit_code or 0)
    except typer.Abort:
        print("cargohold: interrupted", file=sys.stderr)
        return exit_codes.INTERRUPTED
    except TyperException as err:  # usage errors: typer prints the usage line and the problem
        show = getattr(err, "show", None)
        if callable(show):
            show()
        else:
            print(f"cargohold: error: {err.format_message()}", file=sys.stderr)
        return exit_codes.USAGE
    except KeyboardInterrupt:
        print("cargohold: interrupted", file=sys.stderr)
        return exit_codes.INTERRUPTED
    except BrokenPipeError:
        # stdout closed early (`cargohold volumes | head`): not an error.
        with contextlib.suppress(OSError):
            sys.stdout = open(os.devnull, "w")  # noqa: SIM115 - silences the flush at exit
        return exit_codes.OK
    except Exception as err:  # a bug: say so in one line unless --debug
        if debug:
            traceback.print_exc()
        print(
            f"cargohold: internal error: {type(err).__name__}: {err} (run with --debug for the traceback)",
            file=sys.stderr,
        )
        return exit_codes.INTERNAL
    return int(result) if isinstance(result, int) else exit_codes.OK


def run() -> None:
    sys.exit(main())


if __name__ == "__main__":  # pragma: no cover
    run()
